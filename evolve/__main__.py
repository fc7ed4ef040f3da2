"""`python -m evolve ...` entry point."""

import sys

from evolve.cli import main

sys.exit(main())
