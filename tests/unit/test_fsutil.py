from __future__ import annotations

import os

import pytest

from edgekit.fsutil import write_atomic, write_bytes_atomic


def test_replaces_whole_file_with_ordinary_mode(tmp_path):
    path = tmp_path / "sub" / "report.json"
    write_bytes_atomic(path, b"old")
    write_bytes_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]


def test_failed_write_keeps_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "weights.bin"
    write_bytes_atomic(path, b"complete")

    def half_then_fail(tmp):
        tmp.write_bytes(b"par")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]
