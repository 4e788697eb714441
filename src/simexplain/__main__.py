"""`python -m simexplain ...`: the same as the `simexplain` command."""

import sys

from .cli import main

sys.exit(main())
