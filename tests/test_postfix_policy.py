"""Postfix policy delegation: the sans-IO parser, and the listener on a real daemon."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from servertracker.connection import DaemonConnection
from tests.conftest import Daemon, read_policy_reply, wait_for
from trackerd.core.policy_protocol import (
    DUNNO_RESPONSE,
    MAX_LINE,
    MAX_REQUEST,
    NEED_DATA,
    USED_ATTRIBUTES,
    PolicyDecoder,
    PolicyProtocolError,
    Request,
)

REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nclient_name=mail.example.com\nhelo_name=mail.example.com\n"
    b"sender=user@example.com\nrecipient=rcpt@example.net\ninstance=123.4567.1\n"
    b"size=12345\nccert_subject=\n\n"
)


def as_dict(request: Request) -> dict[str, str]:
    """A request's values by name, the absent ones left out."""
    pairs = zip(USED_ATTRIBUTES, request, strict=True)
    return {name: value for name, value in pairs if value is not None}


def parse_all(data: bytes, chunk: int | None = None) -> list[dict[str, str]]:
    decoder = PolicyDecoder()
    requests = []
    step = chunk or max(1, len(data))
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        while (request := decoder.next_request()) is not NEED_DATA:
            assert isinstance(request, tuple)
            requests.append(as_dict(request))
    return requests


@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_parses_a_request_whole_or_byte_by_byte_keeping_only_what_is_used(
    chunk: int | None,
) -> None:
    (request,) = parse_all(REQUEST, chunk)
    # docs/postfix.md: every other attribute is dropped as it is parsed.
    assert request == {
        "client_address": "192.0.2.1",
        "sender": "user@example.com",
        "instance": "123.4567.1",
    }


def test_attribute_order_is_free_and_unknown_ones_are_dropped() -> None:
    (request,) = parse_all(b"future_attribute=x=y\nsender=<>\nclient_address=::1\n\n")
    assert request == {"sender": "<>", "client_address": "::1"}


def test_dropped_attributes_must_still_be_well_formed() -> None:
    with pytest.raises(PolicyProtocolError):
        parse_all(b"sender=a@b.example\nrecipient\n\n")


def test_missing_attributes_are_simply_absent() -> None:
    (request,) = parse_all(b"request=smtpd_access_policy\n\n")
    assert "sender" not in request and "client_address" not in request


def test_many_requests_on_one_connection() -> None:
    assert len(parse_all(REQUEST * 50, 7)) == 50


def request_of_size(size: int) -> bytes:
    """A request whose attribute lines are size bytes in all (newlines included),
    each line within MAX_LINE; then the empty line that ends it."""
    lines = [b"client_address=192.0.2.1\n", b"sender=a@big.example\n"]
    left = size - sum(map(len, lines))
    while left:
        length = left if left <= MAX_LINE else min(MAX_LINE, left - 100)
        prefix = b"x%d=" % len(lines)
        lines.append(prefix + b"y" * (length - len(prefix) - 1) + b"\n")
        left -= length
    data = b"".join(lines)
    assert len(data) == size and all(len(line) <= MAX_LINE + 1 for line in lines)
    return data + b"\n"


def test_a_request_may_be_64_kib_and_no_more() -> None:
    assert MAX_REQUEST == 64 * 1024  # docs/postfix.md
    (request,) = parse_all(request_of_size(MAX_REQUEST))
    assert request == {"client_address": "192.0.2.1", "sender": "a@big.example"}
    with pytest.raises(PolicyProtocolError, match="request too large"):
        parse_all(request_of_size(MAX_REQUEST + 1))


def test_crlf_is_tolerated() -> None:
    (request,) = parse_all(b"sender=a@b.example\r\n\r\n")
    assert request == {"sender": "a@b.example"}


@pytest.mark.parametrize(
    "data",
    [
        b"\n",  # an empty request
        b"no equals sign\n\n",
        b"=value\n\n",
        b"sender=" + b"x" * (MAX_LINE + 10) + b"\n\n",
        b"sender=" + b"x" * (MAX_LINE + 10),  # too long, and no newline yet
        b"".join(b"a%d=b\n" % i for i in range(300)) + b"\n",  # too many attributes
    ],
)
def test_malformed_or_over_long_requests(data: bytes) -> None:
    with pytest.raises(PolicyProtocolError):
        parse_all(data)


def test_closed_mid_request_and_closed_cleanly() -> None:
    decoder = PolicyDecoder()
    decoder.receive_data(b"sender=a@b.example\n")
    assert decoder.next_request() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(PolicyProtocolError):
        decoder.next_request()
    clean = PolicyDecoder()
    clean.receive_data(REQUEST)
    assert clean.next_request() == ("192.0.2.1", "user@example.com", "123.4567.1")
    clean.receive_data(b"")
    assert clean.next_request() is NEED_DATA and clean.closed_cleanly


def test_undecodable_bytes_do_not_raise() -> None:
    (request,) = parse_all(b"sender=\xff\xfe@example.com\n\n")
    assert "\ufffd" in request["sender"]


# --- the listener, on a real daemon -------------------------------------------------


def policy_daemon(make_daemon: Callable[..., Daemon], short_tmp: Path) -> tuple[Daemon, Path]:
    path = short_tmp / "policy.sock"
    daemon = make_daemon(extra_args=["--postfix-policy-socket", str(path)]).start()
    return daemon, path


def connect_policy(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def connect_once_listening(path: Path) -> socket.socket | None:
    """Connect, or None while the socket file is missing or not yet listening.

    A socket file appears at bind(), a moment before listen(): its existence
    alone does not mean a connection will be accepted.
    """
    try:
        return connect_policy(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def ask(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    return read_policy_reply(sock)


def policy_request(
    client: str, sender: str, instance: str, recipient: str = "r@example.net"
) -> bytes:
    return (
        f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={client}\n"
        f"sender={sender}\nrecipient={recipient}\ninstance={instance}\n\n"
    ).encode()


def test_listener_answers_dunno_and_records(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = policy_daemon(make_daemon, short_tmp)
    with connect_policy(path) as sock:
        # One message, three recipients: one record.
        for rcpt in ("a", "b", "c"):
            assert (
                ask(
                    sock, policy_request("192.0.2.1", "user@example.com", "i1", f"{rcpt}@x.example")
                )
                == DUNNO_RESPONSE
            )
        assert ask(sock, policy_request("192.0.2.2", "", "i2")) == DUNNO_RESPONSE  # null sender
        assert ask(sock, policy_request("2001:db8::5", "x@[192.0.2.9]", "i3")) == DUNNO_RESPONSE
    status = daemon.status()
    assert (status.unique_conn_ips, status.unique_domains, status.unique_ip_servers) == (3, 1, 1)
    assert status.records == 3


def test_a_request_without_instance_is_recorded_every_time(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = policy_daemon(make_daemon, short_tmp)
    without = b"request=smtpd_access_policy\nclient_address=192.0.2.1\nsender=a@b.example\n\n"
    with connect_policy(path) as sock:
        for _ in range(3):
            assert ask(sock, without) == DUNNO_RESPONSE
        # An empty instance is no instance either.
        assert ask(sock, policy_request("192.0.2.1", "a@b.example", "")) == DUNNO_RESPONSE
        assert ask(sock, policy_request("192.0.2.1", "a@b.example", "")) == DUNNO_RESPONSE
    status = daemon.status()
    assert status.records == 5
    assert (status.unique_conn_ips, status.unique_domains) == (1, 1)


def test_a_request_over_64_kib_closes_without_a_reply(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = policy_daemon(make_daemon, short_tmp)
    with connect_policy(path) as sock:
        assert ask(sock, request_of_size(MAX_REQUEST)) == DUNNO_RESPONSE  # at the cap: served
    with connect_policy(path) as sock:
        sock.sendall(request_of_size(MAX_REQUEST + 1))
        assert sock.recv(100) == b""  # closed, no answer: Postfix applies default_action
    wait_for(lambda: "request too large" in daemon.log(), what="the log line")
    assert daemon.status().records == 1


def test_malformed_request_closes_without_a_reply(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    daemon, path = policy_daemon(make_daemon, short_tmp)
    with connect_policy(path) as sock:
        sock.sendall(b"this is not a policy request\n\n")
        assert sock.recv(100) == b""
    wait_for(lambda: "closing a Postfix policy connection" in daemon.log(), what="the log line")
    assert daemon.status().records == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:  # others still served
        sock.settimeout(10)
        sock.connect(str(path))
        assert ask(sock, policy_request("192.0.2.1", "a@b.example", "i9")) == DUNNO_RESPONSE


def test_each_malformed_request_is_counted_once(
    make_daemon: Callable[..., Daemon], short_tmp: Path
) -> None:
    # docs/postfix.md: every one is counted in protocol_errors, under policy. (The
    # connection's close used to parse what it held again, and count it twice.)
    daemon, path = policy_daemon(make_daemon, short_tmp)
    malformed = [
        b"no equals sign\n\n",  # one read: the decoder's short way
        b"sender=a@b.example\n=value\n\n",
        b"sender=" + b"x" * (MAX_LINE + 10),  # too long before its end
        policy_request("192.0.2.1", "a@b.example", "i1") + b"bad line\n\n",  # after a good one
    ]
    for data in malformed:
        with connect_policy(path) as sock:
            sock.sendall(data)
            replies = b""
            while chunk := sock.recv(100):  # closed after the good one's answer, if any
                replies += chunk
            assert replies in (b"", DUNNO_RESPONSE)
    health = daemon.status().health
    assert health is not None
    assert health.protocol_errors == {"policy": len(malformed)}
    assert daemon.status().records == 1


def test_policy_listener_is_off_by_default(daemon: Daemon) -> None:
    assert "Postfix policy" not in daemon.log()
    assert [p.name for p in daemon.runtime_dir.iterdir() if p.is_socket()] == ["trackerd.sock"]


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
def test_both_sockets_passed_by_socket_activation(short_tmp: Path) -> None:
    main, policy = short_tmp / "main.sock", short_tmp / "policy.sock"
    command = [
        "systemd-socket-activate", "-l", str(main), "-l", str(policy),
        "--fdname=trackerd:postfix-policy",
        sys.executable, "-m", "trackerd", "--runtime-dir", str(short_tmp / "rt"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        # The first connection makes the activator start trackerd.
        with wait_for(lambda: connect_once_listening(policy), what="the activator") as sock:
            sock.settimeout(20)
            assert ask(sock, policy_request("192.0.2.1", "a@example.com", "i1")) == DUNNO_RESPONSE
        with DaemonConnection(main, timeout=10) as conn:
            assert conn.status().unique_domains == 1
        process.terminate()
        _, err = process.communicate(timeout=20)
        assert "Postfix policy requests on a socket passed by systemd" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
