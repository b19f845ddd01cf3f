"""`python -m tools.devstack up|down|status`."""

import sys

from tools.devstack.cli import main

sys.exit(main())
