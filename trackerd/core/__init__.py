"""The pure core of trackerd: normalising, hashing, counting, the Postfix policy codec.

No module here opens a socket or a file, or imports anyio or an edge module
(tests/test_layout.py keeps it so); the clock is passed in by the caller.
"""
