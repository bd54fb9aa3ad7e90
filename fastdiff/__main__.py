"""`python -m fastdiff <command>` (and `torchrun ... -m fastdiff train ...`): the `fastdiff` command line."""
import sys

from fastdiff.cli import main

sys.exit(main())
