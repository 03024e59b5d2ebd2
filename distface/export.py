"""`python -m distface.export`: the same as `distface export` (distface.serving.export)."""
import sys

from distface.serving.export import main

if __name__ == "__main__":
    sys.exit(main())
