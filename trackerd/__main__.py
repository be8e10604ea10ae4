"""trackerd's entry point, for ``trackerd`` and ``python -m trackerd``.

SIGHUP's default action ends the process, and SIGHUP means "reload": it is
ignored here, before the imports that take their time, and trackerd.main
installs the reload handler once it can. Only the interpreter's own start-up
comes before this line.
"""

import signal

signal.signal(signal.SIGHUP, signal.SIG_IGN)

import sys  # noqa: E402  (after the line above, on purpose)


def run() -> int:
    from trackerd.main import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
