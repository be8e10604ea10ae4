"""The status file: the seed's format, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from servertracker import STATUS_FILE_NAME, Status, StatusFileError, read_status_file
from tests.conftest import run_as_nobody
from trackerd.edges.status_writer import remove_leftover_temp_files, write_status_file

STATUS = Status(
    boot_time=100,
    unique_conn_ips=3,
    unique_domains=2,
    unique_ip_servers=1,
    updated_time=123.5,
    records=9,
    rejected_conn_ips=1,
    rejected_senders=2,
)


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    write_status_file(tmp_path, STATUS)
    assert read_status_file(tmp_path) == STATUS
    path = tmp_path / STATUS_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE_NAME]


def test_the_seed_field_names_are_kept(tmp_path: Path) -> None:
    write_status_file(tmp_path, STATUS)
    data = json.loads((tmp_path / STATUS_FILE_NAME).read_text())
    # What the Go original's Status struct reads: these names, integer values.
    for name in ("boot_time", "unique_conn_ips", "unique_domains", "unique_ip_servers"):
        assert type(data[name]) is int


def test_a_file_written_by_the_seed_reads(tmp_path: Path) -> None:
    (tmp_path / STATUS_FILE_NAME).write_text(
        '{"boot_time":1700000000,"unique_conn_ips":5,"unique_domains":4,"unique_ip_servers":1}'
    )
    status = read_status_file(tmp_path)
    assert (
        status.boot_time,
        status.unique_conn_ips,
        status.unique_domains,
        status.unique_ip_servers,
    ) == (1700000000, 5, 4, 1)
    assert status.records == 0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not valid JSON"),
        (b'{"boot_time": 1, "unique_conn', "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"boot_time": 1}', "missing field 'unique_conn_ips'"),
        (
            b'{"boot_time": "x", "unique_conn_ips": 0, "unique_domains": 0, "unique_ip_servers": 0}',  # noqa: E501
            "boot_time",
        ),
        (
            b'{"boot_time": 1, "unique_conn_ips": -1, "unique_domains": 0, "unique_ip_servers": 0}',
            "unique_conn_ips",
        ),
        (
            b'{"boot_time": 1, "unique_conn_ips": true, "unique_domains": 0, "unique_ip_servers": 0}',  # noqa: E501
            "unique_conn_ips",
        ),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[" * 50000, "not valid JSON"),
        (b" " * 70000, "larger than"),
    ],
)
def test_corrupt_files_give_a_clear_error_naming_the_path(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    (tmp_path / STATUS_FILE_NAME).write_bytes(content)
    with pytest.raises(StatusFileError) as info:
        read_status_file(tmp_path)
    assert str(tmp_path / STATUS_FILE_NAME) in str(info.value)
    assert reason in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StatusFileError, match="no such file") as info:
        read_status_file(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / STATUS_FILE_NAME) in str(info.value)


def test_unreadable_file(short_tmp: Path) -> None:
    short_tmp.chmod(0o755)
    write_status_file(short_tmp, STATUS)
    (short_tmp / STATUS_FILE_NAME).chmod(0)

    def read_it() -> int:
        try:
            read_status_file(short_tmp)
        except StatusFileError as exc:
            return 0 if "permission denied" in str(exc) else 2
        return 1

    # root reads any file: read it as nobody then.
    assert (run_as_nobody(read_it) if os.getuid() == 0 else read_it()) == 0


def test_leftover_temp_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / f".{STATUS_FILE_NAME}.abc123.tmp").write_text("{")
    (tmp_path / "unrelated.tmp").write_text("keep")
    assert remove_leftover_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated.tmp"]


def test_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_status_file(tmp_path / "missing-dir", STATUS)
    assert list(tmp_path.iterdir()) == []
