"""The batch routine's bytes in cryo.engine.inject are batch.S assembled."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cryo.engine import inject

SOURCE = Path(inject.__file__).with_name("batch.S")


@pytest.mark.skipif(not shutil.which("as") or not shutil.which("objcopy"), reason="binutils")
def test_bytes_are_the_source_assembled(tmp_path: Path) -> None:
    obj, raw = tmp_path / "batch.o", tmp_path / "batch.bin"
    subprocess.run(["as", str(SOURCE), "-o", str(obj)], check=True, timeout=60)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True,
                   timeout=60)  # fmt: skip
    code = raw.read_bytes()
    assert code[: len(inject.BATCH_CODE)] == inject.BATCH_CODE
    assert code[len(inject.BATCH_CODE) :].strip(b"\0") == b""
    # the labels the Python side relies on
    syms = subprocess.run(["nm", str(obj)], check=True, capture_output=True, text=True,
                          timeout=60).stdout  # fmt: skip
    addr = {line.split()[2]: int(line.split()[0], 16) for line in syms.splitlines()}
    assert addr["back"] == inject.BATCH_BACK
    assert (addr["resume"], addr["header"]) == (0x200, 0x300)
    assert inject.BATCH_MAX * 64 + 0x320 <= inject.BATCH_REGION
