"""``python -m fxcomp``: the command line, as the ``fxcomp`` script runs it."""

import sys

from fxcomp.cli import main

sys.exit(main())
