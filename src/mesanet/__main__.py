"""``python -m mesanet ...`` (and ``torchrun -m mesanet train ...``): the command line."""

import sys

from .cli import main

sys.exit(main())
