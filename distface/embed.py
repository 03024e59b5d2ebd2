"""`python -m distface.embed`: the same as `distface embed` (distface.serving.embed)."""
import sys

from distface.serving.embed import main

if __name__ == "__main__":
    sys.exit(main())
