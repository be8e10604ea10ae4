"""Benchmarks: not tests. Run them all with ``python -m bench`` (or ``make bench``)."""
