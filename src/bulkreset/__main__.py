"""``python -m bulkreset``: the same as the ``bulkreset`` command."""

import sys

from .cli import main

sys.exit(main())
