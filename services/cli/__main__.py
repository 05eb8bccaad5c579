"""`python -m services.cli` runs the `twinarm` command line."""

import sys

from services.cli.main import main

sys.exit(main())
