"""`python -m lab.host prepare`: the host's setup, with the standard library only."""

import sys

from lab.host.prepare import main

sys.exit(main())
