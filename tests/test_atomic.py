"""Atomic writes leave the old file or the new one, never a torn one or a stray temp file."""

import pytest

from fastconv.atomic import atomic_write, atomic_write_text


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "history.csv"
    target.write_text("old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["history.csv"]


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "best.pt"
    target.write_bytes(b"previous checkpoint")
    with pytest.raises(RuntimeError, match="killed"), atomic_write(target, "wb") as f:
        f.write(b"half a checkpo")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
