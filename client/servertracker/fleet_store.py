"""Fleet sketches in Redis: the key layout, push and status (redis-py).

Imported only by ``trackerctl fleet push|status`` (servertracker[fleet] brings
redis-py); importing servertracker never loads it. Every redis-py error becomes a
FleetStoreError with a stable reason, here, in one place.

Keys (docs/fleet.md): all keys of one epoch share the hash tag ``{L:E}`` (epoch
length, epoch number), so that the multi-key commands (PFMERGE, PFCOUNT, MULTI)
work on a Redis Cluster; every key a host writes ends with ``:<host>`` (except
the shared host set), so that an ACL can let each host write only its own keys.

    servertracker:epoch-seconds                     the fleet's epoch length
    servertracker:{L:E}:hosts                       set of host names that pushed
    servertracker:{L:E}:hll:<category>:<host>       the host's registers (HYLL)
    servertracker:{L:E}:pushed:<host>               Unix time of its last push
    servertracker:{L:E}:tmp:<token>:<host>          one push's registers, merged then deleted
"""

from __future__ import annotations

import math
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import redis
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from servertracker.errors import TrackerError
from servertracker.fleet_key import MAX_EPOCH_SECONDS, epoch_at
from servertracker.protocol import FleetReply

PREFIX: Final = "servertracker"
#: The categories, as in the status file and the fleet reply.
CATEGORIES: Final = ("unique_conn_ips", "unique_domains", "unique_ip_servers")
#: A temporary key outlives a push that died between SET and DEL by this much at most.
TEMP_KEY_SECONDS: Final = 600
#: Host names: what a key may hold after its last colon.
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
EPOCH_SECONDS_KEY: Final = f"{PREFIX}:epoch-seconds"
#: A push time later than this (9999-12-31, datetime's limit) is not a time.
MAX_PUSHED: Final = 253402300799.0
#: At most this many characters of a Redis error text reach the terminal.
MAX_ERROR_TEXT: Final = 200


class FleetStoreError(TrackerError):
    """Redis could not do what was asked. ``reason``: "unreachable", "timeout",
    "denied", "empty" or "error"; "usage" for a URL that is not a Redis URL."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def check_host_name(host: str) -> str:
    if not HOST_NAME.fullmatch(host) or host == "hosts":
        raise ValueError("a host name is 1-63 letters, digits, '.', '_' or '-' (and not 'hosts')")
    return host


#: What `trackerctl fleet push` and `status` send (redis-py's connection set-up
#: included: AUTH, HELLO, CLIENT SETNAME); nothing that could pause or list clients.
_ACL_COMMANDS: Final = (
    "-@all +auth +hello +ping +client|setname +multi +exec +discard "
    "+get +set +del +expireat +pfmerge +pfcount +smembers"
)


def acl_rules(host: str) -> str:
    """The ACL SETUSER rules (after the user's name and password) that let a host
    read every fleet key and write only its own (Redis 7 selectors: the shared
    host set only by SADD and EXPIREAT, the epoch length only by SET)."""
    check_host_name(host)
    return (
        f"resetkeys resetchannels %R~{PREFIX}:* ~{PREFIX}:*:{host} {_ACL_COMMANDS} "
        f"(%W~{PREFIX}:*:hosts +sadd +expireat) (%W~{EPOCH_SECONDS_KEY} +set)"
    )


def _tag(epoch_seconds: int, epoch: int) -> str:
    return f"{PREFIX}:{{{epoch_seconds}:{epoch}}}"


def hosts_key(epoch_seconds: int, epoch: int) -> str:
    return f"{_tag(epoch_seconds, epoch)}:hosts"


def sketch_key(epoch_seconds: int, epoch: int, category: str, host: str) -> str:
    return f"{_tag(epoch_seconds, epoch)}:hll:{category}:{host}"


def pushed_key(epoch_seconds: int, epoch: int, host: str) -> str:
    return f"{_tag(epoch_seconds, epoch)}:pushed:{host}"


def _temp_key(epoch_seconds: int, epoch: int, host: str) -> str:
    return f"{_tag(epoch_seconds, epoch)}:tmp:{secrets.token_hex(8)}:{host}"


def redacted(url: str) -> str:
    """The URL without its password (in the user part or as the ``password`` query
    parameter), for error texts; a URL that does not parse is not echoed."""
    try:
        parts = urllib.parse.urlsplit(url)
        password = parts.password
        username = parts.username
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "an unparsable URL"
    if "@" in url and "@" not in parts.netloc:
        # An '@' outside the authority ("redis//user:pw@host", a missing colon) may
        # still end a password the parser did not see as one.
        return "an unparsable URL"
    if any(name == "password" for name, _ in query):
        masked = [(n, "***" if n == "password" else v) for n, v in query]
        parts = parts._replace(query=urllib.parse.urlencode(masked, safe="*"))
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = f"{username}:***@" if username else ":***@"
        parts = parts._replace(netloc=user + netloc)
    return urllib.parse.urlunsplit(parts)


def server_message(exc: BaseException) -> str:
    """The server's own words from a redis-py error, printable and short: without
    redis-py's echo of a pipeline's command (which holds the binary registers), with
    control characters (a terminal escape, say) escaped."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    _, marker, rest = text.partition(" of pipeline caused error: ")
    if marker:
        text = rest
    safe = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return safe if len(safe) <= MAX_ERROR_TEXT else safe[: MAX_ERROR_TEXT - 3] + "..."


#: What redis-py raises: RedisClusterException is not a RedisError.
_REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)


def _fail(exc: Exception, where: str) -> NoReturn:
    if isinstance(exc, redis.exceptions.TimeoutError):
        raise FleetStoreError("timeout", f"Redis at {where} did not answer in time") from None
    if isinstance(exc, redis.exceptions.NoPermissionError | redis.exceptions.AuthenticationError):
        text = f"Redis at {where} refused: {server_message(exc)}"
        raise FleetStoreError("denied", text) from None
    if isinstance(exc, redis.exceptions.ConnectionError):
        text = f"cannot reach Redis at {where}: {server_message(exc)}"
        raise FleetStoreError("unreachable", text) from None
    raise FleetStoreError("error", f"Redis at {where}: {server_message(exc)}") from None


#: What a reply of an unexpected type or range makes redis-py or this module raise.
_REPLY_ERRORS = (TypeError, ValueError, OverflowError, AttributeError, KeyError, IndexError)


def _bad_reply(what: str) -> NoReturn:
    raise FleetStoreError("error", f"Redis gave an unexpected reply for {what}")


#: A single Redis (or a proxy), or a Redis Cluster client: push and status use the
#: commands both have; all multi-key commands stay in one epoch's hash slot.
Client = redis.Redis | redis.cluster.RedisCluster


def check_url(url: str) -> None:
    """Raise FleetStoreError("usage") for a malformed URL, without connecting: push
    checks it before asking trackerd, so that the error is the URL's."""
    try:
        redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:  # its text may hold the URL: not echoed
        raise FleetStoreError("usage", f"not a Redis URL ({redacted(url)})") from None


@contextmanager
def connect(url: str, timeout: float, cluster: bool = False) -> Iterator[Client]:
    """A client whose every error is a FleetStoreError; no retries, one timeout.
    With ``cluster``, a Redis Cluster client that starts from the node in ``url``."""
    where = redacted(url)
    client: Client
    try:
        if cluster:
            client = redis.cluster.RedisCluster.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                client_name="trackerctl-fleet",
            )
        else:
            client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                client_name="trackerctl-fleet",
            )
    except _REDIS_ERRORS as exc:
        _fail(exc, where)
    except ValueError:  # its text may hold the URL: not echoed
        raise FleetStoreError("usage", f"not a Redis URL ({where})") from None
    try:
        yield client
    except _REDIS_ERRORS as exc:
        _fail(exc, where)
    except _REPLY_ERRORS:
        # redis-py itself choked on a reply (EXEC answered by an integer, say).
        raise FleetStoreError("error", f"Redis at {where} gave an unexpected reply") from None
    finally:
        client.close()


def push(client: Client, host: str, reply: FleetReply, now: float) -> list[int]:
    """Merge the daemon's sketches into the host's keys; the epochs pushed.

    SET to a temporary key, then PFMERGE into the host's key (so registers pushed
    before a daemon restart stay), in one MULTI per epoch (one hash slot each).
    Keys expire at the end of the epoch after theirs.
    """
    length = reply.epoch_seconds
    client.set(EPOCH_SECONDS_KEY, length)
    pushed = []
    for index, epoch in enumerate(reply.epochs):
        if index and not any(_has_registers(s) for s in epoch.sketches.values()):
            continue  # a previous epoch the daemon saw nothing of
        expire_at = (epoch.epoch + 2) * length
        pipe = client.pipeline(transaction=True)
        for category, sketch in sorted(epoch.sketches.items()):
            if category not in CATEGORIES:
                continue  # a newer daemon's category: an older status would not show it
            temp = _temp_key(length, epoch.epoch, host)
            target = sketch_key(length, epoch.epoch, category, host)
            pipe.set(temp, sketch, ex=TEMP_KEY_SECONDS)
            # As a raw command: redis-py's cluster pipeline refuses its pfmerge()
            # method, though the keys share a slot.
            pipe.execute_command("PFMERGE", target, temp)
            pipe.delete(temp)
            pipe.expireat(target, expire_at)
        pipe.sadd(hosts_key(length, epoch.epoch), host)
        pipe.expireat(hosts_key(length, epoch.epoch), expire_at)
        pipe.set(pushed_key(length, epoch.epoch, host), f"{now:.3f}", exat=expire_at)
        pipe.execute()
        pushed.append(epoch.epoch)
    return pushed


def _has_registers(sketch: bytes) -> bool:
    return any(sketch[16:])


@dataclass(frozen=True)
class EpochCounts:
    epoch: int
    start: int
    fleet: dict[str, int]
    hosts: dict[str, dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "start": self.start, "fleet": self.fleet, "hosts": self.hosts}


def status(client: Client, now: float) -> tuple[int, list[EpochCounts]]:
    """(epoch length, [current epoch, previous epoch]) with fleet and per-host counts.

    Every reply is checked for type and range: Redis, and every host that can write
    its own keys, may hold anything there. A host whose registers are not a
    HyperLogLog is named (``"invalid": true``) and left out of the fleet count.
    """
    raw = client.get(EPOCH_SECONDS_KEY)
    if raw is None:
        raise FleetStoreError("empty", "no fleet data in Redis (nothing pushed yet, or expired)")
    if not isinstance(raw, bytes) or len(raw) > 20 or not raw.strip().isdigit():
        raise FleetStoreError("error", f"{EPOCH_SECONDS_KEY} is not an integer")
    length = int(raw)
    if not 1 <= length <= MAX_EPOCH_SECONDS:
        raise FleetStoreError(
            "error", f"{EPOCH_SECONDS_KEY} is not between 1 and {MAX_EPOCH_SECONDS}"
        )
    current = epoch_at(now, length)
    if current < 1:
        raise FleetStoreError("error", f"{EPOCH_SECONDS_KEY} is longer than the time since 1970")
    return length, [_epoch_counts(client, length, e) for e in (current, current - 1)]


def _count(client: Client, *keys: str) -> int | None:
    """PFCOUNT; None if a key is not a HyperLogLog (WRONGTYPE, INVALIDOBJ)."""
    count: Callable[..., object] = client.pfcount
    try:
        value = count(*keys)
    except redis.exceptions.NoPermissionError:
        raise
    except redis.exceptions.ResponseError:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _bad_reply("PFCOUNT")
    return value


def _pushed(raw: object) -> float | None:
    """A host's last push time, or None if absent or not a time."""
    if not isinstance(raw, bytes):
        if raw is None:
            return None
        _bad_reply("GET")
    try:
        when = float(raw)
    except ValueError:
        return None
    return when if math.isfinite(when) and 0 <= when <= MAX_PUSHED else None


def _epoch_counts(client: Client, length: int, epoch: int) -> EpochCounts:
    members: object = client.smembers(hosts_key(length, epoch))
    if not isinstance(members, set | list) or not all(isinstance(m, bytes) for m in members):
        _bad_reply("SMEMBERS")
    names = sorted(name.decode(errors="replace") for name in members)
    hosts = [name for name in names if HOST_NAME.fullmatch(name)]
    per_host: dict[str, dict[str, Any]] = {h: {"counts": {}} for h in hosts}
    invalid: set[str] = set()
    for category in CATEGORIES:
        for host in hosts:
            value = _count(client, sketch_key(length, epoch, category, host))
            if value is None:
                invalid.add(host)
            else:
                per_host[host]["counts"][category] = value
    valid = [h for h in hosts if h not in invalid]
    fleet = {}
    for category in CATEGORIES:
        keys = [sketch_key(length, epoch, category, h) for h in valid]
        total = _count(client, *keys) if keys else 0
        if total is None:  # a key changed type since: counted as nothing
            raise FleetStoreError("error", "a host's registers changed while counting; retry")
        fleet[category] = total
    for host in hosts:
        per_host[host]["pushed"] = _pushed(client.get(pushed_key(length, epoch, host)))
        if host in invalid:
            per_host[host]["invalid"] = True
    return EpochCounts(epoch, epoch * length, fleet, per_host)
