"""`python -m contsup` (and `torchrun -m contsup`) runs the command line."""

import sys

from contsup.cli import main

sys.exit(main())
