"""``python -m roof_detector``: see :mod:`roof_detector.cli`."""

import sys

from .cli import main

sys.exit(main())
