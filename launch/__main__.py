import sys

from distface.launch.cli import main

sys.exit(main())
