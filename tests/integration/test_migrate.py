"""Migration (issue 13): stream images, `cryo migrate` / `cryo receive` between two
"hosts" (network namespaces joined by a veth pair, each with its own mount namespace and
its own /tmp), pre-copy, a cut connection, a wrong secret."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

from cryo.engine.dump import checkpoint
from cryo.engine.restore import restart
from cryo.image import records as R
from cryo.image.reader import Image
from cryo.image.stream import Channel, Framer, StreamSink, StreamSource
from tests.conftest import Procs, Victim, reap

VOLATILE = {R.HEAD, R.PBLK, b"MADE", b"SIDE", b"SEAL", b"END "}


def _stream_checkpoint(pid: int, **kw: Any) -> StreamSource:
    """Checkpoint ``pid`` into a stream over a socketpair, received into memory."""
    a, b = socket.socketpair()
    got: list[Any] = []

    def receive() -> None:
        try:
            got.append(StreamSource(Framer(Channel(b, name="test stream")), path="test"))
        except BaseException as err:
            got.append(err)

    th = threading.Thread(target=receive)
    th.start()
    try:
        checkpoint(pid, lambda: StreamSink(Framer(Channel(a, name="test stream"))), **kw)
    finally:
        a.close()
        th.join(30)
        b.close()
    if isinstance(got[0], BaseException):
        raise got[0]
    src: StreamSource = got[0]
    return src


def _pages(image: Any) -> dict[int, bytes]:
    out = {}
    for b in image.blocks:
        buf, off = image.block_data(b)
        view = memoryview(buf)
        for a, n in b["runs"]:
            for p in range(0, n, 4096):
                out[a + p] = bytes(view[off + p : off + p + 4096])
            off += n
    return out


def test_stream_image_same_as_directory(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A process asleep between two checkpoints: the stream holds the same records as
    the directory image (but HEAD's time and the per-image records) and the same pages."""
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt"), "600000"],
                    tmp_path / "out.txt")
    v.wait_line("tick 0")
    checkpoint(v.pid, str(tmp_path / "warm"))  # from here it sleeps in restart_syscall
    checkpoint(v.pid, str(tmp_path / "img"))
    src = _stream_checkpoint(v.pid)
    img = Image(str(tmp_path / "img"))
    try:
        def records(recs: list[Any]) -> list[tuple[bytes, Any]]:
            return [(r.kind, r.payload) for r in recs if r.kind not in VOLATILE]

        assert records(src.core_records) == records(img.core_records)
        assert src.head["pids"] == img.head["pids"]
        img.verify()
        src.verify()
        # (below its stack pointer the stack holds what cryo's injected calls left)
        stack = [(m["start"], m["end"]) for m in img.raw(R.MM)[0]["vmas"]
                 if m["path"] == "[stack]"]  # fmt: skip
        a, b = _pages(src), _pages(img)
        assert a.keys() == b.keys()
        assert {k for k in a if a[k] != b[k]} <= {k for k in a for s, e in stack if s <= k < e}
    finally:
        img.close()
        src.close()


def test_restart_from_stream(procs: Procs, build: Any, tmp_path: Path) -> None:
    """Checkpoint into a stream, kill, restart from the stream held in memory: it goes on."""
    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(2)
    src = _stream_checkpoint(v.pid, signal_after=signal.SIGKILL)
    last = max(v.oks())
    reap(v.pid)
    rr = restart(src)
    procs.track(rr.pid)
    new = Victim(rr.pid, v.out)
    new.wait_ok_after(last + 1)
    assert not new.fails()


def test_stream_tampered_frame_refused(procs: Procs, build: Any, tmp_path: Path) -> None:
    """A byte changed in flight: the frame does not authenticate (exit 5), and the
    process goes on untouched."""
    from cryo.errors import ImageCorrupt

    v = procs.spawn([build("counter"), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(1)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    got: list[Any] = []

    def relay() -> None:  # a man in the middle: flips one byte of the 3rd KiB
        n = 0
        while chunk := b.recv(1 << 16):
            buf = bytearray(chunk)
            if n <= 3000 < n + len(buf):
                buf[3000 - n] ^= 1
            n += len(buf)
            c.sendall(buf)
        c.close()

    def receive() -> None:
        try:
            got.append(StreamSource(Framer(Channel(d, name="mitm")), path="test"))
        except BaseException as err:
            got.append(err)

    threads = [threading.Thread(target=relay), threading.Thread(target=receive)]
    for t in threads:
        t.start()
    try:
        checkpoint(v.pid, lambda: StreamSink(Framer(Channel(a))))
    finally:
        a.close()
        for t in threads:
            t.join(30)
        b.close()
        d.close()
    assert isinstance(got[0], ImageCorrupt), got
    assert "does not authenticate" in str(got[0])
    v.wait_ok_after(max(v.oks()) + 1)
