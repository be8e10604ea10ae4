"""Value tables keyed by Python's hash(): whether hash() may key them at all.

Both sides keep tables keyed by hash() of a raw value, never by the value: the
daemon's raw-value caches (trackerd/core/raw_cache.py) and a worker's numbering
of the values it sends. That is safe only while hash() of a str is SipHash keyed
with the interpreter's own random secret; with PYTHONHASHSEED set, anyone could
reverse a key by trying values, so both sides turn their tables off. Pure, no I/O.
"""

from __future__ import annotations

import os
import sys


def hash_is_secret() -> bool:
    """Whether hash() of a str is keyed with a random secret in this interpreter."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    return bool(sys.flags.hash_randomization) and seed == "random"
