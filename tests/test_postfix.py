"""A real Postfix feeding trackerd through policy delegation (check_policy_service).

The test runs its own Postfix instance: configuration, queue and data directories
under a temp dir, smtpd on a loopback port, nothing chrooted, stopped afterwards.
XCLIENT (allowed for loopback) gives each message the client address the test
chooses. Recipients are accepted after the policy check and DATA is refused, so
nothing is ever queued for delivery.
"""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, trackerctl, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("postfix") is None or os.getuid() != 0,
    reason="needs Debian's postfix package and root to start a Postfix instance",
)

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60  1 pickup
cleanup   unix  n - n -   0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -   - trivial-rewrite
bounce    unix  - - n -   0 bounce
defer     unix  - - n -   0 bounce
trace     unix  - - n -   0 bounce
verify    unix  - - n -   1 verify
proxymap  unix  - - n -   - proxymap
anvil     unix  - - n -   1 anvil
scache    unix  - - n -   1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = trackerd-test.localdomain
mydestination =
relay_domains = example.net
inet_interfaces = 127.0.0.1
inet_protocols = all
mynetworks = 127.0.0.0/8
# XCLIENT is authorised by the current client address, which XCLIENT itself changes:
# the test's addresses may send it too, so one session serves many messages.
smtpd_authorized_xclient_hosts = 127.0.0.0/8, 203.0.113.0/24, [2001:db8::]/32
smtputf8_enable = yes
smtpd_relay_restrictions = reject_unauth_destination
# A generous timeout: a late answer on a busy machine must not make Postfix drop the
# connection and ask again on a new one (and the test count a message twice).
smtpd_recipient_restrictions =
    check_policy_service {{ unix:{policy}, timeout=60s, default_action=DUNNO }}, permit
smtpd_data_restrictions = reject
# Each refused DATA is an error; a test session sends hundreds, and must not be slowed.
smtpd_error_sleep_time = 0
smtpd_peername_lookup = no
smtpd_soft_error_limit = 10000
smtpd_hard_error_limit = 10000
smtpd_junk_command_limit = 100000
# Flow control: each message smtpd opens takes a token that qmgr returns when it
# delivers one. Nothing is ever delivered here, so after about a hundred messages
# every new one would wait in_flow_delay (1s) for a token that never comes.
in_flow_delay = 0
maillog_file_prefixes = {dir}
maillog_file = {dir}/maillog
alias_maps =
alias_database =
local_recipient_maps =
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostfixInstance:
    def __init__(self, policy_socket: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
        self.dir.chmod(0o755)  # smtpd runs as the postfix user
        self.port = free_port()
        (self.dir / "etc").mkdir()
        (self.dir / "spool").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", "postfix")
        (self.dir / "etc" / "main.cf").write_text(
            MAIN_CF.format(dir=self.dir, policy=policy_socket)
        )
        (self.dir / "etc" / "master.cf").write_text(MASTER_CF.format(port=self.port))

    def postfix(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.dir / "etc"), command], capture_output=True, text=True
        )

    def start(self) -> None:
        result = self.postfix("start")
        assert result.returncode == 0, self.log()

        def accepts() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                return False

        wait_for(accepts, 30, "Postfix's smtpd to accept connections")

    def stop(self) -> None:
        self.postfix("stop")
        deadline = time.monotonic() + 30
        while (self.dir / "data" / "master.lock").exists() and self.postfix(
            "status"
        ).returncode == 0:
            if time.monotonic() > deadline:
                self.postfix("abort")
                break
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.dir / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def postfix_and_trackerd(short_tmp: Path) -> Iterator[tuple[PostfixInstance, Daemon]]:
    short_tmp.chmod(0o755)
    policy = short_tmp / "policy.sock"
    daemon = Daemon(short_tmp / "rt", extra_args=["--postfix-policy-socket", str(policy)]).start()
    shutil.chown(policy, "postfix")  # what SocketUser=postfix does under systemd
    instance = PostfixInstance(policy)
    try:
        instance.start()
        yield instance, daemon
    finally:
        instance.stop()
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait(10)


# 40 IPv4 and 5 IPv6 client addresses; the senders every client cycles through.
CLIENTS = [f"203.0.113.{n}" for n in range(1, 41)] + [f"2001:db8::{n:x}" for n in range(1, 6)]
SENDERS = [
    "alice@example.com",
    "<Bob@EXAMPLE.COM>",
    "carol@mail.example.org",
    "dave@example.org.",
    "erin@xn--bcher-kva.de",
    "frank@Bücher.de",  # the same domain, in Unicode (SMTPUTF8)
    "postmaster@[192.0.2.10]",
    "x@[IPv6:2001:DB8:0::10]",
    "y@[192.0.2.11]",
    "",  # the null sender
]
EXPECTED_DOMAINS = 4  # example.com, mail.example.org, example.org, bücher.de
EXPECTED_IP_SERVERS = 3


def send_messages(port: int, worker: int, workers: int) -> None:
    """One SMTP session per client address; XCLIENT gives the session that address."""
    for n, client in enumerate(CLIENTS):
        if n % workers != worker:
            continue
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
            for m, sender in enumerate(SENDERS):
                smtp.ehlo()
                address = f"IPV6:{client}" if ":" in client else client
                # NAME given, so that smtpd does no reverse lookup (no DNS here).
                code, _ = smtp.docmd("XCLIENT", f"ADDR={address} NAME=[UNAVAILABLE]")
                assert code == 220, code  # a new session, as if from that client
                smtp.ehlo()
                smtp.mail(sender, [] if sender.isascii() else ["SMTPUTF8"])
                for k in range(1 + m % 3):  # up to three recipients: one policy request each
                    code, _ = smtp.rcpt(f"r{k}@example.net")
                    assert code == 250, code
                code, _ = smtp.docmd("DATA")
                assert code == 554  # refused by smtpd_data_restrictions: nothing is queued
                smtp.rset()


def test_postfix_feeds_trackerd(postfix_and_trackerd: tuple[PostfixInstance, Daemon]) -> None:
    instance, daemon = postfix_and_trackerd
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=send_messages, args=(instance.port, w, 3)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
        assert worker.exitcode == 0, instance.log()[-3000:]
    messages = len(CLIENTS) * len(SENDERS)

    def status() -> dict[str, object]:
        result = trackerctl(
            "status", "--json", "--timeout", "60", "--runtime-dir", str(daemon.runtime_dir)
        )
        assert result.returncode == 0, result.stderr
        data: dict[str, object] = json.loads(result.stdout)
        return data

    data = wait_for(lambda: (s := status())["records"] == messages and s, 60, "every message")
    assert data["unique_conn_ips"] == len({ipaddress.ip_address(c) for c in CLIENTS})
    assert data["unique_domains"] == EXPECTED_DOMAINS
    assert data["unique_ip_servers"] == EXPECTED_IP_SERVERS
    assert data["rejected_conn_ips"] == 0 and data["rejected_senders"] == 0
    # records == messages above: one record per message, although Postfix asked once
    # per recipient (two thirds of the messages have two or three).
