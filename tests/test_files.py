"""lcplm.files: the one atomic-write helper."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from lcplm import files
from lcplm.errors import UserError


def test_replaces_whole_file_and_leaves_no_temp(tmp_path: Path):
    p = tmp_path / "sub" / "x.txt"
    files.atomic_write_text(p, "one")
    files.atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [q.name for q in p.parent.iterdir()] == ["x.txt"]


def test_temp_names_differ_between_calls():
    assert files.temp_path("/a/b.ckpt") != files.temp_path("/a/b.ckpt")
    assert files.temp_path("/a/b.ckpt").parent == Path("/a")


def test_failed_write_keeps_the_old_file(tmp_path: Path):
    p = tmp_path / "x.bin"
    files.atomic_write_bytes(p, b"good")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        files.atomic_write_with(p, boom)
    assert p.read_bytes() == b"good"
    assert [q.name for q in tmp_path.iterdir()] == ["x.bin"]


def test_disk_full_is_one_user_error_naming_the_path(tmp_path: Path):
    p = tmp_path / "x.bin"
    files.atomic_write_bytes(p, b"good")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UserError, match=r"no space left on the device writing .*x\.bin.*previous file.*intact"):
        files.atomic_write_with(p, full)
    assert p.read_bytes() == b"good"
