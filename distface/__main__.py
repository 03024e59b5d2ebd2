"""`python -m distface`: the same as the `distface` command."""
import sys

from distface.cli import main

sys.exit(main())
