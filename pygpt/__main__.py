"""python -m pygpt: the same as the `pygpt` command."""

import sys

from .cli import main

sys.exit(main())
