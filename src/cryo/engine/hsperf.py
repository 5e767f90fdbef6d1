"""The JVM's performance-data file: /tmp/hsperfdata_USER/PID, named after the JVM's own
pid, made by the JVM at its start and mapped shared, its counters written there for as
long as it runs (jstat and jcmd read it; a JVM starting deletes the files of pids that
no longer run).

A file mapped shared is the program's data, not the image's: a restart maps it as it is
and refuses it (FileChanged, exit 12) when its size or mtime changed since the
checkpoint.  A restored JVM writes its counters there, and so a second restart of the
same image failed, exit 12; and once another JVM had cleaned the killed one's file away
the restart failed too (the mapped file missing).  This file belongs to the process
alone: the checkpoint saves its bytes with the image (record HSPF, 32 KiB by default),
and the restart, when no process has that pid (the file's JVM is gone), puts it back as
it was at the checkpoint, bytes, mode, owner and mtime, before the paths are checked; the
restored JVM maps what it had.  Where a live process has the pid now (``--new-pids``)
the file is its own and is left alone: the usual check applies.  Only a file in a
directory that is not a symbolic link and belongs to the file's owner, itself the
image's owner (or any for root's image), is written."""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from typing import Any

from cryo.engine.context import DumpContext
from cryo.errors import CryoError, ImageCorrupt
from cryo.image import records as R

log = logging.getLogger(__name__)
KIND = b"HSPF"
PATH = re.compile(r"/tmp/hsperfdata_[^/]+/(\d+)")
MAX = 1 << 20  # bytes; the JVM's default is 32 KiB (-XX:PerfDataMemorySize)


def write(ctx: DumpContext, sink: Any) -> None:
    """Driver hook (write): the bytes of each such file the process maps, as it is now
    (frozen), read through its mapping's /proc/PID/map_files entry (the inode mapped)."""
    saved: list[dict[str, Any]] = []
    for v in ctx.records[R.MM]["vmas"]:
        m = PATH.fullmatch(v["path"])
        if v["kind"] != "shared-file" or m is None or any(f["path"] == v["path"] for f in saved):
            continue
        try:
            fd = os.open(f"/proc/{ctx.pid}/map_files/{v['start']:x}-{v['end']:x}", os.O_RDONLY)
        except OSError as err:
            raise CryoError(f"process {ctx.pid}: cannot read {v['path']}: {err.strerror}",
                            pid=ctx.pid, path=v["path"]) from err  # fmt: skip
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX:
                continue
            data = os.pread(fd, st.st_size, 0)
        finally:
            os.close(fd)
        name = f"hsperf-{ctx.pid}-{len(saved)}.bin"
        with sink.side_file(name) as out:
            out.write(data)
        saved.append({"path": v["path"], "side": name, "size": len(data),
                      "mtime": st.st_mtime_ns, "mode": stat.S_IMODE(st.st_mode),
                      "uid": st.st_uid, "gid": st.st_gid})  # fmt: skip
    if saved:
        ctx.records[KIND] = {"pid": ctx.pid, "files": saved}


def prepare(rs: Any) -> None:
    """Driver hook (restart, before any path is checked): each file put back where no
    process has its pid."""
    owner = rs.options.get("owner")
    for rec in rs.image.raw(KIND):
        for f in rec.get("files", []):
            m = PATH.fullmatch(f["path"])
            if m is None or os.path.exists(f"/proc/{m.group(1)}"):
                continue  # a live process's own file (or not one of these): left alone
            if owner is not None and getattr(owner, "uid", 0) not in (0, f["uid"]):
                continue
            _put_back(rs, f)


def _put_back(rs: Any, f: dict[str, Any]) -> None:
    path = f["path"]
    with rs.image.side_file(f["side"]) as src:
        data = src.read()
    if len(data) != f["size"]:
        raise ImageCorrupt(f"image {rs.image.path} is corrupt: the JVM's {path} is"
                           " truncated", path=rs.image.path)  # fmt: skip
    d = os.path.dirname(path)
    try:
        dst = os.lstat(d)
    except FileNotFoundError:
        os.mkdir(d, 0o755)  # (as the JVM makes it: its owner's, 0755)
        os.chown(d, f["uid"], f["gid"])
        dst = os.lstat(d)
    if not stat.S_ISDIR(dst.st_mode) or dst.st_uid != f["uid"]:
        return  # not the JVM's directory: the usual check applies
    tmp = f"{path}.cryo-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, f["uid"], f["gid"])
        os.fchmod(fd, f["mode"])
        os.utime(fd, ns=(f["mtime"], f["mtime"]))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    log.info("the JVM's %s put back as it was at the checkpoint", path)
