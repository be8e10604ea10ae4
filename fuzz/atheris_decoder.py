"""atheris (libFuzzer) harness for the sans-IO decoder.

Run: ``python -m fuzz.atheris_decoder -runs=N``.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import decode_everything
    from servertracker.errors import ProtocolError


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_everything(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
