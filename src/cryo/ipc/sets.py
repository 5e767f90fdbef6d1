"""Every object of the IPC namespace saved as one numbered set, and loaded back as one.

The linux-cr way (seed 002): the namespace is the unit.  A set is a manifest naming one new
version of each object, plus the namespace's limits (sysctls)::

    sets/<n>/set<n>.bin, magic CRYOISET:
    META  {format, set, saved_at, kernel, filter: {key, owner}, sysctl: {name: value},
           objects: [{kind, id, version, key}], vanished: [{kind, id}]}

The manifest is written last, atomically: a set is there whole or not at all (a save that
fails removes the versions it wrote).  A load reads and checks every version first, checks
every conflict, then creates; if one creation fails, the objects already created go.
The objects are saved one after the other; for a consistent set, stop (or checkpoint) the
processes that use them first.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryo.errors import CryoError, ImageCorrupt
from cryo.image.format import RecordWriter, atomic_file, read_file
from cryo.ipc.common import (
    FORMAT,
    Image,
    Loaded,
    NoSuchObject,
    check_header,
    clear_the_way,
    meta_int,
    read_ns_sysctls,
    write_sysctl,
)
from cryo.ipc.kinds import Kind
from cryo.ipc.objects import REGISTRY, Saved, StoreLike, as_store, live, read_image, save
from cryo.ipc.procfs import LiveObject

log = logging.getLogger(__name__)

MAGIC = b"CRYOISET"
META = b"META"


@dataclass(frozen=True)
class SavedSet:
    number: int
    path: Path
    members: list[Saved]
    vanished: list[tuple[Kind, int]] = field(default_factory=list)


@dataclass(frozen=True)
class SetInfo:
    number: int
    path: Path
    saved_at: float
    sysctl: dict[str, str]
    objects: list[tuple[Kind, int, int, int]]  # kind, id, version, key
    filter: dict[str, Any]


def parse_key(text: str) -> int:
    """A key as ipcs prints it (0x1234abcd) or as /proc shows it (signed decimal)."""
    v = int(text, 0)
    if not -(1 << 31) <= v < (1 << 32):
        raise ValueError(f"key {text} is not 32 bits")
    return v - (1 << 32) if v >= (1 << 31) else v


def parse_owner(text: str) -> int:
    """A user name or a uid."""
    if text.isdigit():
        return int(text)
    import pwd

    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError as err:
        raise ValueError(f"no user {text!r}") from err


def _selected(o: LiveObject, key: int | None, owner: int | None) -> bool:
    return (key is None or o.key == key) and (owner is None or o.uid == owner)


def save_all(*, store: StoreLike = None, key: int | None = None,
             owner: int | None = None) -> SavedSet:  # fmt: skip
    """Save every object of this IPC namespace (those with ``key``, of ``owner``) as a set."""
    st = as_store(store)
    objects = [o for o in live() if _selected(o, key, owner)]
    number = st.new_set()
    path = st.set_path(number)
    members: list[Saved] = []
    vanished: list[tuple[Kind, int]] = []
    try:
        for o in objects:
            try:
                members.append(save(o.kind, o.id, store=st))
            except NoSuchObject:
                log.info("%s %d vanished before it was saved", o.kind.noun, o.id)
                vanished.append((o.kind, o.id))
        manifest = {
            "format": FORMAT, "kind": "set", "id": number, "saved_at": time.time(),
            "kernel": os.uname().release, "filter": {"key": key, "owner": owner},
            "sysctl": read_ns_sysctls(),
            "objects": [{"kind": m.kind.value, "id": m.id, "version": m.version,
                         "key": next(o.key for o in objects if (o.kind, o.id) == (m.kind, m.id))}
                        for m in members],
            "vanished": [{"kind": k.value, "id": i} for k, i in vanished],
        }  # fmt: skip
        with atomic_file(path) as f:
            w = RecordWriter(f, MAGIC)
            w.write(META, manifest)
            w.close()
    except BaseException:
        for m in members:
            st.discard(m.path)
        st.discard(path)
        raise
    return SavedSet(number, path, members, vanished)


def read_set(number: int, *, store: StoreLike = None) -> SetInfo:
    st = as_store(store)
    path = st.set_path(number)
    name = str(path)
    records = read_file(path, MAGIC)
    if len(records) != 1 or records[0].kind != META:
        raise ImageCorrupt(f"image {name} is corrupt: expected one META record", path=name)
    p = records[0].payload
    if not isinstance(p, dict) or p.get("kind") != "set":
        raise ImageCorrupt(f"image {name} is corrupt: not a set", path=name)
    p = check_header({**p, "kind": Kind.MSG.value}, Kind.MSG, name)  # format and id
    sysctl = p.get("sysctl")
    objs = p.get("objects")
    if not isinstance(sysctl, dict) or not isinstance(objs, list):
        raise ImageCorrupt(f"image {name} is corrupt: bad manifest", path=name)
    out = []
    for o in objs:
        if not isinstance(o, dict):
            raise ImageCorrupt(f"image {name} is corrupt: bad manifest entry", path=name)
        try:
            k = Kind(str(o.get("kind")))
        except ValueError as err:
            raise ImageCorrupt(f"image {name} is corrupt: kind {o.get('kind')!r}",
                               path=name) from err  # fmt: skip
        out.append((k, meta_int(o, "id", name, lo=0), meta_int(o, "version", name, lo=1),
                    meta_int(o, "key", name)))  # fmt: skip
    return SetInfo(number, path, float(p.get("saved_at", 0.0)),
                   {str(a): str(b) for a, b in sysctl.items()}, out,
                   dict(p.get("filter") or {}))  # fmt: skip


def load_all(number: int, *, store: StoreLike = None, replace: bool = False,
             sysctl: bool = False) -> list[Loaded]:  # fmt: skip
    """Recreate every object of set ``number``; all of them or none.

    With ``sysctl``, the namespace's limits saved with the set are written first (meant for
    a fresh IPC namespace).
    """
    st = as_store(store)
    info = read_set(number, store=st)
    images: list[tuple[int, Image]] = [read_image(k, i, v, st) for k, i, v, _ in info.objects]
    created: list[Loaded] = []
    with st.lock():
        if sysctl:
            for name, value in info.sysctl.items():
                write_sysctl(name, value)
        for _, image in images:
            REGISTRY[image.kind].check_fits(image)
            if not replace:
                try:
                    clear_the_way(REGISTRY[image.kind].OPS, image.id, image.perm.key,
                                  replace=False)  # fmt: skip
                except OSError as err:
                    raise CryoError(f"{image.kind.noun} {image.id}: {err}") from err
        try:
            for version, image in images:
                loaded: Loaded = REGISTRY[image.kind].load(image, replace=replace)
                loaded.version = version
                created.append(loaded)
        except BaseException:
            for c in created:
                try:
                    REGISTRY[c.kind].OPS.rmid(c.id)
                except OSError as err:
                    log.warning("could not remove %s %d: %s", c.kind.noun, c.id, err)
            raise
    return created
