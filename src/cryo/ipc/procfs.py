"""Pure parsers of /proc/sysvipc/{msg,sem,shm}: the live objects of this IPC namespace.

Each file is a header line naming the columns, then one line per object.  The parsers take
the bytes and go by the header's names, so a kernel that adds a column does not break them.
``perms`` is printed in octal, ``key`` as a signed decimal (ipc/msg.c, ipc/sem.c, ipc/shm.c:
sysvipc_*_proc_show).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryo.ipc.kinds import Kind

PROC_SYSVIPC = Path("/proc/sysvipc")


@dataclass(frozen=True)
class LiveObject:
    """One line of /proc/sysvipc/<kind>; ``extra`` holds the kind's own columns."""

    kind: Kind
    key: int
    id: int
    mode: int
    uid: int
    gid: int
    cuid: int
    cgid: int
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes held: a queue's cbytes, a segment's size, 0 for a semaphore set."""
        return self.extra.get("cbytes", self.extra.get("size", 0))

    @property
    def count(self) -> int:
        """Messages on a queue, semaphores in a set, processes attached to a segment."""
        return self.extra.get("qnum", self.extra.get("nsems", self.extra.get("nattch", 0)))


_ID_COLUMN = {Kind.MSG: "msqid", Kind.SEM: "semid", Kind.SHM: "shmid"}
_COMMON = ("key", "perms", "uid", "gid", "cuid", "cgid")


class ParseError(ValueError):
    pass


def parse(kind: Kind, data: bytes) -> list[LiveObject]:
    """Parse the text of /proc/sysvipc/<kind>."""
    lines = data.decode("ascii", errors="replace").splitlines()
    if not lines:
        return []
    names = lines[0].split()
    id_col = _ID_COLUMN[kind]
    missing = [n for n in (*_COMMON, id_col) if n not in names]
    if missing:
        raise ParseError(f"/proc/sysvipc/{kind.value}: no column {', '.join(missing)}")
    out = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split()
        if len(cells) != len(names):
            raise ParseError(f"/proc/sysvipc/{kind.value}:{lineno}: {len(cells)} columns")
        try:
            values = {
                name: int(cell, 8) if name == "perms" else int(cell)
                for name, cell in zip(names, cells, strict=True)
            }
        except ValueError as err:
            raise ParseError(f"/proc/sysvipc/{kind.value}:{lineno}: {err}") from err
        extra = {k: v for k, v in values.items() if k not in (*_COMMON, id_col)}
        out.append(
            LiveObject(
                kind=kind,
                key=values["key"],
                id=values[id_col],
                mode=values["perms"],
                uid=values["uid"],
                gid=values["gid"],
                cuid=values["cuid"],
                cgid=values["cgid"],
                extra=extra,
            )
        )
    return out


def read_live(kind: Kind, root: Path = PROC_SYSVIPC) -> list[LiveObject]:
    """The live objects of ``kind`` in the IPC namespace of this process, by id."""
    return sorted(parse(kind, (root / kind.value).read_bytes()), key=lambda o: o.id)
