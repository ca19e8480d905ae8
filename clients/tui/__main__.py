"""``python -m tritter.clients.tui``: the same as ``tritter-tui``."""

import sys

from tritter.clients.tui.app import main

sys.exit(main())
