"""`python -m deepmine ...` is the same as the `deepmine` console script."""

import sys

from deepmine.cli import main

sys.exit(main())
