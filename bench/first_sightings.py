"""What the daemon's core pays for a value it has not seen before, per form.

Run: ``python -m bench.first_sightings [--values 100000] [--rounds 3] [--baseline DIR]``.
For each form, N distinct values go through Tracker.record_columns() in batches of
512 (a client library's batch) twice, fresh str objects each time, as decoding
makes them: the first pass meets every value for the first time (split,
normalised, hashed, counted), the second finds them all cached. The difference,
divided by N, is the cost of one first sighting. The other column holds one value
throughout (cached after its first pair), so each form is measured alone.
Windows on (the daemon's default) and a deadline per call, as the msgpack server
gives one. Each round runs in a fresh process; with ``--baseline DIR`` (another
checkout, e.g. ``git worktree add DIR main``) its core runs alternately in the
same rounds, and the counts of both must agree. Where every value is a distinct
server (all forms but the known-domain one and the mix), the count must equal
--values (at most 16,777,216). Medians of the rounds.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from bench._support import arguments, table, whole_number

BATCH = 512


class FormResult(TypedDict):
    """One form's figures from one process (sent back as JSON)."""

    us: float
    cached_us: float
    counts: list[int]
    rejected: list[int]


#: The form's values (record n), and which column they go in.
FORMS: dict[str, tuple[str, Callable[[int], str]]] = {
    "conn IP 10.a.b.c": ("ip", lambda n: f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"),
    "domain": ("sender", lambda n: f"mail{n}.example.com"),
    "[ip]": ("sender", lambda n: f"[192.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}]"),
    "user@domain": ("sender", lambda n: f"user{n % 7}@mail{n}.example.com"),
    "<user@domain>": ("sender", lambda n: f"<user{n % 7}@mail{n}.example.com>"),
    # A new address at a domain seen before: most new senders in bench.compare.
    # (Not every value distinct: its count is the 64 domains.)
    "user@known domain": ("sender", lambda n: f"user{n}@mail{n % 64}.example.com"),
    "mix (bench.compare)": ("sender", lambda n: _mix(n)),
}


#: The forms whose N values are N distinct servers, and the count they go in
#: (unique_conn_ips, unique_domains, unique_ip_servers): that count must be N.
ALL_DISTINCT = {
    "conn IP 10.a.b.c": 0,
    "domain": 1,
    "[ip]": 2,
    "user@domain": 1,
    "<user@domain>": 1,
}


def _mix(n: int) -> str:
    from bench.workload import sender

    return sender("mix", n)


def one_process(values: int) -> dict[str, FormResult]:
    """Every form once in this process: µs per distinct value, and the counts."""
    from trackerd.core.tracker import Tracker
    from trackerd.core.windows import DEFAULT_WINDOWS, parse_windows

    results: dict[str, FormResult] = {}
    for name, (column, make) in FORMS.items():
        tracker = Tracker(windows=parse_windows(DEFAULT_WINDOWS))
        other = "10.0.0.1" if column == "sender" else "mail.example.org"
        fixed = [other] * BATCH
        seconds = []
        for _ in range(2):
            fresh = [make(n) for n in range(values)]  # new str objects each pass
            batches = [fresh[i : i + BATCH] for i in range(0, values, BATCH)]
            del fresh
            gc.collect()
            start = time.process_time()
            for batch in batches:
                pair = (batch, fixed[: len(batch)])
                conn_ips, senders = pair if column == "ip" else pair[::-1]
                done = 0
                while done < len(batch):  # as the msgpack server does with a deadline
                    done += tracker.record_columns(
                        conn_ips[done:], senders[done:], time.perf_counter() + 0.002
                    )
            tracker.status()  # adds whatever is pending to the counters
            seconds.append(time.process_time() - start)
        status = tracker.status()
        counts = [status.unique_conn_ips, status.unique_domains, status.unique_ip_servers]
        if name in ALL_DISTINCT:
            got = counts[ALL_DISTINCT[name]]
            assert got == values, f"{name}: counted {got} of {values} distinct values"
        results[name] = {
            "us": (seconds[0] - seconds[1]) * 1e6 / values,
            "cached_us": seconds[1] * 1e6 / values,
            "counts": counts,
            "rejected": [status.rejected_conn_ips, status.rejected_senders],
        }
    return results


def run(python_path: str | None, values: int) -> dict[str, FormResult]:
    env = dict(os.environ)
    if python_path is not None:
        env["PYTHONPATH"] = python_path  # comes before the editable install's entries
    command = [sys.executable, "-P", "-c", _CHILD, str(Path(__file__).resolve()), str(values)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, FormResult] = json.loads(out)
    return result


# The child loads this file by its path (a baseline's bench/ may not have it) and
# trackerd from PYTHONPATH (the baseline) or the install.
# The checkout holding this file goes last on the path, for bench._support and
# bench.workload only: -P leaves the current directory out, and trackerd must come
# from PYTHONPATH or the install first.
_CHILD = """
import importlib.util, json, pathlib, sys
sys.path.append(str(pathlib.Path(sys.argv[1]).resolve().parents[1]))
spec = importlib.util.spec_from_file_location("first_sightings", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.one_process(int(sys.argv[2]))))
"""


def main() -> None:
    parser = arguments("bench.first_sightings", __doc__)
    parser.add_argument(
        "--values", type=whole_number(), default=100_000, help="distinct values per form"
    )
    parser.add_argument(
        "--rounds", type=whole_number(), default=3, help="rounds (fresh processes each)"
    )
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="also run the trackerd checked out in DIR"
    )
    args = parser.parse_args()
    entrants: list[tuple[str, str | None]] = [("this tree", None)]
    if args.baseline is not None:
        root = args.baseline.resolve()
        entrants.insert(0, ("baseline", f"{root}:{root / 'client'}"))
    with open("/proc/loadavg") as file:
        print("load average before", file.read().split()[:3])
    runs: dict[str, list[dict[str, FormResult]]] = {name: [] for name, _ in entrants}
    for round_number in range(args.rounds):
        order = entrants if round_number % 2 == 0 else entrants[::-1]
        for name, path in order:
            runs[name].append(run(path, args.values))
    with open("/proc/loadavg") as file:
        print("load average after", file.read().split()[:3])
    rows = []
    for form in FORMS:
        row: list[object] = [form]
        for name, _ in entrants:
            per_round = [result[form]["us"] for result in runs[name]]
            cached = statistics.median(result[form]["cached_us"] for result in runs[name])
            row += [
                f"{statistics.median(per_round):.2f}",
                "/".join(f"{us:.2f}" for us in per_round),
                f"{cached:.2f}",
            ]
        counts = {
            json.dumps([result[form]["counts"], result[form]["rejected"]])
            for name in runs
            for result in runs[name]
        }
        row.append("same" if len(counts) == 1 else f"DIFFER: {sorted(counts)}")
        rows.append(row)
    headers = ["form"]
    for name, _ in entrants:
        headers += [f"{name} µs/first sighting", "rounds", "µs/cached value"]
    headers.append("counts")
    print(f"{args.values} distinct values per form, batches of {BATCH}, medians of {args.rounds}")
    print(table(headers, rows))


if __name__ == "__main__":
    main()
