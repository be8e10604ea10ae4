"""The optional C extension modules; everything else is in pyproject.toml.

Each module is one line of C_EXTENSIONS: its import name and its C sources (add a
source file to a module's list, or a line for a new module). Every module is
optional: if it does not compile (no compiler, no Python headers), pip says so and
the install goes on, and the pure-Python code runs (servertracker/accel.py decides
at import). docs/architecture.md, "The C extension", says how to add one.
"""

from setuptools import Extension, setup

#: Import name -> C sources. One line each.
C_EXTENSIONS: dict[str, list[str]] = {
    "trackerd.core._ccolumns": ["trackerd/core/_ccolumns.c"],
    "servertracker._record_queue": ["client/servertracker/_record_queue.c"],
    # The policy decoder's short way; its parser (_cpolicy_parse.h) is shared with
    # edges/_cpolicy_loop.c.
    "trackerd.core._cpolicy": ["trackerd/core/_cpolicy.c"],
    "trackerd.edges._cpolicy_loop": ["trackerd/edges/_cpolicy_loop.c"],
    # First sightings normalised and hashed (keyed BLAKE2b, _blake2b.h) in one loop.
    "trackerd.core._cfirst": ["trackerd/core/_cfirst.c"],
}

#: Import name -> the headers its sources include: pip rebuilds a module when one
#: changes (without, a header edit ships a stale .so). tests/test_accel.py checks
#: that every `#include "..."` is here.
DEPENDS: dict[str, list[str]] = {
    "trackerd.core._cpolicy": ["trackerd/core/_cpolicy_parse.h"],
    "trackerd.edges._cpolicy_loop": ["trackerd/core/_cpolicy_parse.h"],
    "trackerd.core._cfirst": ["trackerd/core/_blake2b.h"],
}

#: Warnings on; C99 or later without GNU extensions, so what compiles here compiles
#: with any compiler CPython supports.
COMPILE_ARGS = ["-std=c11", "-Wall", "-Wextra", "-O2"]

setup(
    ext_modules=[
        Extension(
            name,
            sources,
            depends=DEPENDS.get(name, []),
            extra_compile_args=COMPILE_ARGS,
            optional=True,
        )
        for name, sources in C_EXTENSIONS.items()
    ]
)
