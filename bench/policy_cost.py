"""Daemon CPU per Postfix policy request: ``python -m bench.policy_cost``.

Forked clients, each one connection, ask one request at a time as smtpd does
(a full Postfix 3 attribute set, a new message each time, so every request is
recorded), and wait for each answer (in a blocking recv(), or with ``--poll`` as
smtpd does: poll() with a timeout, then read); ``--gap MS`` pauses that long between one
client's requests (a paced mix; default 0, back to back). The daemon's CPU time
(utime and stime from /proc, apart; the first thread's, trackerd's event loop,
apart from the other threads') is read after the clients finish and a status
request has settled the daemon's policy queue (so the last hand-over batch is
recorded and counted), and is divided by the requests answered; its start-up is
not counted, and a run without requests is not subtracted (the daemon is idle
then). The CPU totals (all threads, the first thread, the others) are read in
nanoseconds, per thread, from /proc/PID/task/TID/schedstat's first field (a
thread's time on a CPU; the daemon's threads live as long as it does, so none
is lost by exiting); user and system apart come from /proc/PID/stat's clock
ticks (10 ms: 0.5 µs a request over 4 x 5,000 requests), so read those to that
grain. Every column is its own median over the rounds: the sub-columns need not
add up to the total. "x thread floor" is the CPU over the median of
bench.policy_floor's thread-and-epoll floor (``--floor``; "-" without it).
Each run checks that the daemon mapped the extension modules its row's tree and
path say and no other (bench.trees.check_ran): a C row ran C, a pure row none.
Each run asserts the daemon's records and its distinct counts (connection IPs,
domains, IP literals) against the true counts of the requests sent.

``--baseline DIR`` (repeatable) runs, alternately in the same rounds, the trackerd of another
checkout (``git archive main | tar -x -C DIR``), so that a change is measured
against what it replaces under the same load. ``--profile PREFIX`` adds one
round per competitor under py-spy (not counted): PREFIX-NAME.txt holds the raw
stacks, and the functions that hold the interpreter lock longest are printed
(``--gil``: Python's own CPU; the kernel's is the "system" column).
"""

from __future__ import annotations

import collections
import functools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench._support import BenchDaemon, arguments, real_number, table, whole_number
from bench.trees import (
    Description,
    Tree,
    baseline_tree,
    check_ran,
    describe,
    extensions_mapped,
    this_tree,
)
from bench.workload import distinct_counts, loadavg

ATTRIBUTES = (
    "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    "client_address={ip}\nclient_name=mail{n}.example.com\nclient_port=51234\n"
    "reverse_client_name=mail{n}.example.com\nserver_address=192.0.2.25\nserver_port=25\n"
    "helo_name=mail{n}.example.com\nsender=<user{n}@sender{n}.example.com>\n"
    "recipient=rcpt@example.net\nrecipient_count=0\nqueue_id=\ninstance={w}.{n}\n"
    "size=12345\netrn_domain=\nstress=\nsasl_method=\nsasl_username=\nsasl_sender=\n"
    "ccert_subject=\nccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\n"
    "encryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\n"
    "encryption_keysize=256\npolicy_context=\ncompatibility_level=3.6\nmail_version=3.7.11\n\n"
)

_TICK = os.sysconf("SC_CLK_TCK")


def _client_address(worker: int, n: int) -> str:
    return f"10.{worker}.{n // 256 % 256}.{n % 256}"


def _sender(n: int) -> str:
    """Request n's sender attribute (the one ATTRIBUTES holds, for n % 5000)."""
    return f"<user{n}@sender{n}.example.com>"


@functools.cache
def true_counts(clients: int, requests: int) -> tuple[int, int, int]:
    """The distinct (connection IPs, domains, IP literals) of the requests sent."""
    pairs = [
        (_client_address(w, n), _sender(n % 5000)) for w in range(clients) for n in range(requests)
    ]
    return distinct_counts([pairs])


def client(path: str, worker: int, requests: int, gap: float = 0.0, poll: bool = False) -> None:
    """One Postfix connection's requests, one at a time; gap seconds between them.
    poll: each answer is waited for as smtpd does (a timeout: poll() for input, then
    read), not in a blocking recv()."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        if poll:
            # Python then polls before each recv. A task asleep in recv() is woken
            # also when the daemon's read frees room in its send buffer (and may
            # take the core from the daemon); one in poll() for input is not.
            sock.settimeout(60)
        sock.connect(path)
        for n in range(requests):
            if gap and n:
                time.sleep(gap)
            ip = _client_address(worker, n)
            sock.sendall(ATTRIBUTES.format(ip=ip, n=n % 5000, w=worker).encode())
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("the daemon closed the connection")
                reply += chunk


def user_system_seconds(pid: int, tid: int | None = None) -> tuple[float, float]:
    """utime and stime of a process (or of its thread tid), from /proc (fields 14
    and 15)."""
    stat = Path(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat")
    fields = stat.read_text().rpartition(")")[2].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def thread_nanoseconds(pid: int) -> dict[int, int]:
    """Each thread's time on a CPU, in nanoseconds (schedstat's first field)."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text()
        except FileNotFoundError:  # the thread exited meanwhile
            continue
        times[int(tid)] = int(text.split()[0])
    return times


def one_decimal(value: float) -> str:
    """value to 0.1, and "0.0" for a figure that rounds to nothing (never "-0.0")."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


@dataclass(frozen=True)
class Round:
    user_us: float
    system_us: float
    per_second: float
    #: Of cpu_us: the first thread's (trackerd's event loop; idle in the thread
    #: floor), the rest is the other threads' (the policy thread, mostly).
    main_us: float
    #: Every thread's, from schedstat (nanoseconds), not user + system's ticks.
    cpu_us: float


@dataclass(frozen=True)
class Competitor:
    name: str
    command: list[str]
    #: bench.policy_floor: answers, and neither parses nor counts.
    floor: bool = False
    #: The tree and path a trackerd row runs, and what they load (None: a floor).
    tree: Tree | None = None
    about: Description | None = None


def trackerd_competitor(name: str, tree: Tree) -> Competitor:
    return Competitor(name, tree.trackerd_command(), tree=tree, about=describe(tree))


FLOORS = [
    Competitor(
        "floor: asyncio answering DUNNO, nothing else",
        this_tree().command("-m", "bench.policy_floor", "--kind", "asyncio"),
        floor=True,
    ),
    Competitor(
        "floor: a thread's own epoll answering DUNNO",
        this_tree().command("-m", "bench.policy_floor", "--kind", "thread"),
        floor=True,
    ),
]


def competitors(baselines: list[Path], floor: bool, pure: bool = False) -> list[Competitor]:
    """The baselines (if any) first, in their order, and this tree last (on the
    pure-Python path just before it, if asked for); the floors, if asked for, between."""
    # bench.trees: PYTHONPATH and -P (else a checkout in the current directory is run).
    this = trackerd_competitor("this tree", this_tree())
    others = [
        trackerd_competitor(f"baseline ({baseline})", baseline_tree(baseline))
        for baseline in baselines
    ]
    if pure:
        tree = this_tree(pure=True)
        others.append(trackerd_competitor(f"this tree{tree.name()}", tree))
    return [*others, *FLOORS, this] if floor else [*others, this]


def where(competitor: Competitor) -> str:
    """The trackerd package a competitor's command imports."""
    command = [*competitor.command[:-2], "-c", "import trackerd; print(trackerd.__file__)"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def one_run(
    competitor: Competitor,
    clients: int,
    requests: int,
    profile: Path | None = None,
    gap: float = 0.0,
    poll: bool = False,
) -> Round:
    if competitor.floor:
        return floor_run(competitor, clients, requests, gap, poll)
    daemon = BenchDaemon(command=competitor.command)
    path = daemon.dir / "policy.sock"
    daemon.extra_args = ["--postfix-policy-socket", str(path)]
    daemon.start()
    spy: subprocess.Popen[bytes] | None = None
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        if profile is not None:
            spy = _start_py_spy(pid, profile)
        expected = true_counts(clients, requests)
        records = 0
        counted = (0, 0, 0)

        def settle() -> None:
            # The status reply comes after the policy queue is recorded.
            nonlocal records, counted
            status = daemon.status()
            records = status.records
            counted = (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers)

        result = measured(pid, str(path), clients, requests, settle, gap, poll)
        if competitor.tree is not None and competitor.about is not None:
            check_ran(competitor.name, competitor.tree, competitor.about,
                      extensions_mapped(pid), ("trackerd.",))  # fmt: skip
        assert records == clients * requests, records
        assert counted == expected, f"counted {counted}, expected {expected}"
        return result
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            spy.wait(60)
        daemon.stop()


def floor_run(
    competitor: Competitor, clients: int, requests: int, gap: float, poll: bool = False
) -> Round:
    directory = Path(tempfile.mkdtemp(prefix="stb-", dir="/tmp"))
    path = directory / "floor.sock"
    process = subprocess.Popen([*competitor.command, str(path)])
    try:
        deadline = time.monotonic() + 15
        while not path.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("bench.policy_floor did not start")
            time.sleep(0.02)
        return measured(process.pid, str(path), clients, requests, None, gap, poll)
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def measured(
    pid: int,
    path: str,
    clients: int,
    requests: int,
    settle: Callable[[], None] | None,
    gap: float,
    poll: bool = False,
) -> Round:
    """Run the clients against path; the CPU pid spent meanwhile, per request, read
    after settle() (which waits until the daemon has done what it was handed)."""
    user_before, system_before = user_system_seconds(pid)
    threads_before = thread_nanoseconds(pid)
    start = time.perf_counter()
    children = []
    for w in range(clients):
        child = os.fork()
        if child == 0:
            code = 1
            try:
                client(path, w, requests, gap, poll)
                code = 0
            finally:
                os._exit(code)
        children.append(child)
    for child in children:
        assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    elapsed = time.perf_counter() - start
    if settle is not None:
        settle()
    user, system = user_system_seconds(pid)
    threads = thread_nanoseconds(pid)
    spent = {tid: ns - threads_before.get(tid, 0) for tid, ns in threads.items()}
    total = clients * requests
    return Round(
        (user - user_before) * 1e6 / total,
        (system - system_before) * 1e6 / total,
        total / elapsed,
        spent.get(pid, 0) / 1e3 / total,
        sum(spent.values()) / 1e3 / total,
    )


def _start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    process = subprocess.Popen(
        [spy, "record", "--gil", "-p", str(pid), "-r", "500", "-f", "raw", "-o", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # let it attach
    return process


def profile_summary(path: Path, top: int = 12) -> str:
    """The functions with the most samples, inclusive (py-spy's raw format)."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        # Function names only (a frame is "function (file:line)"), each once a stack.
        for name in {frame.split(" (")[0] for frame in stack.split(";")}:
            inclusive[name] += int(count)
    rows = [
        [name, f"{100 * count / total:.0f}%"]
        for name, count in inclusive.most_common(top + 12)
        if not name.startswith(
            ("<module>", "_run", "run", "Runner.", "AsyncIOBackend.", "main", "BaseEventLoop.run_")
        )
    ]
    return table(["function (inclusive)", f"of {total:,} samples"], rows[:top])


def table_rows(
    entrants: list[Competitor], results: dict[str, list[Round]], thread_floor: str | None
) -> list[list[str]]:
    """The output's rows: each column its own median over the rounds."""
    floor = statistics.median(r.cpu_us for r in results[thread_floor]) if thread_floor else 0
    rows = []
    for competitor in entrants:
        rounds = results[competitor.name]
        cpu = statistics.median(r.cpu_us for r in rounds)
        rows.append(
            [
                competitor.name,
                one_decimal(cpu),
                f"{cpu / floor:.2f}x" if floor > 0 else "-",
                one_decimal(statistics.median(r.user_us for r in rounds)),
                one_decimal(statistics.median(r.system_us for r in rounds)),
                one_decimal(statistics.median(r.main_us for r in rounds)),
                one_decimal(statistics.median(r.cpu_us - r.main_us for r in rounds)),
                f"{statistics.median(r.per_second for r in rounds):,.0f}",
                " / ".join(f"{r.cpu_us:.1f}" for r in rounds),
            ]
        )
    return rows


def main() -> None:
    parser = arguments("bench.policy_cost", __doc__)
    parser.add_argument(
        "--clients", type=whole_number(), default=4, help="concurrent Postfix connections"
    )
    parser.add_argument("--requests", type=whole_number(), default=5000, help="requests per client")
    parser.add_argument(
        "--rounds", type=whole_number(), default=5, help="rounds, competitors alternated"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also run the trackerd checked out in DIR (may be given more than once)",
    )
    parser.add_argument("--profile", metavar="PREFIX", help="one more round each under py-spy")
    parser.add_argument(
        "--pure",
        action="store_true",
        help="also run this tree on the pure-Python path (its C extension turned off)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run bench.policy_floor's floors (asyncio, a thread's epoll)",
    )
    parser.add_argument(
        "--gap",
        type=real_number(),
        default=0.0,
        metavar="MS",
        help="milliseconds one client waits between its requests (0: back to back)",
    )
    parser.add_argument(
        "--poll",
        action="store_true",
        help="the clients wait for each answer as smtpd does (poll() with a timeout, "
        "then read) rather than in a blocking recv()",
    )
    args = parser.parse_args()
    gap = args.gap / 1000
    entrants = competitors(args.baseline, args.floor, args.pure)
    for competitor in entrants:
        if not competitor.floor:
            print(f"{competitor.name}: {where(competitor)}")
    print(f"load average before: {loadavg()}")
    results: dict[str, list[Round]] = {c.name: [] for c in entrants}
    for number in range(args.rounds):
        # Alternated, and the order turned each round, so that neither always goes first.
        order = entrants if number % 2 == 0 else entrants[::-1]
        for competitor in order:
            results[competitor.name].append(
                one_run(competitor, args.clients, args.requests, gap=gap, poll=args.poll)
            )
    if args.profile:
        for competitor in entrants:
            if competitor.floor:
                continue
            number = entrants.index(competitor)
            slug = "this" if competitor is entrants[-1] else f"baseline{number}"
            output = Path(f"{args.profile}-{slug}.txt")
            one_run(
                competitor, args.clients, args.requests, profile=output, gap=gap, poll=args.poll
            )
            print(f"py-spy --gil profile of {competitor.name} ({output}):")
            print(profile_summary(output))
    print(f"load average after: {loadavg()}")
    thread_floor = next((c.name for c in entrants if c.floor and "thread" in c.name), None)
    rows = table_rows(entrants, results, thread_floor)
    print(
        f"{args.clients} connections x {args.requests:,} requests, {args.rounds} rounds, "
        f"gap {args.gap:g} ms between a client's requests, "
        f"{'poll() then read' if args.poll else 'a blocking recv()'} for each answer; "
        "each column its own median "
        "over the rounds (sub-columns need not add up); CPU from schedstat (ns), user "
        "and system from clock ticks (10 ms)"
    )
    print(
        table(
            [
                "daemon",
                "CPU µs/request",
                "x thread floor",
                "user",
                "system",
                "event loop thread",
                "other threads",
                "requests/s",
                "CPU µs (rounds)",
            ],
            rows,
        )
    )
    new = statistics.median(r.cpu_us for r in results[entrants[-1].name])
    for competitor in entrants[: len(args.baseline) + args.pure]:
        old = statistics.median(r.cpu_us for r in results[competitor.name])
        print(f"this tree uses {new / old:.2f} times the CPU per request of {competitor.name}")


if __name__ == "__main__":
    main()
