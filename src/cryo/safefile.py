"""Files cryo writes where a user may have prepared the ground: ``--pidfile`` and
``cryo run --output``.  Never through a symbolic link, never into another user's file
by a hard link, new files 0600."""

from __future__ import annotations

import os
import stat

from cryo.errors import CryoError


def _refuse(path: str, why: str) -> CryoError:
    return CryoError(f"refusing to write {path}: {why}", path=path)


def write_replace(path: str, text: str) -> None:
    """Write ``text`` to ``path`` by atomic replacement: a new 0600 file made beside it
    (unpredictable name, O_EXCL) and renamed over it, so that a symbolic link or a file
    planted at ``path`` is replaced, never written through."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.isdir(path) and not os.path.islink(path):
        raise _refuse(path, "it is a directory")
    import tempfile  # (here: it imports shutil and random, 3 ms a command)

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    except OSError as err:
        raise _refuse(path, err.strerror or str(err)) from err
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException as err:
        if fd >= 0:
            os.close(fd)
        os.unlink(tmp)
        if isinstance(err, OSError):
            raise _refuse(path, err.strerror or str(err)) from err
        raise


def write_pidfile(path: str, pid: int) -> None:
    write_replace(path, f"{pid}\n")


def open_append(path: str) -> int:
    """An fd appending to ``path`` (made 0600 if new): not through a symbolic link (the
    last component), not a regular file with other links (a hard link to a file of
    another user); a character device such as /dev/null is fine."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            os.fchmod(fd, 0o600)
            return fd
        except FileExistsError:
            fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as err:
        if os.path.islink(path):
            raise _refuse(path, "it is a symbolic link") from err
        raise _refuse(path, err.strerror or str(err)) from err
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and st.st_uid != os.geteuid():
        os.close(fd)
        raise _refuse(path, f"it is a hard link to a file of uid {st.st_uid}")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode):
        os.set_blocking(fd, True)
        return fd
    os.close(fd)
    raise _refuse(path, "it is not a file, a pipe or a character device")
