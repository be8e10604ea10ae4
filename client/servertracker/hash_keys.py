"""Whether Python's hash() may key a table of values at all. Pure, no I/O.

Both sides keep tables keyed by hash() of a raw value, never by the value: the
daemon's raw-value caches (trackerd/core/raw_cache.py) and a worker's numbering
of the values it sends (value_tables.py). That is safe only while hash() of a
str is SipHash keyed with the interpreter's own random secret; with
PYTHONHASHSEED set, anyone could reverse a key by trying values, so both sides
turn their tables off. Its own module so that a worker tests it without
importing numpy (value_tables.py's), which it loads only to send interned.
"""

from __future__ import annotations

import os
import sys


def hash_is_secret() -> bool:
    """Whether hash() of a str is keyed with a random secret in this interpreter."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    return bool(sys.flags.hash_randomization) and seed == "random"
