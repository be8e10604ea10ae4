"""trackerd: the daemon that owns the salt and the hash sets of servertracker.

Run it with ``trackerd`` or ``python -m trackerd``; see ``trackerd --help``.
"""

__version__ = "0.1.0"
