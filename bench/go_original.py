"""The Go original's design, in Go, as bench.compare's ``go`` competitor: this module
builds bench/go_original/ once (``go build``, standard library only) and runs it on
bench.workload's records.

Run alone: ``python -m bench.go_original [--form mix] [--per-worker N]`` (needs Go:
``apt-get install golang-go``; Go 1.19 or later).

The program (bench/go_original/main.go says what it models and how) is the
original's design: one process, a singleton tracker holding salted hashes (SHA-256
over salt || value) in memory under a mutex, the whole status JSON rewritten to
server_tracker.json on every record, and 8 goroutines each recording its share. The
goroutines share that tracker in one process with no IPC, as the original's SMTP
sessions do; trackerd's workers are processes that send to a daemon. The status file
goes where the seed design's Python model writes (tmpfs, as the original's runtime
directory).

The records are bench.workload's, the very strings: written to a file (one
"connIP<TAB>sender" line each, worker w's share the w-th contiguous run of lines)
that the program reads before its timing starts; it times from the first record to
the last and reports its process's CPU over that span (the goroutines are its
workers: there is no server apart from them). Its counts, and the status file it
left, are checked against the true counts, so a broken model fails.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench._support import arguments, whole_number
from bench.seed_design import seed_directory
from bench.workload import FORMS, PER_WORKER, WORKERS, Run, Workload

SOURCE = Path(__file__).parent / "go_original"
#: The status file the program writes in its runtime directory (the original's name).
STATUS_FILE = "server_tracker.json"
STATUS_FIELDS = ("boot_time", "unique_conn_ips", "unique_domains", "unique_ip_servers")
#: What to install when there is no go.
INSTALL_HINT = "apt-get install golang-go"


class GoUnavailable(Exception):
    """Go is not installed, or the program does not build (the message says which)."""


def cache_directory() -> Path:
    """Where the built program and Go's build cache are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "servertracker-bench"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise GoUnavailable(f"go not found ({INSTALL_HINT})")
    return go


def _environment(cache: Path) -> dict[str, str]:
    """go's environment: its own build cache, no module downloads, no VCS stamp (a
    tree from git archive has no .git), no cgo (nothing here needs C: the build
    takes Debian's prebuilt standard library, under a second instead of compiling)."""
    env = dict(os.environ)
    env.update(
        GOCACHE=str(cache / "go-build"), GOPROXY="off", GOFLAGS="-buildvcs=false", CGO_ENABLED="0"
    )
    return env


def build(cache: Path | None = None) -> Path:
    """The built program, built once per source and Go version and kept in ``cache``
    (default: cache_directory()); GoUnavailable if there is no go or it does not build."""
    go = _go()
    cache = cache or cache_directory()
    env = _environment(cache)
    version = subprocess.run(
        [go, "version"], capture_output=True, text=True, env=env, check=False
    ).stdout
    key = hashlib.sha256(version.encode())
    for name in ("go.mod", "main.go"):
        key.update((SOURCE / name).read_bytes())
    binary = cache / f"go_original-{key.hexdigest()[:16]}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="go_original-", dir=cache))
    try:
        built = subprocess.run(
            [go, "build", "-o", str(building / "go_original"), "."],
            cwd=SOURCE, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if built.returncode != 0:
            raise GoUnavailable(f"go build failed: {built.stderr.strip()[-2000:]}")
        # A rename: a process building at the same time never sees half a program.
        os.replace(building / "go_original", binary)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return binary


def write_records(shares: list[list[tuple[str, str]]], path: Path) -> None:
    """The shares as the program reads them: one "connIP<TAB>sender" line a record,
    the shares one after the other (of equal lengths: the program splits the lines
    into equal runs)."""
    if len({len(share) for share in shares}) > 1:
        raise ValueError("the shares are not of equal lengths")
    lines = [f"{ip}\t{value}\n" for share in shares for ip, value in share]
    for line in lines:
        # A value holding a tab or a line break would shift every record after it.
        if line.count("\t") != 1 or line.count("\n") != 1:
            raise ValueError("a record holds a tab or a line break")
    path.write_text("".join(lines), encoding="utf-8")


#: The records file of the workload last run, kept while its form runs: (form,
#: records per worker, path). One at a time (bench.compare holds one form's records).
_written: tuple[str, int, Path] | None = None


def _records_file(load: Workload) -> Path:
    global _written
    if _written is not None and _written[:2] == (load.form, load.per_worker):
        return _written[2]
    _remove_records_file()
    handle, name = tempfile.mkstemp(prefix="go_original-", suffix=".records")
    os.close(handle)
    _written = (load.form, load.per_worker, Path(name))
    write_records(load.shares, _written[2])
    return _written[2]


@atexit.register
def _remove_records_file() -> None:
    global _written
    if _written is not None:
        _written[2].unlink(missing_ok=True)
        _written = None


def run_records(
    binary: Path, records: Path, workers: int = WORKERS, per_record: bool = True
) -> tuple[dict[str, Any], Any]:
    """Run the program on a records file: what it printed (its counts, "records",
    "seconds", "cpu_seconds") and the status file it left (as JSON); RuntimeError
    if it fails. ``per_record=False`` writes the status file once, after the timing:
    not the design, only to show what its file costs."""
    directory = Path(tempfile.mkdtemp(prefix="stgo-", dir=seed_directory()))
    try:
        ran = subprocess.run(
            [str(binary), "-workers", str(workers), "-records", str(records),
             "-runtime-dir", str(directory), f"-write-per-record={str(per_record).lower()}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if ran.returncode != 0:
            raise RuntimeError(f"go original failed ({ran.returncode}): {ran.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(ran.stdout)
        return result, json.loads((directory / STATUS_FILE).read_text())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def counts(status: Any) -> tuple[int, int, int]:
    """The distinct counts a status (the file's, or the program's line) holds."""
    return (status["unique_conn_ips"], status["unique_domains"], status["unique_ip_servers"])


def run_go_original(load: Workload, binary: Path | None = None, per_record: bool = True) -> Run:
    """One run of the program on the load's records; AssertionError if its counts or
    its status file are not the true counts (load.distinct)."""
    result, status = run_records(binary or build(), _records_file(load), per_record=per_record)
    got = counts(result)
    assert got == tuple(load.distinct), f"go original counted {got}, expected {load.distinct}"
    assert result["records"] == load.total, f"go original recorded {result['records']}"
    assert isinstance(status, dict) and sorted(status) == sorted(STATUS_FIELDS), status
    assert all(type(status[name]) is int for name in STATUS_FIELDS), status
    assert counts(status) == got, f"the status file says {counts(status)}, the tracker {got}"
    return Run(result["seconds"], None, result["cpu_seconds"])


def main() -> None:
    parser = arguments("bench.go_original", __doc__)
    parser.add_argument("--form", default="mix", choices=FORMS, help="the sender form")
    parser.add_argument(
        "--per-worker", type=whole_number(), default=PER_WORKER, help="records per worker"
    )
    parser.add_argument(
        "--without-file",
        action="store_true",
        help="also run it writing the status file once at the end instead of per record "
        "(not the design: what its file costs)",
    )
    args = parser.parse_args()
    if args.per_worker < 1:
        raise SystemExit("--per-worker must be at least 1")
    try:
        binary = build()
    except GoUnavailable as error:
        raise SystemExit(f"cannot run the Go original's design: {error}") from None
    load = Workload(args.form, args.per_worker)
    print(
        f"Go original's design, {WORKERS} goroutines in one process, {load.total:,} "
        f"{args.form} records; counts checked against {load.distinct}"
    )
    for per_record in (True, False) if args.without_file else (True,):
        run = run_go_original(load, binary, per_record)
        print(
            f"{'status file per record' if per_record else 'status file at the end only':28}"
            f"{run.seconds:6.2f} s, {load.total / run.seconds:11,.0f} records/s, "
            f"{run.worker_cpu * 1e6 / load.total:6.2f} µs CPU a record"
        )


if __name__ == "__main__":
    main()
