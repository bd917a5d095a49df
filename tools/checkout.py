"""Which pygpt the tools in this folder import: this checkout's when tools/dev_build.sh has
built its _core in place, else the installed one (pip install .); the checkout's sources
alone cannot load.

    import checkout
    checkout.use_if_built()  # before importing pygpt
"""

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT = bool(glob.glob(os.path.join(ROOT, "pygpt", "_core*")))


def use_if_built() -> None:
    """Puts this checkout first on sys.path when its pygpt is built in place."""
    if BUILT:
        sys.path.insert(0, ROOT)
