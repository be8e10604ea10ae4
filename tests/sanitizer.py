"""Whether a process runs under a memory sanitizer: for the tests that bound memory.

AddressSanitizer (and its kin) keep freed memory in quarantine, pad every
allocation with redzones and map shadow memory, so a process's RSS under one
says nothing of the bound a test checks: those tests skip just that assertion
(tests/test_memory_residue.py skips the shadow itself when it searches memory).
"""

from __future__ import annotations

from pathlib import Path

#: The runtimes' library names (GCC's libasan/libtsan, Clang's libclang_rt.asan-...).
RUNTIMES = ("libasan", "libhwasan", "libtsan", "libclang_rt.asan", "libclang_rt.hwasan",
            "libclang_rt.tsan", "libclang_rt.msan")  # fmt: skip

REASON = "under a sanitizer, RSS counts its quarantine, redzones and shadow, not the daemon's"


def sanitized(pid: int) -> bool:
    """True when process ``pid`` has a sanitizer's runtime mapped (LD_PRELOAD or linked)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return any(f"/{name}" in maps for name in RUNTIMES)
