"""``python -m nervectl``: the same as the ``nervectl`` console script."""

import sys

from nervectl.cli import main

sys.exit(main())
