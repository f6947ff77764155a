"""``python -m codesandbox._cli``: the ``codesandbox`` command without its console script."""

import sys

from . import main

sys.exit(main())
