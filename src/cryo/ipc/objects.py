"""Saving, loading and describing one object: the orchestrator over the kind modules.

The kind modules (msg, sem, shm) share one interface and do not import each other:
``save(id, f) -> META``, ``read(path) -> Image`` (checks all of it), ``check_fits(image)``,
``load(image, replace=) -> Loaded``, ``describe(META)``, ``OPS`` (conflicts and removal).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from cryo.errors import ImageCorrupt, translate_oserror
from cryo.image.format import atomic_file
from cryo.ipc import msg, sem, shm
from cryo.ipc.common import Image, Loaded, Perm
from cryo.ipc.kinds import Kind
from cryo.ipc.procfs import LiveObject, read_live
from cryo.ipc.repo import Entry, Store

REGISTRY: dict[Kind, ModuleType] = {Kind.MSG: msg, Kind.SEM: sem, Kind.SHM: shm}

StoreLike = Store | str | os.PathLike[str] | None


def as_store(store: StoreLike) -> Store:
    return store if isinstance(store, Store) else Store(store)


def as_kind(kind: Kind | str) -> Kind:
    return kind if isinstance(kind, Kind) else Kind.parse(kind)


@dataclass(frozen=True)
class Saved:
    """A version just written."""

    kind: Kind
    id: int
    version: int
    path: Path
    size: int


@dataclass(frozen=True)
class Description:
    """What ``cryo ipc show`` prints about one saved version (checked through)."""

    kind: Kind
    id: int
    version: int
    path: Path
    file_size: int
    saved_at: float
    kernel: str
    perm: Perm
    counts: dict[str, Any]
    left_out: list[str] = field(default_factory=list)

    @property
    def saved_at_text(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved_at))


def save(kind: Kind | str, ipc_id: int, *, store: StoreLike = None) -> Saved:
    """Save object ``ipc_id`` of this IPC namespace as its next version."""
    k, st = as_kind(kind), as_store(store)
    version = st.new_version(k, ipc_id)
    path = st.path(k, ipc_id, version)
    try:
        with atomic_file(path) as f:
            REGISTRY[k].save(ipc_id, f)
    except OSError as err:
        st.discard(path)
        raise translate_oserror(err, resource="store", path=str(path)) from err
    except BaseException:
        st.discard(path)
        raise
    return Saved(k, ipc_id, version, path, path.stat().st_size)


def read_image(kind: Kind, ipc_id: int, version: int | None, store: Store) -> tuple[int, Image]:
    """Read and check a saved version (the latest when ``version`` is None)."""
    version, path = store.existing(kind, ipc_id, version)
    image: Image = REGISTRY[kind].read(path)
    if image.id != ipc_id:
        raise ImageCorrupt(f"image {path} is corrupt: it holds {kind.noun} {image.id}",
                           path=str(path))  # fmt: skip
    return version, image


def load(kind: Kind | str, ipc_id: int, version: int | None = None, *,
         store: StoreLike = None, replace: bool = False) -> Loaded:  # fmt: skip
    """Recreate object ``ipc_id`` (same id, key, owner, mode and contents) from a version.

    The version is read and checked through before anything is created; an id or key in
    use is refused (RestoreConflict) unless ``replace``; a load that fails half-way removes
    what it created.
    """
    k, st = as_kind(kind), as_store(store)
    version, image = read_image(k, ipc_id, version, st)
    with st.lock():
        loaded: Loaded = REGISTRY[k].load(image, replace=replace)
    loaded.version = version
    return loaded


def show(kind: Kind | str, ipc_id: int, version: int | None = None, *,
         store: StoreLike = None) -> Description:  # fmt: skip
    k, st = as_kind(kind), as_store(store)
    version, image = read_image(k, ipc_id, version, st)
    meta = image.meta
    return Description(
        kind=k, id=ipc_id, version=version, path=image.path,
        file_size=image.path.stat().st_size, saved_at=float(meta.get("saved_at", 0.0)),
        kernel=str(meta.get("kernel", "")), perm=image.perm,
        counts=REGISTRY[k].describe(meta), left_out=list(meta.get("left_out", [])),
    )  # fmt: skip


def list_saved(*, store: StoreLike = None) -> list[Entry]:
    """Every complete version in the store (sets have ``kind`` None)."""
    return as_store(store).entries()


def live(kind: Kind | str | None = None) -> list[LiveObject]:
    """The objects of this IPC namespace, from /proc/sysvipc."""
    kinds = list(Kind) if kind is None else [as_kind(kind)]
    return [o for k in kinds for o in read_live(k)]
