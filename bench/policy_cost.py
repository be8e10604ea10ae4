"""Daemon CPU per Postfix policy request: ``python -m bench.policy_cost``.

Forked clients, each one connection, ask one request at a time as smtpd does
(a full Postfix 3 attribute set, a new message each time, so every request is
recorded), and wait for each answer. The daemon's CPU time (utime + stime from
/proc) is divided by the requests answered; a run without requests is not
subtracted (the daemon is idle then).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

from bench._support import BenchDaemon, table
from bench.compare import cpu_seconds, loadavg

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


def client(path: str, worker: int, requests: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        for n in range(requests):
            ip = f"10.{worker}.{n // 256 % 256}.{n % 256}"
            sock.sendall(ATTRIBUTES.format(ip=ip, n=n % 5000, w=worker).encode())
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise RuntimeError("the daemon closed the connection")
                reply += chunk


def one_run(clients: int, requests: int) -> tuple[float, float]:
    daemon = BenchDaemon()
    path = daemon.dir / "policy.sock"
    daemon.extra_args = ["--postfix-policy-socket", str(path)]
    daemon.start()
    try:
        assert daemon.process is not None
        before = cpu_seconds(daemon.process.pid)
        start = time.perf_counter()
        pids = []
        for w in range(clients):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    client(str(path), w, requests)
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        for pid in pids:
            assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(daemon.process.pid) - before
        assert daemon.status().records == clients * requests
        total = clients * requests
        return cpu * 1e6 / total, total / elapsed
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5000, help="per client")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = [one_run(args.clients, args.requests) for _ in range(args.rounds)]
    cpu = statistics.median(r[0] for r in runs)
    rate = statistics.median(r[1] for r in runs)
    print(f"load average {loadavg()}")
    print(table(["Postfix policy requests", "daemon CPU µs/request", "requests/s"],
                [[f"{args.clients} connections x {args.requests:,}", f"{cpu:.1f}",
                  f"{rate:,.0f}"]]))  # fmt: skip


if __name__ == "__main__":
    main()
