"""HyperLogLog over the tracker's 64-bit keyed digests, with Ertl's improved estimator.

Only hash-derived register values are kept (the position of the first 1-bit of a
keyed digest), so the sketch holds nothing from which a value could be read
back. With 2**16 registers (64 KiB) the standard error is 1.04/256 = 0.41%.
The estimator is Otmar Ertl's "improved raw estimator" (New cardinality
estimation algorithms for HyperLogLog sketches, 2017, algorithm 6): it has no
bias in the mid range where the classic estimator needs empirical corrections,
and no switch to linear counting. Pure, no I/O.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from trackerd.core.digest_table import Digests

DEFAULT_PRECISION = 16
_ALPHA_INF = 1 / (2 * math.log(2))


class HyperLogLog:
    def __init__(self, precision: int = DEFAULT_PRECISION) -> None:
        if not 4 <= precision <= 18:
            raise ValueError("precision must be between 4 and 18")
        self.precision = precision
        self._q = 64 - precision  # bits left for the rank
        self.registers = np.zeros(1 << precision, dtype=np.uint8)

    @property
    def nbytes(self) -> int:
        return int(self.registers.nbytes)

    def add_many(self, digests: Digests) -> None:
        if digests.size == 0:
            return
        index, rank = register_ranks(digests, self.precision)
        np.maximum.at(self.registers, index, rank)

    def estimate(self) -> float:
        return estimate(self.registers, self._q)


def register_ranks(
    digests: Digests, precision: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]:
    """Each digest's register (its top bits) and rank (first 1-bit of the rest, from 1)."""
    q = 64 - precision
    index = (digests >> np.uint64(q)).astype(np.intp)
    rest = digests & np.uint64((1 << q) - 1)
    # bit_length(rest) without float rounding trouble: rest < 2**53, exact in float64,
    # and frexp gives the exponent exactly. rank = q - bit_length + 1 (q + 1 for 0).
    _, exponent = np.frexp(rest.astype(np.float64))
    rank = (q + 1 - exponent).astype(np.uint8)
    return index, rank


def estimate(registers: npt.NDArray[np.uint8], q: int) -> float:
    """Ertl's improved raw estimate from registers holding ranks 0..q+1."""
    m = registers.size
    counts = np.bincount(registers, minlength=q + 2)
    z = m * _tau(1 - counts[q + 1] / m)
    for k in range(q, 0, -1):
        z = 0.5 * (z + counts[k])
    z += m * _sigma(counts[0] / m)
    return float(_ALPHA_INF * m * m / z)


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1 - x) ** 2 * y
        if z == z_old:
            return z / 3
