"""``python -m codesandbox``: the same as the ``codesandbox`` command."""

import sys

from ._mcp_bridge import main

sys.exit(main())
