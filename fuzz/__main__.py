"""Fuzz trackerd: ``python -m fuzz [--inputs N] [--seed S] [--decoder-only] [--atheris-runs N]
[--names N] [--time-bound S] [--value-bound-us US]``.

Feeds mutated valid frames and hypothesis-generated msgpack messages to the
sans-IO decoder and, on fresh connections, to a live trackerd started for the
run. Checks after every 2,000 inputs and at the end that the daemon answers,
that its counts are exactly those of a control set of records (inputs that
would legitimately record something are not sent), and records its memory.
Then mutated costly domain names go through the normaliser. A time oracle
makes an input that takes the decoder or the daemon longer than --time-bound,
or a sender that takes the normaliser longer than --value-bound-us, a finding:
listed, and the exit status is 1, as for a crash.
Then, if atheris is installed (pip install -e '.[fuzz]'), runs its
coverage-guided fuzzer on the decoder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench._support import BenchDaemon
from fuzz import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--inputs", type=int, default=100_000, help="inputs in all (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--decoder-only", action="store_true", help="do not start or fuzz a daemon")
    parser.add_argument("--atheris-runs", type=int, default=100_000, help="0 to skip atheris")
    parser.add_argument(
        "--names", type=int, default=20_000,
        help="mutated costly senders through the normaliser (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--time-bound", type=float, default=run.DEFAULT_TIME_BOUND, metavar="SECONDS",
        help="an input that takes the decoder or the daemon longer is a finding "
        "(default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--value-bound-us", type=float, default=run.DEFAULT_VALUE_BOUND * 1e6, metavar="US",
        help="a sender that takes the normaliser longer is a finding (default: %(default)s)",
    )  # fmt: skip
    args = parser.parse_args()

    daemon = None if args.decoder_only else BenchDaemon().start()
    try:
        report = run.run(
            args.inputs,
            args.seed,
            daemon.socket_path if daemon else None,
            daemon.process.pid if daemon and daemon.process else None,
            names=args.names,
            time_bound=args.time_bound,
            value_bound=args.value_bound_us / 1e6,
        )
    finally:
        if daemon:
            daemon.stop()
    print(
        f"inputs: {report.inputs} in {report.seconds:.0f}s, decoded without error: {report.decoded}"
    )
    print("decoder errors by code:", dict(report.decoder_errors))
    if daemon:
        print(f"daemon checks passed (alive, counts unchanged): {report.daemon_checks}")
        rss = report.rss_kib
        print(f"daemon RSS KiB first/max/last: {rss[0]}/{max(rss)}/{rss[-1]}")
    print(f"senders through the normaliser: {report.values}")
    if report.slow:
        print(f"TIME ORACLE: {len(report.slow)} inputs over the bound (a finding, as a crash):")
        for slow in sorted(report.slow, key=lambda s: -s.seconds)[:20]:
            print(f"  {slow.where}: {slow.seconds * 1e6:.0f} us for {slow.data[:120]!r}")
        return 1
    print("time oracle: no input over the bound")

    if args.atheris_runs:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed (pip install -e '.[fuzz]'); skipped")
            return 0
        print(f"atheris: {args.atheris_runs} runs on the decoder")
        return subprocess.call(
            [sys.executable, "-m", "fuzz.atheris_decoder", f"-runs={args.atheris_runs}"]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
