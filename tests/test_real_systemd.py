"""The shipped units under a real systemd (PID 1), in a systemd-nspawn container.

One boot runs every check (tests/container_checks.py) and powers off; each test
here asserts one check's outcome, so a failure names what broke. Where the
container cannot be had (not root, no systemd-nspawn or debootstrap), the tests
skip and say why; CI installs both and runs as root.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import systemd_container

CHECKS = (
    "install_as_documented",
    "socket_listening_before_first_use",
    "socket_activation",
    "runtime_directory_owners",
    "group_members_record_others_cannot",
    "allow_list_under_unit_user_namespace",
    "reload_keeps_daemon_and_counts",
    "watchdog_is_fed",
    "journald_priorities",
    "stop_under_socket_activation",
    "no_failed_units",
)


@pytest.fixture(scope="module")
def container_results() -> Iterator[dict[str, dict[str, object]]]:
    missing = systemd_container.missing_prerequisite()
    if missing:
        pytest.skip(missing)
    work = Path(tempfile.mkdtemp(prefix="st-nspawn-", dir="/var/tmp"))
    try:
        root = systemd_container.root_filesystem()
        wheelhouse = systemd_container.build_wheelhouse(work / "wheelhouse")
        boot = systemd_container.boot_and_check(root, wheelhouse, work / "results", timeout=600)
        results_file = boot.results_dir / "results.json"
        if not results_file.is_file():
            pytest.fail(
                f"the checks wrote no results (nspawn exited {boot.returncode}):\n"
                f"{boot.console[-6000:]}"
            )
        results = json.loads(results_file.read_text())
        log = (boot.results_dir / "checks.log").read_text(errors="replace")
        results["_log"] = {"ok": True, "detail": log}
        yield results
    finally:
        shutil.rmtree(work, ignore_errors=True)


# One boot installs the project and runs every check: minutes on a loaded machine.
# Under pytest-xdist every test here runs in the worker that booted the container once.
pytestmark = [pytest.mark.timeout(1200), pytest.mark.xdist_group("real_systemd")]


@pytest.mark.parametrize("name", CHECKS)
def test_under_real_systemd(container_results: dict[str, dict[str, object]], name: str) -> None:
    assert name in container_results, f"check {name} did not run"
    outcome = container_results[name]
    log = str(container_results["_log"]["detail"])
    assert outcome["ok"], f"{name}: {outcome['detail']}\n--- its log ---\n{own_log(log, name)}"


def own_log(log: str, name: str) -> str:
    """The lines the check `name` logged (between its "=== name" and its verdict), so a
    failure shows its own commands and outputs, not the later checks' tail."""
    start = log.find(f"=== {name}\n")
    end = log.find(f"=== {name}: ", start + 1)
    if start < 0 or end < 0:
        return log[-6000:]
    return log[start:end][-6000:]


def test_every_check_is_asserted(container_results: dict[str, dict[str, object]]) -> None:
    """A check added to container_checks.py must be asserted here too."""
    ran = {name for name in container_results if not name.startswith("_")}
    assert ran <= set(CHECKS) | {"checks_script"}, ran - set(CHECKS)
    assert "checks_script" not in ran, container_results.get("checks_script")
