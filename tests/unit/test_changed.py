"""engine/changed.py: what a checkpoint records of a mapped file, and the refusals."""

import os
import sys
from pathlib import Path

import pytest

from cryo.engine import changed


def test_build_id_of_an_elf_file() -> None:
    fd = os.open(sys.executable, os.O_RDONLY)
    try:
        bid = changed.build_id(fd)
    finally:
        os.close(fd)
    assert bid is None or 8 <= len(bid) <= 64


def test_fingerprint_sees_a_changed_byte_of_the_mapped_range(tmp_path: Path) -> None:
    """Same size and mtime, one other byte in the middle of what is mapped: refused
    (exit 12); a byte outside the mapped ranges does not matter."""
    f = tmp_path / "data"
    f.write_bytes(b"a" * (5 << 20))
    st = f.stat()
    saved = changed.fingerprint(str(f), [[4096, 3 << 20], [0, 4096]])
    assert saved["ranges"] == [[0, 4096 + (3 << 20)]]
    changed.check_fingerprint(str(f), saved, {}, "mapping")

    def poke(offset: int) -> None:
        with open(f, "r+b") as fh:
            fh.seek(offset)
            fh.write(b"b")
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))

    poke(4 << 20)  # not mapped
    changed.check_fingerprint(str(f), saved, {}, "mapping")
    poke(2 << 20)
    with pytest.raises(changed.FileChanged) as err:
        changed.check_fingerprint(str(f), saved, {}, "mapping")
    assert err.value.exit_code == 12
    assert "the bytes it maps differ (same size and mtime)" in str(err.value)
    changed.check_fingerprint(str(f), saved, {"ignore_changed": True}, "mapping")
    fd = os.open(f, os.O_RDONLY)
    try:
        assert changed.build_id(fd) is None  # not an ELF file
    finally:
        os.close(fd)


def test_fingerprint_of_a_range_past_the_end(tmp_path: Path) -> None:
    """A mapping may reach past the end of its file: only the bytes there are hashed;
    a file grown since differs by its size."""
    f = tmp_path / "data"
    f.write_bytes(b"x" * 1000)
    saved = changed.fingerprint(str(f), [[0, 8192], [1 << 20, 4096]])
    assert saved["ranges"] == [[0, 1000]] and saved["size"] == 1000
    with open(f, "ab") as fh:
        fh.write(b"y")
    with pytest.raises(changed.FileChanged, match="its size was 1000"):
        changed.check_fingerprint(str(f), saved, {}, "mapping")


def test_elf_build_id_is_compared(tmp_path: Path) -> None:
    """An executable with another build-id is another program, whatever its bytes."""
    saved = changed.fingerprint(sys.executable, [[0, 4096]])
    if "build_id" not in saved:
        pytest.skip("this python has no build-id")
    copy = tmp_path / "exe"
    copy.write_bytes(Path(sys.executable).read_bytes())
    changed.check_fingerprint(str(copy), saved, {}, "mapping")
    data = bytearray(copy.read_bytes())
    i = data.index(saved["build_id"])
    data[i] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(changed.FileChanged, match="ELF build-id"):
        changed.check_fingerprint(str(copy), saved, {}, "mapping")
