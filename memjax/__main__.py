"""`python -m memjax ...`: the same as the `memjax` command."""
import sys

from memjax.cli import main

sys.exit(main())
