"""Fleet counts with real trackerd processes, trackerctl and a real redis-server.

Three daemons share one fleet key and see overlapping populations of a known
union; trackerctl pushes their registers to Redis and reads the fleet count
back. Nothing in Redis, its append-only file or a MONITOR capture of the whole
run may hold a value or a keyed digest of one (the test knows the key).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from servertracker import cli_common, fleet_store, protocol
from servertracker.errors import ProtocolError
from servertracker.fleet_key import FleetKey, epoch_at, value_hasher
from tests.conftest import Daemon, trackerctl, wait_for
from tests.redis_server import REDIS_SERVER, MonitorCapture, RedisServer
from trackerd.core.fleet_sketch import HLL_REGISTERS, index_and_rank, registers_of
from trackerd.core.normalise import Category

CATEGORIES = fleet_store.CATEGORIES
DOCS = Path(__file__).parent.parent / "docs" / "fleet.md"
UNITS = Path(__file__).parent.parent / "systemd"


def population(start: int, stop: int) -> list[tuple[str, str]]:
    """Per n: one connection IP, one sender domain, one sender IP literal."""
    pairs = []
    for n in range(start, stop):
        low = f"{(n >> 8) & 255}.{n & 255}"
        ip = f"10.{n >> 16}.{low}"
        pairs.append((ip, f"u@d{n}.fleet.example"))
        pairs.append((ip, f"u@[172.{16 + (n >> 16)}.{low}]"))
    return pairs


#: The merge test's key (see there): fixed, so that its estimates do not vary.
FIXED_TEST_KEY = bytes(range(32))


def canonical_values(start: int, stop: int, step: int = 1) -> Iterator[tuple[Category, bytes]]:
    """What the daemon hashes for population(start, stop)."""
    for n in range(start, stop, step):
        low = f"{(n >> 8) & 255}.{n & 255}"
        yield Category.CONN_IP, ipaddress.ip_address(f"10.{n >> 16}.{low}").packed
        yield Category.DOMAIN, f"d{n}.fleet.example".encode()
        yield Category.IP_SERVER, ipaddress.ip_address(f"172.{16 + (n >> 16)}.{low}").packed


def fleet_digests(
    key: bytes, start: int, stop: int, step: int = 1
) -> Iterator[tuple[Category, bytes]]:
    """The keyed digests the daemon registers for population(start, stop)."""
    hashers = [value_hasher(key, category) for category in Category]
    for category, value in canonical_values(start, stop, step):
        hasher = hashers[category].copy()
        hasher.update(value)
        yield category, hasher.digest()


def expected_registers(key: bytes, start: int, stop: int) -> dict[str, bytes]:
    registers = {name: bytearray(HLL_REGISTERS) for name in CATEGORIES}
    for category, digest in fleet_digests(key, start, stop):
        index, rank = index_and_rank(int.from_bytes(digest, "little"))
        target = registers[CATEGORIES[category]]
        target[index] = max(target[index], rank)
    return {name: bytes(r) for name, r in registers.items()}


def assert_both_epochs_hold(
    reply: protocol.FleetReply, first: int, key: FleetKey, stop: int
) -> None:
    """The reply holds epoch ``first`` and the next, each with the registers of
    population(0, stop) under that epoch's key."""
    current, previous = reply.epochs
    assert previous.epoch == first
    for epoch in (current, previous):
        expected = expected_registers(key.advanced(epoch.epoch).key, 0, stop)
        for name in CATEGORIES:
            assert registers_of(epoch.sketches[name]) == expected[name], (epoch.epoch, name)


def quiet_epoch_seconds() -> int:
    """A day-long epoch whose next boundary is not within the next ten minutes, so
    that the test does not straddle one (86400 and 86399 s boundaries are far apart)."""
    now = time.time()
    for length in (86400, 86399):
        if (epoch_at(now, length) + 1) * length - now > 600:
            return length
    raise AssertionError("unreachable")


def keygen(path: Path, epoch_seconds: int) -> FleetKey:
    result = trackerctl("fleet", "keygen", str(path), "--epoch-seconds", str(epoch_seconds))
    assert result.returncode == 0, result.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    return FleetKey.from_text(path.read_text())


def push(
    redis: RedisServer, daemon: Daemon, host: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return trackerctl(
        "fleet", "push", "--redis", redis.url, "--host", host,
        "--socket", str(daemon.socket_path), *extra,
    )  # fmt: skip


def fleet_status(redis: RedisServer) -> dict[str, Any]:
    result = trackerctl("fleet", "status", "--redis", redis.url, "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def feed(daemon: Daemon, pairs: list[tuple[str, str]]) -> None:
    with daemon.connect(timeout=60) as conn:
        conn.record(pairs)
        conn.ping()  # applied once the pong comes


def holds_any(blob: bytes, digests: set[bytes]) -> bool:
    """Whether any 8-byte digest occurs in blob at any offset."""
    wanted = {int.from_bytes(d, "little") for d in digests}
    for offset in range(8):
        usable = (len(blob) - offset) // 8 * 8
        words = np.frombuffer(blob[offset : offset + usable], dtype="<u8")
        if not wanted.isdisjoint(words.tolist()):
            return True
    return False


@pytest.fixture
def redis_server(short_tmp: Path) -> Iterator[RedisServer]:
    server = RedisServer(short_tmp / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def fleet_daemon(
    make_daemon: Callable[..., Daemon],
) -> Callable[[str, Path], Daemon]:
    def make(name: str, key_file: Path) -> Daemon:
        return make_daemon(name, extra_args=["--fleet-key-file", str(key_file)])

    return make


def test_fleet_counts_merge_in_redis_without_values(
    short_tmp: Path, redis_server: RedisServer, fleet_daemon: Callable[[str, Path], Daemon]
) -> None:
    monitor = MonitorCapture(redis_server)
    generated = keygen(short_tmp / "fleet.key", quiet_epoch_seconds())
    # A fixed key for this epoch makes every estimate below the same on every run:
    # with a random key each of the twelve 2% checks would fail now and then
    # (Redis's sketch has a 0.81% standard error), whatever the code did.
    key = FleetKey(generated.epoch_seconds, generated.epoch, FIXED_TEST_KEY)
    (short_tmp / "fleet.key").write_text(key.to_text())
    ranges = {"alpha": (0, 60_000), "bravo": (40_000, 100_000), "charlie": (80_000, 120_000)}
    daemons = {h: fleet_daemon(h, short_tmp / "fleet.key").start(wait=False) for h in ranges}
    for daemon in daemons.values():
        daemon.wait_ready()
    with ThreadPoolExecutor(3) as pool:  # three daemons, fed at once
        list(pool.map(lambda h: feed(daemons[h], population(*ranges[h])), ranges))
    for host, (start, stop) in ranges.items():
        status = daemons[host].status()  # each host's own count stays exact
        assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (
            (stop - start,) * 3
        )
        result = push(redis_server, daemons[host], host)
        assert result.returncode == 0, result.stderr

    before = fleet_status(redis_server)
    current = before["current"]
    assert current["epoch"] == key.epoch
    for category in CATEGORIES:
        assert abs(current["fleet"][category] - 120_000) <= 0.02 * 120_000, current
        for host, (start, stop) in ranges.items():
            own = current["hosts"][host]["counts"][category]
            assert abs(own - (stop - start)) <= 0.02 * (stop - start)
    assert all(current["hosts"][h]["pushed"] <= time.time() for h in ranges)
    assert before["previous"]["hosts"] == {}

    # A restart mid-epoch: the new daemon has seen little, but the push merges.
    daemons["alpha"].stop()
    daemons["alpha"].start()
    feed(daemons["alpha"], population(0, 10_000))
    assert push(redis_server, daemons["alpha"], "alpha").returncode == 0
    after = fleet_status(redis_server)["current"]
    for category in CATEGORIES:
        assert after["fleet"][category] >= current["fleet"][category]
        assert (
            after["hosts"]["alpha"]["counts"][category]
            >= (current["hosts"]["alpha"]["counts"][category])
        )

    # The keys: one hash tag per epoch, expiring at the end of the next epoch.
    client = redis_server.client()
    names = sorted(k.decode() for k in client.keys("*"))
    tag = f"{{{key.epoch_seconds}:{key.epoch}}}"
    assert all(tag in n for n in names if n != fleet_store.EPOCH_SECONDS_KEY), names
    assert not [n for n in names if ":tmp:" in n]
    host_key = fleet_store.sketch_key(key.epoch_seconds, key.epoch, CATEGORIES[0], "alpha")
    assert client.expiretime(host_key) == (key.epoch + 2) * key.epoch_seconds
    stored = b"".join(client.dump(n) or b"" for n in names)

    # Redis slow, then down: a clear error, a non-zero exit, trackerd unaffected.
    redis_server.pause()
    try:
        result = push(redis_server, daemons["bravo"], "bravo", "--redis-timeout", "0.5")
    finally:
        redis_server.resume()
    assert result.returncode == cli_common.EXIT_REDIS
    assert "did not answer in time" in result.stderr and "Traceback" not in result.stderr
    redis_server.stop()
    result = push(redis_server, daemons["bravo"], "bravo", "--json")
    assert result.returncode == cli_common.EXIT_REDIS
    assert json.loads(result.stderr)["reason"] == "unreachable"
    feed(daemons["bravo"], population(200_000, 200_010))
    assert daemons["bravo"].status().unique_conn_ips == 60_010

    # Nothing anywhere holds a value or a keyed digest of one.
    seen = {
        "keys": stored,
        "append-only file": redis_server.aof_bytes(),
        "MONITOR": monitor.stop(),
    }
    assert b"+OK" in seen["MONITOR"] and b"PFMERGE" in seen["MONITOR"].upper()
    # Every 7th value's digests: a leak of digests would leak them all.
    digests = {digest for _, digest in fleet_digests(key.key, 0, 120_000, 7)}
    hex_digests = {d.hex().encode() for d in digests}
    cleartext = re.compile(rb"fleet\.example|(?<![\d.])(?:10|172)\.\d{1,3}\.\d{1,3}\.\d{1,3}")
    for where, blob in seen.items():
        assert blob, where
        assert not cleartext.search(blob), where
        assert not holds_any(blob, digests), where
        assert not hex_digests & set(re.findall(rb"[0-9a-f]{16}", blob)), where
        assert key.key not in blob and key.key.hex().encode() not in blob, where


def test_next_epoch_starts_at_the_boundary(
    short_tmp: Path, fleet_daemon: Callable[[str, Path], Daemon]
) -> None:
    key = keygen(short_tmp / "fleet.key", 3)
    daemon = fleet_daemon("rt", short_tmp / "fleet.key").start()
    values = population(0, 300)
    with daemon.connect() as conn:
        for _attempt in range(5):
            before = conn.fleet().epochs[0].epoch
            conn.record(values)
            first = conn.fleet().epochs[0].epoch
            if first != before:
                continue  # an epoch began between the two: the values are in the older one
            boundary = (first + 1) * key.epoch_seconds
            wait_for(lambda f=first: conn.fleet().epochs[0].epoch > f, 15, "the next epoch")
            assert time.time() >= boundary  # not before it
            conn.record(values)  # the same values: cached, yet registered again
            reply = conn.fleet()
            if reply.epochs[0].epoch == first + 1:
                break
        else:
            raise AssertionError("no epoch lasted long enough to look at it")
    assert reply.epoch_seconds == 3
    assert_both_epochs_hold(reply, first, key, 300)
    assert daemon.status().unique_conn_ips == 300
    # The epoch clock logs the change; the reply above may come first.
    wait_for(lambda: "fleet: epoch" in daemon.log(), what="the epoch change in the log")


def test_advance_moves_the_key_file_forward_and_keeps_no_old_key(
    short_tmp: Path, fleet_daemon: Callable[[str, Path], Daemon]
) -> None:
    now_epoch = epoch_at(time.time(), 86400)
    old = FleetKey(86400, now_epoch - 5, os.urandom(32))
    path = short_tmp / "keys" / "fleet.key"
    path.parent.mkdir()
    path.write_text(old.to_text())
    path.chmod(0o640)
    # A daemon started on the old file derives today's key itself.
    daemon = fleet_daemon("rt", path).start()
    feed(daemon, population(0, 200))
    with daemon.connect() as conn:
        reply = conn.fleet()
    today = reply.epochs[0].epoch  # now_epoch, or the next if midnight passed meanwhile
    assert today >= now_epoch
    expected = expected_registers(old.advanced(today).key, 0, 200)
    assert registers_of(reply.epochs[0].sketches["unique_domains"]) == expected["unique_domains"]

    result = trackerctl("fleet", "advance", str(path))
    assert result.returncode == 0, result.stderr
    text = path.read_text()
    advanced = FleetKey.from_text(text)
    assert advanced.epoch >= now_epoch and advanced == old.advanced(advanced.epoch)
    assert old.key.hex() not in text
    assert [p.name for p in path.parent.iterdir()] == ["fleet.key"]  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o640
    again = trackerctl("fleet", "advance", str(path))
    assert again.returncode == 0 and "already" in again.stdout
    assert path.read_text() == text


def test_key_file_errors_are_clear(short_tmp: Path, make_daemon: Callable[..., Daemon]) -> None:
    path = short_tmp / "fleet.key"
    path.write_text("not a key\n")
    result = trackerctl("fleet", "advance", str(path))
    assert result.returncode == cli_common.EXIT_FLEET_KEY
    assert "not a fleet key file" in result.stderr
    daemon = make_daemon(extra_args=["--fleet-key-file", str(path)])
    daemon.start(wait=False)
    assert daemon.process is not None and daemon.process.wait(30) == 1
    assert "not a fleet key file" in daemon.log()
    future = FleetKey(86400, epoch_at(time.time(), 86400) + 2, os.urandom(32))
    path.write_text(future.to_text())
    assert trackerctl("fleet", "keygen", str(path)).returncode == cli_common.EXIT_FLEET_KEY
    assert path.read_text() == future.to_text()  # keygen never overwrites
    second = make_daemon("rt2", extra_args=["--fleet-key-file", str(path)])
    second.start(wait=False)
    assert second.process is not None and second.process.wait(30) == 1
    assert "later than the current one" in second.log()
    assert future.key.hex() not in daemon.log() + second.log()


def push_to_nowhere(daemon: Daemon, short_tmp: Path, *options: str) -> dict[str, str]:
    """fleet push --json to a Redis that is not there: it must stop before Redis."""
    result = trackerctl(
        "fleet", "push", "--redis", f"unix://{short_tmp}/none.sock", "--socket",
        str(daemon.socket_path), "--host", "alpha", "--json", *options,
    )  # fmt: skip
    assert result.returncode == cli_common.EXIT_NO_FLEET, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    error: dict[str, str] = json.loads(result.stderr)
    return error


def test_push_asks_for_features_and_stops_without_fleet_mode(
    daemon: Daemon, short_tmp: Path
) -> None:
    error = push_to_nowhere(daemon, short_tmp)
    assert error["reason"] == "fleet-off"
    assert "not in fleet mode" in error["message"] and "--fleet-key-file" in error["message"]
    # It asked for the features, not for the registers: the daemon saw no request
    # it had to refuse (a fleet request without fleet mode counts as "fleet-off").
    health = daemon.status().health
    assert health is not None and health.protocol_errors.get(protocol.ERR_FLEET_OFF, 0) == 0
    text = trackerctl(
        "fleet", "push", "--redis", f"unix://{short_tmp}/none.sock", "--socket",
        str(daemon.socket_path), "--host", "alpha",
    )  # fmt: skip
    assert text.returncode == cli_common.EXIT_NO_FLEET
    assert text.stderr.startswith("error: trackerd at ") and "not in fleet mode" in text.stderr


#: The last commit whose trackerd knows no features request (267b011 added it).
BEFORE_FEATURES = "267b011^"


def test_push_to_a_daemon_older_than_features_says_it_is_too_old(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    """A real older trackerd (this repository's, from before the features request):
    it answers the features request with "unknown-type"."""
    root = Path(__file__).resolve().parent.parent
    git = shutil.which("git")
    commit = f"{BEFORE_FEATURES}^{{commit}}"
    check = [git or "git", "-C", str(root), "rev-parse", "--verify", "-q", commit]
    if git is None or subprocess.run(check, capture_output=True).returncode != 0:
        pytest.skip("no git history here to take an older trackerd from")
    old = short_tmp / "old"
    old.mkdir()
    archive = subprocess.run(
        [git, "-C", str(root), "archive", commit, "trackerd", "client"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True, timeout=60)
    prelude = f"import sys; sys.path[:0] = [{str(old)!r}, {str(old / 'client')!r}]"
    daemon = make_daemon(python_prelude=prelude).start()
    with daemon.connect() as conn, pytest.raises(ProtocolError) as raised:
        conn.features()
    assert raised.value.code == protocol.ERR_UNKNOWN_TYPE  # it is that old
    error = push_to_nowhere(daemon, short_tmp)
    assert error["reason"] == "too-old" and "too old for fleet counts" in error["message"]


def test_features_list_fleet_only_in_fleet_mode(
    short_tmp: Path, daemon: Daemon, fleet_daemon: Callable[[str, Path], Daemon]
) -> None:
    keygen(short_tmp / "fleet.key", 86400)
    fleet = fleet_daemon("fleet", short_tmp / "fleet.key").start()
    with fleet.connect() as conn:
        assert conn.features() == (*protocol.FEATURES, protocol.FEATURE_FLEET)
        assert conn.fleet().epochs  # what "fleet" promises: a fleet reply
    with daemon.connect() as conn:
        assert conn.features() == protocol.FEATURES
        assert protocol.FEATURE_FLEET not in protocol.FEATURES


def test_acl_lets_a_host_write_only_its_own_keys(
    short_tmp: Path, redis_server: RedisServer, fleet_daemon: Callable[[str, Path], Daemon]
) -> None:
    rules = fleet_store.acl_rules("alpha")
    assert rules.replace("alpha", "HOST") in DOCS.read_text()  # the docs show these rules
    admin = redis_server.client()
    for host in ("alpha", "bravo"):
        admin.execute_command("ACL", "SETUSER", host, "on", f">pw-{host}",
                              *fleet_store.acl_rules(host).split())  # fmt: skip
    key = keygen(short_tmp / "fleet.key", quiet_epoch_seconds())
    daemon = fleet_daemon("rt", short_tmp / "fleet.key").start()
    feed(daemon, population(0, 100))
    url = f"unix://alpha:pw-alpha@{redis_server.socket_path}"
    as_alpha = trackerctl("fleet", "push", "--redis", url, "--host", "alpha",
                          "--socket", str(daemon.socket_path))  # fmt: skip
    assert as_alpha.returncode == 0, as_alpha.stderr
    as_bravo = trackerctl("fleet", "push", "--redis", url, "--host", "bravo",
                          "--socket", str(daemon.socket_path), "--json")  # fmt: skip
    assert as_bravo.returncode == cli_common.EXIT_REDIS
    assert json.loads(as_bravo.stderr)["reason"] == "denied"
    assert "pw-alpha" not in as_bravo.stderr
    bravo_url = f"unix://bravo:pw-bravo@{redis_server.socket_path}"
    bravo = trackerctl("fleet", "push", "--redis", bravo_url, "--host", "bravo",
                       "--socket", str(daemon.socket_path))  # fmt: skip
    assert bravo.returncode == 0, bravo.stderr
    # Each host reads every host's keys (PFCOUNT included) for the status.
    status = trackerctl("fleet", "status", "--redis", url, "--json")
    assert status.returncode == 0, status.stderr
    assert list(json.loads(status.stdout)["current"]["hosts"]) == ["alpha", "bravo"]
    alpha = redis_server.client(username="alpha", password="pw-alpha")
    hosts = fleet_store.hosts_key(key.epoch_seconds, key.epoch)
    for command in (("DEL", hosts), ("SET", hosts, "x"), ("CLIENT", "PAUSE", "10000"),
                    ("CLIENT", "LIST"), ("CLIENT", "KILL", "ID", "1")):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            alpha.execute_command(*command)
    # The refusal in text form: the server's words only, without redis-py's echo of
    # the pipeline's command (binary registers) and without control characters.
    as_bravo_text = trackerctl("fleet", "push", "--redis", url, "--host", "bravo",
                               "--socket", str(daemon.socket_path))  # fmt: skip
    assert as_bravo_text.returncode == cli_common.EXIT_REDIS
    assert "no permissions" in as_bravo_text.stderr and "Command #" not in as_bravo_text.stderr
    assert as_bravo_text.stderr.count("\n") == 1
    assert as_bravo_text.stderr.isprintable() or as_bravo_text.stderr[:-1].isprintable()
    assert len(as_bravo_text.stderr) < 400


def test_status_survives_what_a_host_or_redis_may_store(
    short_tmp: Path, redis_server: RedisServer, fleet_daemon: Callable[[str, Path], Daemon]
) -> None:
    key = keygen(short_tmp / "fleet.key", quiet_epoch_seconds())
    daemon = fleet_daemon("rt", short_tmp / "fleet.key").start()
    feed(daemon, population(0, 300))
    for host in ("alpha", "bravo"):
        assert push(redis_server, daemon, host).returncode == 0
    admin = redis_server.client()
    length, epoch = key.epoch_seconds, key.epoch

    def status_json() -> dict[str, Any]:
        result = trackerctl("fleet", "status", "--redis", redis_server.url, "--json")
        assert result.returncode == 0, result.stderr

        def no_constants(name: str) -> None:
            raise AssertionError(f"not JSON: {name}")

        data: dict[str, Any] = json.loads(result.stdout, parse_constant=no_constants)
        text = trackerctl("fleet", "status", "--redis", redis_server.url)
        assert text.returncode == 0 and "Traceback" not in text.stderr, text.stderr
        return data

    # A host may store anything as its push time: shown as no time, never a crash.
    for bad in ("1e300", "inf", "-inf", "nan", "99999999999999", "-5", "x"):
        admin.set(fleet_store.pushed_key(length, epoch, "alpha"), bad)
        hosts = status_json()["current"]["hosts"]
        assert hosts["alpha"]["pushed"] is None and hosts["bravo"]["pushed"] is not None

    # A host's registers that are not a HyperLogLog: that host is named and left
    # out; the fleet counts the others.
    admin.set(fleet_store.sketch_key(length, epoch, "unique_domains", "bravo"), "not hll")
    current = status_json()["current"]
    assert current["hosts"]["bravo"].get("invalid") is True
    assert "invalid" not in current["hosts"]["alpha"]
    assert current["fleet"] == current["hosts"]["alpha"]["counts"]
    text = trackerctl("fleet", "status", "--redis", redis_server.url)
    assert "bravo: its registers in Redis are not a HyperLogLog" in text.stdout

    # A bad epoch length: one clear line and exit 6.
    for bad in ("1e12", "1000000000000", "0", "-1", "abc", "9" * 5000):
        admin.set(fleet_store.EPOCH_SECONDS_KEY, bad)
        result = trackerctl("fleet", "status", "--redis", redis_server.url, "--json")
        assert result.returncode == cli_common.EXIT_REDIS, (bad, result.stderr)
        assert json.loads(result.stderr)["reason"] == "error"
    admin.delete(fleet_store.EPOCH_SECONDS_KEY)
    admin.sadd(fleet_store.hosts_key(length, epoch), "x")
    admin.set(fleet_store.EPOCH_SECONDS_KEY, length)
    admin.delete(fleet_store.hosts_key(length, epoch))
    admin.set(fleet_store.hosts_key(length, epoch), "a string")
    result = trackerctl("fleet", "status", "--redis", redis_server.url)
    assert result.returncode == cli_common.EXIT_REDIS and "Traceback" not in result.stderr


class OddClient:
    """A Redis that answers with the wrong types (what a real redis-server cannot be
    made to do): GET, SMEMBERS and PFCOUNT replies of every odd kind."""

    def __init__(self, replies: dict[str, object]) -> None:
        self.replies = replies

    def get(self, key: str) -> object:
        if key == fleet_store.EPOCH_SECONDS_KEY:
            return self.replies.get("length", b"86400")
        return self.replies.get("get", None)

    def smembers(self, key: str) -> object:
        return self.replies.get("smembers", {b"alpha"})

    def pfcount(self, *keys: str) -> object:
        return self.replies.get("pfcount", 1)


@pytest.mark.parametrize(
    "replies",
    [
        {"length": [b"1"]},
        {"length": 86400},
        {"get": [b"1"]},
        {"get": 5},
        {"smembers": 3},
        {"smembers": {1, 2}},
        {"pfcount": None},
        {"pfcount": b"3"},
        {"pfcount": -1},
        {"pfcount": 2.5},
        {"pfcount": True},
    ],
)
def test_status_turns_odd_reply_types_into_a_store_error(replies: dict[str, object]) -> None:
    with pytest.raises(fleet_store.FleetStoreError) as caught:
        fleet_store.status(OddClient(replies), time.time())  # type: ignore[arg-type]
    assert caught.value.reason == "error"


def test_redis_url_errors_never_show_a_password(short_tmp: Path) -> None:
    assert fleet_store.redacted("redis://u:pw@[::1") == "an unparsable URL"
    # A URL whose authority did not parse as one: its '@' may still end a password.
    assert fleet_store.redacted("redis//u:s3cret@h") == "an unparsable URL"
    assert fleet_store.redacted(":s3cret@") == "an unparsable URL"
    masked = fleet_store.redacted("redis://h:1/0?password=s3cret&db=0")
    assert "s3cret" not in masked and "password=***" in masked and "db=0" in masked
    assert "s3cret" not in fleet_store.redacted("redis://u:s3cret@h:1/0?password=s3cret")
    urls = {
        "redis://u:s3cret@[::1": cli_common.EXIT_USAGE,
        "redis://127.0.0.1:1/0?password=s3cret": cli_common.EXIT_REDIS,
        f"unix://{short_tmp}/none.sock?password=s3cret": cli_common.EXIT_REDIS,
    }
    for url, code in urls.items():
        result = trackerctl("fleet", "status", "--redis", url)
        assert result.returncode == code, result.stderr
        assert "s3cret" not in result.stderr and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ")


def test_advance_refuses_links_and_a_future_file(short_tmp: Path) -> None:
    now_epoch = epoch_at(time.time(), 86400)
    old = FleetKey(86400, now_epoch - 3, os.urandom(32))
    path = short_tmp / "fleet.key"
    path.write_text(old.to_text())
    link = short_tmp / "link.key"
    link.symlink_to(path)
    result = trackerctl("fleet", "advance", str(link))
    assert result.returncode == cli_common.EXIT_FLEET_KEY
    assert "symbolic link" in result.stderr
    assert link.is_symlink() and path.read_text() == old.to_text()
    link.unlink()
    hard = short_tmp / "hard.key"
    os.link(path, hard)
    result = trackerctl("fleet", "advance", str(path))
    assert result.returncode == cli_common.EXIT_FLEET_KEY
    assert "hard links" in result.stderr
    assert path.read_text() == hard.read_text() == old.to_text()
    hard.unlink()
    assert trackerctl("fleet", "advance", str(path)).returncode == 0
    assert old.key.hex() not in path.read_text()

    future = FleetKey(86400, epoch_at(time.time(), 86400) + 2, os.urandom(32))
    path.write_text(future.to_text())
    result = trackerctl("fleet", "advance", str(path))
    assert result.returncode == cli_common.EXIT_FLEET_KEY
    assert "later than the current one" in result.stderr and "clock behind" in result.stderr
    assert path.read_text() == future.to_text()
    # A path that cannot be read as a file: exit 5 too (not typer's usage error).
    result = trackerctl("fleet", "advance", str(short_tmp))
    assert result.returncode == cli_common.EXIT_FLEET_KEY, result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_fleet_units_verify(short_tmp: Path) -> None:
    trackerctl_path = Path(sys.executable).parent / "trackerctl"
    units = []
    for name in ("push.service", "push.timer", "advance.service", "advance.timer"):
        text = (UNITS / f"trackerd-fleet-{name}").read_text()
        unit = short_tmp / f"trackerd-fleet-{name}"
        unit.write_text(text.replace("/usr/local/bin/trackerctl", str(trackerctl_path)))
        units.append(str(unit))
    # Their Documentation= names man:trackerctl(1) and man:trackerd(8); verify runs
    # man(1) on each, so it must find the project's pages (as tests/test_systemd.py).
    manuals = Path(__file__).parent.parent / "man"
    result = subprocess.run(
        ["systemd-analyze", "verify", *units],
        capture_output=True,
        text=True,
        env=dict(os.environ, MANPATH=f"{manuals}:"),
    )
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr


def free_cluster_ports(count: int) -> list[int]:
    """Loopback ports free for a node and for its cluster bus (port + 10000)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli missing")
def test_push_and_status_on_a_redis_cluster(
    short_tmp: Path, fleet_daemon: Callable[[str, Path], Daemon]
) -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed")
    ports = free_cluster_ports(3)
    nodes = []
    try:
        for port in ports:
            directory = short_tmp / f"node{port}"
            directory.mkdir()
            command = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                       "--cluster-enabled", "yes", "--dir", str(directory), "--save", "",
                       "--cluster-config-file", str(directory / "nodes.conf")]  # fmt: skip
            nodes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in ports:
            wait_for(lambda p=port: redis.Redis(port=p).ping(), 30, "a cluster node")
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        for port in ports:
            wait_for(
                lambda p=port: (
                    b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO")
                ),
                60,
                "the cluster to be ready",
            )
        key = keygen(short_tmp / "fleet.key", quiet_epoch_seconds())
        daemon = fleet_daemon("rt", short_tmp / "fleet.key").start()
        feed(daemon, population(0, 2000))
        url = f"redis://127.0.0.1:{ports[0]}/0"
        for host in ("alpha", "bravo"):  # two names, one population: a union of 2,000
            result = trackerctl("fleet", "push", "--cluster", "--redis", url, "--host", host,
                                "--socket", str(daemon.socket_path))  # fmt: skip
            assert result.returncode == 0, result.stderr
        result = trackerctl("fleet", "status", "--cluster", "--redis", url, "--json")
        assert result.returncode == 0, result.stderr
        current = json.loads(result.stdout)["current"]
        assert current["epoch"] == key.epoch and sorted(current["hosts"]) == ["alpha", "bravo"]
        for category in CATEGORIES:
            assert abs(current["fleet"][category] - 2000) <= 0.02 * 2000
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(15)
