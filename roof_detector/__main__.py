"""``python -m roof_detector``: see :mod:`roof_detector.cli`."""

from .cli import leave_after_interrupt, main

leave_after_interrupt(main())
