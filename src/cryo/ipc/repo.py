"""The repository of saved IPC objects (seed 000's layout, under a root directory).

    <root>/msgq/<id>/<version>/msgq<id>_v<version>.bin
    <root>/sem/<id>/<version>/sem<id>_v<version>.bin
    <root>/shm/<id>/<version>/shm<id>_v<version>.bin
    <root>/sets/<n>/set<n>.bin          a set saved by ``save --all``: which versions it holds
    <root>/.lock                        taken while loading (the *_next_id sysctls are shared)

Versions and sets count from 1.  A number is taken by creating its directory (mkdir is
atomic), and the file appears in it by rename once complete: a directory without its file
is a save in progress or one that died, and is not listed as a version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryo.errors import ImageMissing, translate_oserror
from cryo.ipc.kinds import Kind

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/var/lib/cryo")
ENV = "CRYO_STORE"


@dataclass(frozen=True)
class Entry:
    """One saved version of one object (or one set when ``kind`` is None)."""

    kind: Kind | None
    id: int  # the object's id, or the set number
    version: int
    path: Path
    size: int
    mtime: float


class Store:
    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            root = os.environ.get(ENV) or DEFAULT_ROOT
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # paths

    def object_dir(self, kind: Kind, ipc_id: int) -> Path:
        return self.root / kind.dirname / str(ipc_id)

    def path(self, kind: Kind, ipc_id: int, version: int) -> Path:
        d = kind.dirname
        return self.object_dir(kind, ipc_id) / str(version) / f"{d}{ipc_id}_v{version}.bin"

    def set_dir(self) -> Path:
        return self.root / "sets"

    def set_path(self, number: int) -> Path:
        return self.set_dir() / str(number) / f"set{number}.bin"

    # numbering

    @staticmethod
    def _numbers(d: Path) -> list[int]:
        try:
            names = [p.name for p in d.iterdir()]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(int(n) for n in names if n.isdigit() and (n == "0" or n[0] != "0"))

    def versions(self, kind: Kind, ipc_id: int) -> list[int]:
        """The complete versions of an object, oldest first."""
        d = self.object_dir(kind, ipc_id)
        return [v for v in self._numbers(d) if self.path(kind, ipc_id, v).is_file()]

    def latest(self, kind: Kind, ipc_id: int) -> int:
        vs = self.versions(kind, ipc_id)
        if not vs:
            raise ImageMissing(f"no saved version of {kind.noun} {ipc_id} in {self.root}",
                               path=str(self.object_dir(kind, ipc_id)))  # fmt: skip
        return vs[-1]

    def existing(self, kind: Kind, ipc_id: int, version: int | None) -> tuple[int, Path]:
        """The path of a saved version (the latest when ``version`` is None)."""
        if version is None:
            version = self.latest(kind, ipc_id)
        p = self.path(kind, ipc_id, version)
        if not p.is_file():
            have = ", ".join(map(str, self.versions(kind, ipc_id))) or "none"
            raise ImageMissing(f"no version {version} of {kind.noun} {ipc_id} in {self.root}"
                               f" (saved versions: {have})", path=str(p))  # fmt: skip
        return version, p

    def _private(self, d: Path) -> None:
        """Create ``d``; the kind and set directories right under the root are 0700: saved
        objects hold other users' data."""
        self.root.mkdir(parents=True, exist_ok=True)
        top = self.root / d.relative_to(self.root).parts[0]
        top.mkdir(mode=0o700, exist_ok=True)
        d.mkdir(parents=True, exist_ok=True)

    def _allocate(self, d: Path) -> tuple[int, Path]:
        try:
            self._private(d)
            while True:
                nums = self._numbers(d)
                n = nums[-1] + 1 if nums else 1
                try:
                    (d / str(n)).mkdir()
                except FileExistsError:
                    continue  # another saver took it
                return n, d / str(n)
        except OSError as err:
            raise translate_oserror(err, resource="store", path=str(d)) from err

    def new_version(self, kind: Kind, ipc_id: int) -> int:
        """Take the next version number of an object (its directory now exists)."""
        return self._allocate(self.object_dir(kind, ipc_id))[0]

    def new_set(self) -> int:
        return self._allocate(self.set_dir())[0]

    def discard(self, path: Path) -> None:
        """Remove the version directory holding ``path`` (a save that failed), and the
        object's directory if that leaves it empty."""
        shutil.rmtree(path.parent, ignore_errors=True)
        with contextlib.suppress(OSError):
            path.parent.parent.rmdir()

    # listing

    def entries(self) -> list[Entry]:
        """Every complete version of every object, then every set."""
        out = []
        for kind in Kind:
            for ipc_id in self._numbers(self.root / kind.dirname):
                for v in self.versions(kind, ipc_id):
                    out.append(self._entry(kind, ipc_id, v, self.path(kind, ipc_id, v)))
        for n in self._numbers(self.set_dir()):
            p = self.set_path(n)
            if p.is_file():
                out.append(self._entry(None, n, n, p))
        return out

    @staticmethod
    def _entry(kind: Kind | None, ipc_id: int, version: int, p: Path) -> Entry:
        st = p.stat()
        return Entry(kind, ipc_id, version, p, st.st_size, st.st_mtime)

    # loading is serialised: the *_next_id sysctls are one per namespace

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise loads through this store.  A store we may not write to (read-only,
        someone else's) is loaded from without the lock."""
        try:
            fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise translate_oserror(err, resource="store", path=str(self.root)) from err
            log.debug("loading without the store's lock: %s", err)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
