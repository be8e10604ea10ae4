"""Prometheus metrics: trackerctl metrics and --metrics-textfile, checked with the real
tools (promtool, and a node_exporter serving the text file over loopback)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from servertracker.exposition import METRIC_NAMES, render
from servertracker.status import Health, Status, WindowCounts
from tests.conftest import Daemon, trackerctl, wait_for

PROMTOOL = shutil.which("promtool")
NODE_EXPORTER = shutil.which("prometheus-node-exporter")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """{(name, sorted labels): value} of every sample in an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def promtool_check(text: str) -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


#: Where promtool prints a series of its dump: {__name__="x", a="b"} value timestamp.
DUMP_LINE = re.compile(r'^\{__name__="([^"]+)"((?:, [a-z_]+="[^"]*")*)\} (\S+) \d+$')


def promtool_read_openmetrics(text: str, scratch: Path) -> Samples:
    """The samples Prometheus's own OpenMetrics parser reads from text.

    `promtool check metrics` reads only the 0.0.4 format (it rejects the OpenMetrics
    `info` type: test_promtool_check_rejects_the_openmetrics_form), so the OpenMetrics
    form goes through promtool's OpenMetrics importer instead: it insists on the
    `# EOF`, on a TYPE/UNIT/HELP before the samples, on units that are the name's
    suffix. The importer needs a timestamp on every sample: one is added here.
    """
    assert PROMTOOL is not None
    stamped = "".join(
        line if line.startswith("#") else f"{line.rstrip()} 1700000000\n"
        for line in text.splitlines(keepends=True)
    )
    source = scratch / "openmetrics.txt"
    source.write_text(stamped)
    blocks = scratch / "blocks"
    blocks.mkdir()
    imported = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "-q", str(source), str(blocks)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stdout + imported.stderr
    (blocks / "wal").mkdir()  # `tsdb dump` opens a head too
    dumped = subprocess.run(
        [PROMTOOL, "tsdb", "dump", str(blocks)], capture_output=True, text=True, timeout=60
    )
    assert dumped.returncode == 0, dumped.stdout + dumped.stderr
    found: Samples = {}
    for line in dumped.stdout.splitlines():
        match = DUMP_LINE.match(line)
        assert match, line
        name, labels, number = match.groups()
        pairs = re.findall(r'([a-z_]+)="([^"]*)"', labels)
        found[(name, tuple(sorted(pairs)))] = float(number)
    return found


PAIRS = [
    ("192.0.2.1", "a@example.com"),
    ("192.0.2.2", "b@[192.0.2.9]"),
    ("192.0.2.3", "c@example.org"),
    ("not an ip", "<>"),
]


def record(daemon: Daemon) -> None:
    with daemon.connect() as conn:
        conn.record(PAIRS)
        conn.ping()


def assert_counts(found: Samples) -> None:
    for window in ("boot", "1h"):
        assert value(found, "servertracker_distinct_servers", category="connection_ip",
                     window=window) == 3  # fmt: skip
        assert value(found, "servertracker_distinct_servers", category="domain",
                     window=window) == 2  # fmt: skip
        assert value(found, "servertracker_distinct_servers", category="ip_literal",
                     window=window) == 1  # fmt: skip
    assert value(found, "servertracker_records_total") == 4
    assert value(found, "servertracker_rejected_total", field="conn_ip") == 1
    assert value(found, "servertracker_estimated", category="domain") == 0
    assert value(found, "servertracker_window_seconds", window="1h") == 3600


@needs_promtool
def test_trackerctl_metrics_live_then_from_the_file(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(extra_args=["--windows", "1h,24h"]).start()
    record(daemon)
    with socket.socket(socket.AF_UNIX) as raw:  # a protocol error, counted by its code
        raw.settimeout(10)
        raw.connect(str(daemon.socket_path))
        raw.sendall(b"\x00\x00\x00\x03\xc1\xc1\xc1")
        while raw.recv(4096):  # the error reply, then the daemon closes
            pass
    result = trackerctl("metrics", "--runtime-dir", str(daemon.runtime_dir))
    assert result.returncode == 0, result.stderr
    promtool_check(result.stdout)
    found = samples(result.stdout)
    assert_counts(found)
    assert value(found, "servertracker_status_source", source="live") == 1
    assert value(found, "servertracker_protocol_errors_total", code="bad-msgpack") == 1
    assert value(found, "servertracker_connections_accepted_total") >= 3
    assert value(found, "servertracker_connections_refused_total", reason="forbidden") == 0
    assert {name for name, _ in found} <= METRIC_NAMES
    assert "192.0.2" not in result.stdout and "example" not in result.stdout
    openmetrics = trackerctl("metrics", "--openmetrics", "--runtime-dir", str(daemon.runtime_dir))
    assert openmetrics.returncode == 0, openmetrics.stderr
    assert openmetrics.stdout.endswith("# EOF\n")
    found = promtool_read_openmetrics(openmetrics.stdout, tmp_path)
    assert_counts(found)
    assert value(found, "servertracker_status_source", source="live") == 1

    daemon.stop()
    result = trackerctl("metrics", "--runtime-dir", str(daemon.runtime_dir))
    assert result.returncode == 3, result.stderr  # from the file, as `status` says
    promtool_check(result.stdout)
    found = samples(result.stdout)
    assert_counts(found)
    assert value(found, "servertracker_status_source", source="file") == 1
    assert "Traceback" not in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def node_exporter(short_tmp: Path) -> Iterator[tuple[Path, str]]:
    """A node_exporter with only the textfile collector, on a loopback port."""
    if NODE_EXPORTER is None:
        pytest.skip("prometheus-node-exporter not installed")
    directory = short_tmp / "textfiles"
    directory.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            NODE_EXPORTER,
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={directory}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        yield directory, url
    finally:
        process.terminate()
        process.wait(10)


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return None


@needs_promtool
def test_textfile_served_by_node_exporter(
    make_daemon: Callable[..., Daemon], node_exporter: tuple[Path, str]
) -> None:
    directory, url = node_exporter
    textfile = directory / "servertracker.prom"
    daemon = make_daemon(
        extra_args=["--windows", "1h", "--metrics-textfile", str(textfile)]
    ).start()
    assert textfile.exists()  # written with the first status file, before ready
    assert textfile.stat().st_mode & 0o777 == 0o644
    record(daemon)

    def scraped_counts() -> Samples | None:
        text = scrape(url)
        if text is None or "servertracker_records_total 4" not in text:
            return None
        return samples(text)

    found = wait_for(scraped_counts, 30, "node_exporter to serve trackerd's counts")
    assert_counts(found)
    assert value(found, "node_textfile_scrape_error") == 0
    promtool_check(textfile.read_text())
    assert list(directory.glob(".*")) == []  # no temp file left where node_exporter reads


def test_textfile_no_longer_claims_live_after_a_clean_stop(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    textfile = short_tmp / "servertracker.prom"
    daemon = make_daemon(extra_args=["--metrics-textfile", str(textfile)]).start()
    record(daemon)
    wait_for(lambda: "servertracker_records_total 4" in textfile.read_text(), 30, "the counts")
    live = samples(textfile.read_text())
    assert value(live, "servertracker_status_source", source="live") == 1
    assert daemon.stop() == 0
    # node_exporter serves the file whether or not trackerd runs: the last numbers
    # stay (ServertrackerMetricsStale fires once they are old), marked as a file's.
    final = samples(textfile.read_text())
    assert value(final, "servertracker_status_source", source="file") == 1
    assert not any(
        name == "servertracker_status_source" and ("source", "live") in pairs
        for name, pairs in final
    )
    assert value(final, "servertracker_records_total") == 4


def test_every_label_comes_from_a_fixed_set() -> None:
    health = Health(5, {"busy": 1, "forbidden": 2}, 3, {"truncated": 4}, 9, 1)
    status = Status(
        1_700_000_000, 1, 2, 3, records=7, windows=(WindowCounts("90s", 90, 1, 1, 1),),
        estimated=("unique_conn_ips",), health=health,
    )  # fmt: skip
    found = samples(render(status, source="file", version="1.2.3").decode())
    labels = {label for _, pairs in found for label in pairs}
    assert labels == {
        ("category", "connection_ip"), ("category", "domain"), ("category", "ip_literal"),
        ("window", "boot"), ("window", "90s"), ("field", "conn_ip"), ("field", "sender"),
        ("source", "file"), ("version", "1.2.3"), ("reason", "busy"), ("reason", "forbidden"),
    } | {("code", code) for code in (
        "too-large", "empty-frame", "bad-msgpack", "bad-message", "unsupported-version",
        "unknown-type", "truncated", "unexpected-message", "fleet-off", "policy",
    )}  # fmt: skip
    assert value(found, "servertracker_estimated", category="connection_ip") == 1
    assert value(found, "servertracker_protocol_errors_total", code="truncated") == 4
    assert value(found, "servertracker_status_write_failures_total") == 1
    assert {name for name, _ in found} == METRIC_NAMES


@needs_promtool
def test_openmetrics_reads_as_the_text_form_with_its_types_and_units(tmp_path: Path) -> None:
    health = Health(5, {"busy": 1}, 3, {"truncated": 4}, 9, 1, interned_messages=2)
    status = Status(
        1_700_000_000, 1, 2, 3, records=7, windows=(WindowCounts("90s", 90, 1, 1, 1),),
        health=health,
    )  # fmt: skip
    text = render(status, source="live", version="1.2.3").decode()
    openmetrics = render(status, source="live", version="1.2.3", openmetrics=True).decode()
    promtool_check(text)
    # Prometheus reads the same series, with the same values, from either form.
    assert promtool_read_openmetrics(openmetrics, tmp_path) == samples(text)
    families = {family.name: family for family in openmetrics_families(openmetrics)}
    assert {family.name for family in text_string_to_metric_families(text)} == {
        f"{name}_info" if families[name].type == "info" else name for name in families
    }
    # OpenMetrics says what 0.0.4 cannot: each *_seconds family's unit, the version
    # as an info family, and a counter's family name without its _total.
    assert families["servertracker_build"].type == "info"
    for name, family in families.items():
        assert family.unit == ("seconds" if name.endswith("_seconds") else ""), name
        if family.type == "counter":
            assert not name.endswith("_total")
            assert {sample.name for sample in family.samples} == {f"{name}_total"}


@needs_promtool
def test_promtool_check_rejects_the_openmetrics_form() -> None:
    """What docs/monitoring.md and `trackerctl metrics --help` say promtool does with
    --openmetrics's text: it fails on the `info` type, which 0.0.4 lacks."""
    assert PROMTOOL is not None
    text = render(Status(1_700_000_000, 1, 2, 3), source="live", version="1.2.3", openmetrics=True)
    result = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert result.returncode == 1
    assert b'unknown metric type "info"' in result.stdout + result.stderr


def test_status_from_an_older_daemon_has_no_health_metrics() -> None:
    text = render(Status(1, 2, 3, 4), source="file", version="1").decode()
    assert "servertracker_connections_accepted_total" not in text
    assert "servertracker_distinct_servers" in text


def test_workers_and_other_commands_never_load_prometheus_client(short_tmp: Path) -> None:
    code = (
        "import sys\n"
        "import servertracker\n"
        "from servertracker import record_server\n"
        "assert 'prometheus_client' not in sys.modules, 'a worker import loads it'\n"
        "from servertracker.cli import app\n"
        f"try:\n    app(['status', '--runtime-dir', {str(short_tmp)!r}])\n"
        "except SystemExit:\n    pass\n"
        "sys.exit(1 if 'prometheus_client' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_protocol_error_labels_are_the_documented_codes() -> None:
    """The codes are written once (error_codes.py); docs/protocol.md's table of them
    must name the same: the wire's codes, refusals included, and not "policy"."""
    from servertracker import protocol
    from servertracker.error_codes import POLICY_ERROR, PROTOCOL_ERROR_CODES, REFUSAL_REASONS

    doc = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    table = doc.split("| code | meaning |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    documented = {row.split("`")[1] for row in table.splitlines()}
    wire = {value for name, value in vars(protocol).items() if name.startswith("ERR_")}
    assert documented == wire == set(PROTOCOL_ERROR_CODES) - {POLICY_ERROR} | set(REFUSAL_REASONS)
    assert POLICY_ERROR in PROTOCOL_ERROR_CODES and not set(REFUSAL_REASONS) & set(
        PROTOCOL_ERROR_CODES
    )
