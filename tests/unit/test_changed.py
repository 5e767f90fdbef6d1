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


def test_fingerprint_sees_a_changed_last_page(tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(b"a" * 10000)
    saved = changed.fingerprint(str(f))
    changed.check_fingerprint(str(f), saved, {}, "mapping")
    with open(f, "r+b") as fh:
        fh.seek(9999)
        fh.write(b"b")
    with pytest.raises(changed.FileChanged) as err:
        changed.check_fingerprint(str(f), saved, {}, "mapping")
    assert err.value.exit_code == 12
    assert "first and last pages" in str(err.value)
    changed.check_fingerprint(str(f), saved, {"ignore_changed": True}, "mapping")
    fd = os.open(f, os.O_RDONLY)
    try:
        assert changed.build_id(fd) is None  # not an ELF file
    finally:
        os.close(fd)
