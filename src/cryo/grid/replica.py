"""A part's image replicated to another host: streamed to that host's agent over the
migration's authenticated stream (cryo.migrate: the shared secret's challenge-response,
then frames keyed in each direction; cryo.image.stream), written there aside and
renamed into its store.  docs/protocol.md, "Grid".

After the handshake (cryo.migrate.auth; the sender's HELO says ``grid-replica``)::

    sender   REPL {app, version, part, files: [[name, size, mode, mtime_ns], ...]}
    sender   FILE {name, offset} + bytes     each file in order, in parts of 4 MiB
    sender   DONE {bytes}
    receiver OKAY {path}                     written to STORE/APP/vV/partN
          or FAIL {error, code}              (nothing is left there)

The image's files go as they are (their seals and checksums with them: the receiving
host restarts the replica as an image of its own when the hosts share the image key,
as every grid host does).  Only regular files in the image's directory tree are sent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

from cryo.errors import CryoError
from cryo.image.stream import Channel, Framer

log = logging.getLogger(__name__)
CHUNK = 4 << 20
KIND = "grid-replica"
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


def image_files(image: str) -> list[tuple[str, int, int, int]]:
    """(relative name, size, mode, mtime_ns) of every file of image directory
    ``image``; anything but a regular file or a directory is refused."""
    out = []
    for root, dirs, files in os.walk(image):
        dirs.sort()
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in [*sorted(files), *links]:  # (a link to a directory: refused)
            path = os.path.join(root, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                raise CryoError(f"image {image}: {path} is not a regular file: not replicated",
                                path=path)  # fmt: skip
            out.append((os.path.relpath(path, image), st.st_size, stat.S_IMODE(st.st_mode),
                        st.st_mtime_ns))  # fmt: skip
    return out


def send(image: str, to: str, secret: bytes, app: str, version: int, part: int,
         timeout: float = 60.0) -> str:  # fmt: skip
    """Stream image directory ``image`` to the agent at ``to`` (ADDR:PORT); returns
    where it was written there.  CryoError if it was not (the receiver keeps nothing)."""
    from cryo.migrate import auth
    from cryo.migrate.sender import connect

    files = image_files(image)
    channel, _ = connect(to, timeout=timeout)
    framer = Framer(channel)
    try:
        auth.client(framer, secret, {"kind": KIND})
        framer.send(b"REPL", {"app": app, "version": version, "part": part,
                              "files": [list(f) for f in files]})  # fmt: skip
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        total = 0
        for name, size, _, _ in files:
            fd = os.open(os.path.join(image, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                off = 0
                while off < size:
                    n = os.preadv(fd, [view[: min(CHUNK, size - off)]], off)
                    if n == 0:
                        raise CryoError(f"image {image}: {name} shrank while it was sent")
                    framer.send(b"FILE", {"name": name, "offset": off}, view[:n])
                    off += n
                total += off
            finally:
                os.close(fd)
        framer.send(b"DONE", {"bytes": total})
        m = framer.expect(b"OKAY")
        path = m.get("path")
        if not isinstance(path, str):
            raise CryoError(f"replica host {to} answered without a path")
        return path
    except CryoError as err:
        raise CryoError(f"replica of part {part} to {to}: {err}") from err
    finally:
        channel.close()


class ReplicaServer:
    """This host's end: accepts replicas on ``listen`` (ADDR:PORT) from agents that hold
    ``secret`` and writes them into ``store``; ``received(app, version, path)`` is
    called for each one written (from the connection's thread)."""

    def __init__(self, listen: str, secret: bytes, store: str,
                 received: Callable[[str, int, str], None],
                 timeout: float = 60.0) -> None:  # fmt: skip
        from cryo.migrate.receiver import listener

        self.secret, self.store, self.received, self.timeout = secret, store, received, timeout
        self.sock = listener(listen)
        host = self.sock.getsockname()[0]
        if host in ("0.0.0.0", "::"):  # noqa: S104  (refused, not bound)
            raise CryoError(f"agent --listen {listen}: give the address other hosts reach"
                            " this one at")  # fmt: skip
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="grid replicas")
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, f"{addr[0]}:{addr[1]}"),
                             daemon=True, name=f"grid replica from {addr[0]}").start()  # fmt: skip

    def _serve(self, conn: socket.socket, peer: str) -> None:
        from cryo.migrate import auth
        from cryo.migrate.sender import tune

        tune(conn, self.timeout)
        channel = Channel(conn, name=peer)
        framer = Framer(channel)
        try:
            hello = auth.server(framer, self.secret)
            if hello.get("kind") != KIND:
                raise CryoError(f"{peer} sent something that is not a grid replica")
            path = self._receive(framer)
            framer.send(b"OKAY", {"path": path})
            log.info("replica from %s written to %s", peer, path)
        except CryoError as err:
            log.warning("replica from %s refused: %s", peer, err)
            with contextlib.suppress(CryoError):
                framer.send(b"FAIL", {"error": str(err), "code": err.exit_code})
        except Exception as err:  # a bug: the sender is told, this agent goes on
            log.exception("replica from %s", peer)
            with contextlib.suppress(CryoError):
                framer.send(b"FAIL", {"error": f"a bug in cryo: {err!r}", "code": 70})
        finally:
            channel.close()

    def _receive(self, framer: Framer) -> str:
        m = framer.expect(b"REPL")
        app, version, part, files = m.get("app"), m.get("version"), m.get("part"), m.get("files")
        if not (isinstance(app, str) and _NAME.fullmatch(app) and isinstance(version, int)
                and isinstance(part, int) and version >= 0 and part >= 0
                and isinstance(files, list)):  # fmt: skip
            raise CryoError("a malformed replica request")
        want = _checked(files)
        dst = os.path.join(self.store, app, f"v{version}", f"part{part}")
        tmp = f"{dst}.part"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, mode=0o700)
        try:
            self._files(framer, tmp, want)
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.received(app, version, dst)
        return dst

    def _files(self, framer: Framer, tmp: str, want: dict[str, tuple[int, int, int]]) -> None:
        order = list(want)
        fds: dict[str, int] = {}
        done: dict[str, int] = dict.fromkeys(order, 0)
        total = 0
        try:
            for name in order:  # every file exists, also the empty ones
                path = os.path.join(tmp, name)
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                fds[name] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                    0o600)  # fmt: skip
            while True:
                kind, meta, data = framer.recv()
                if kind == b"DONE":
                    break
                if kind != b"FILE":
                    raise CryoError(f"replica: {kind!r} where FILE or DONE was expected")
                got, off = meta.get("name"), meta.get("offset")
                if not isinstance(got, str) or got not in want or not isinstance(off, int) \
                        or off != done[got] or off + len(data) > want[got][0]:  # fmt: skip
                    raise CryoError(f"replica: a part of {got!r} out of place")
                view = memoryview(data)
                while view:
                    n = os.pwrite(fds[got], view, off)
                    view, off = view[n:], off + n
                done[got] = off
                total += len(data)
                del view
                if hasattr(data, "close"):
                    data.close()
            short = [n for n in order if done[n] != want[n][0]]
            if short or meta.get("bytes") != total:
                raise CryoError(f"replica: incomplete ({', '.join(short) or 'bytes'})")
        finally:
            for fd in fds.values():
                os.close(fd)
        for name, (_, mode, mtime) in want.items():
            path = os.path.join(tmp, name)
            os.chmod(path, mode & 0o700)
            os.utime(path, ns=(mtime, mtime))


def _checked(files: list[Any]) -> dict[str, tuple[int, int, int]]:
    """The files a REPL frame announces: relative names inside the image, no two alike."""
    out: dict[str, tuple[int, int, int]] = {}
    for f in files:
        if not (isinstance(f, list) and len(f) == 4 and isinstance(f[0], str)
                and all(isinstance(x, int) and x >= 0 for x in f[1:])):  # fmt: skip
            raise CryoError("a malformed replica file list")
        name = f[0]
        parts = name.split("/")
        if f[0] in out or not all(_NAME.fullmatch(p) and p not in (".", "..") for p in parts):
            raise CryoError(f"replica: file name {name!r} refused")
        out[name] = (f[1], f[2], f[3])
    return out
