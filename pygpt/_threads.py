"""Thread counts: the default, and the bounds every n_threads argument is checked against."""

from __future__ import annotations

import os

from . import _core


def default_threads() -> int:
    """Physical cores (not logical ones), capped by the CPUs this process may run on."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        allowed = os.cpu_count() or 1
    return max(1, min(_core.physical_cores(), allowed))


def max_threads() -> int:
    """The most threads a call may ask for: 256, or 4 x the logical CPUs where that is more.
    Far more than the cores never helps, and thousands may fail to start."""
    return max(256, 4 * (os.cpu_count() or 1))


def check_threads(n, what: str = "n_threads") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
    if n > max_threads():
        raise ValueError(f"{what} = {n} is more than the {max_threads()} allowed")
    return n
