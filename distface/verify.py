"""`python -m distface.verify`: the same as `distface verify` (distface.serving.verify)."""
import sys

from distface.serving.verify import main

if __name__ == "__main__":
    sys.exit(main())
