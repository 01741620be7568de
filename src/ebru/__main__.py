"""``python -m ebru`` is the ``ebru`` command."""

import sys

from ebru.cli import main

sys.exit(main())
