"""manifests.atomic: a reader sees the old file or the whole new one; a failed write leaves nothing behind."""
from __future__ import annotations

import pytest

from manifests.atomic import TMP_PREFIX, atomic_open, atomic_write_bytes, atomic_write_text


def test_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text("one", path)
    atomic_write_text("two", path)
    assert path.read_text() == "two"
    atomic_write_bytes(b"\x00\x01", path)
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failure_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(b"old", path)
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path) as f:
            f.write(b"half of the new")
            assert any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_only_whole_file_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "a", "ab"):
            pass
