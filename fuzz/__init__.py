"""Fuzzing trackerd's protocol decoder and a live daemon.

Not tests: see ``python -m fuzz --help``.
"""
