"""`python -m workbench ...`: see workbench.repro.cli."""

import sys

from workbench.repro.cli import main

sys.exit(main())
