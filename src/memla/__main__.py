"""`python -m memla` runs the command line."""

import sys

from memla.cli import main

sys.exit(main())
