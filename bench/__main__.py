"""Run every benchmark and print its table: ``python -m bench`` (or ``make bench``).

Results are also written as JSON to bench/results/latest.json.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from bench import cli_startup, costly_names, end_to_end, memory, record_cost, status_under_load
from bench._support import arguments


def main() -> None:
    arguments("bench", __doc__).parse_args()
    results: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
    }

    costs = record_cost.run()
    print(record_cost.report(costs), end="\n\n")
    results["record_cost_us"] = {name: record_cost.medians(c) for name, c in costs.items()}

    seconds = end_to_end.run_trackerd()
    total = end_to_end.WORKERS * end_to_end.PER_WORKER
    print(end_to_end.report(total, seconds), end="\n\n")
    results["end_to_end"] = {
        "records": total,
        "seconds": seconds,
        "records_per_second": total / seconds,
    }

    under_load = status_under_load.run()
    print(status_under_load.report(under_load), end="\n\n")
    results["status_under_load_ms"] = under_load

    costly = costly_names.value_costs(20)
    flood = costly_names.ping_under_flood(5.0)
    print(costly_names.report(costly, flood), end="\n\n")
    results["costly_names"] = {"values": costly, "ping_under_flood_ms": flood}

    memory_rows = memory.run(with_daemon=True)
    print(memory.report(memory_rows), end="\n\n")
    results["memory"] = memory_rows

    startup = cli_startup.run()
    print(cli_startup.report(startup), end="\n\n")
    results["cli_startup_ms"] = startup

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out / 'latest.json'}")


if __name__ == "__main__":
    main()
