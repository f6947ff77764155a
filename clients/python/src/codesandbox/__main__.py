"""``python -m codesandbox``: the same as the ``codesandbox`` command."""

import sys

from ._cli import main

sys.exit(main())
