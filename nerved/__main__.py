import sys

from nerved.cli import main

sys.exit(main())
