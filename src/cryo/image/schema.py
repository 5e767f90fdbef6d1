"""The image grammar in code: one declaration per record kind of core.img.

Every record of an image is checked against its declaration (types, ranges, required
keys) and then against the others (references: an fd's description, a block's process
and mappings, a thread's process, ...) before a restart uses any of it: a record that
does not fit is an ImageCorrupt (exit 5) naming the kind and the key.  The record
tables of docs/image-format.md are generated from these declarations
(``python -m cryo.image.schema``; tests/unit/test_schema.py keeps them equal).

Per-process and per-thread records accept keys they do not declare (resource modules
add keys as they grow; readers ignore what they do not know, docs/image-format.md "How
versions evolve"); a declared key that is present must fit its declaration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cryo.errors import ImageCorrupt

U8, U16, U32, U64 = (1 << 8) - 1, (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1
MAX_PID = 1 << 22  # PID_MAX_LIMIT
ADDR_END = 1 << 57  # user addresses (5-level paging at most)
MAX_BLOCK = 1 << 30  # bytes of one page block (cryo writes 64 MiB)
MAX_ITEMS = 1 << 20  # entries of any list


class Bad(Exception):
    """A value that does not fit: ``where`` is the path of keys to it."""

    def __init__(self, why: str, where: tuple[str, ...] = ()) -> None:
        super().__init__(why)
        self.why = why
        self.where = where

    def at(self, key: str) -> Bad:
        return Bad(self.why, (key, *self.where))


# -- types -------------------------------------------------------------------------------


class Type:
    """A type of the grammar.  The types are plain classes with ``__slots__``, made once
    and never changed (not dataclasses: the grammar is imported by every restart and
    ``cryo show``, and making eleven frozen dataclasses took most of its import)."""

    __slots__ = ()
    doc = "?"

    def check(self, v: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in _slots(type(self)))
        return f"{type(self).__name__}({args})"


def _slots(cls: type) -> list[str]:
    return [n for c in reversed(cls.__mro__) for n in getattr(c, "__slots__", ())]


class Int(Type):
    __slots__ = ("hi", "lo", "name")

    def __init__(self, lo: int = 0, hi: int = U64, name: str = "") -> None:
        self.lo, self.hi, self.name = lo, hi, name

    @property
    def doc(self) -> str:  # type: ignore[override]
        if self.name:
            return self.name
        names = {U8: "u8", U16: "u16", U32: "u32", U64: "u64"}
        if self.lo == 0 and self.hi in names:
            return names[self.hi]
        return f"int {self.lo}..{self.hi}"

    def check(self, v: Any) -> None:
        if not isinstance(v, int) or isinstance(v, bool):
            raise Bad(f"{_what(v)}, not an integer")
        if not self.lo <= v <= self.hi:
            raise Bad(f"{v} is out of range {self.lo}..{self.hi}")


class Num(Type):
    __slots__ = ()
    doc = "number"

    def check(self, v: Any) -> None:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
            raise Bad(f"{_what(v)}, not a number")


class Bool(Type):
    __slots__ = ()
    doc = "bool"

    def check(self, v: Any) -> None:
        if not isinstance(v, bool) and v not in (0, 1):
            raise Bad(f"{_what(v)}, not a boolean")


class Str(Type):
    __slots__ = ("choices", "max", "pattern")

    def __init__(self, max: int = 4096, pattern: str | None = None,
                 choices: tuple[str, ...] = ()) -> None:
        self.max, self.pattern, self.choices = max, pattern, choices

    @property
    def doc(self) -> str:  # type: ignore[override]
        if self.choices:
            return " \\| ".join(f'"{c}"' for c in self.choices)
        return "str"

    def check(self, v: Any) -> None:
        if not isinstance(v, str):
            raise Bad(f"{_what(v)}, not a string")
        if len(v) > self.max or "\0" in v:
            raise Bad(f"a string of {len(v)} characters (at most {self.max}, no NUL)")
        if self.choices and v not in self.choices:
            raise Bad(f"{v!r} is not one of {', '.join(self.choices)}")
        if self.pattern and not re.fullmatch(self.pattern, v):
            raise Bad(f"{v!r} is not of the form {self.pattern}")


class Bytes(Type):
    __slots__ = ("max", "size")

    def __init__(self, size: int | None = None, max: int = 1 << 30) -> None:
        self.size, self.max = size, max  # (size: exactly)

    @property
    def doc(self) -> str:  # type: ignore[override]
        return f"bin[{self.size}]" if self.size is not None else "bin"

    def check(self, v: Any) -> None:
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise Bad(f"{_what(v)}, not bytes")
        if self.size is not None and len(v) != self.size:
            raise Bad(f"{len(v)} bytes, not {self.size}")
        if len(v) > self.max:
            raise Bad(f"{len(v)} bytes (at most {self.max})")


class Path(Str):
    """An absolute path (as /proc shows it), or a pseudo path like ``pipe:[123]``."""

    __slots__ = ("absolute",)

    def __init__(self, max: int = 4096, pattern: str | None = None,
                 choices: tuple[str, ...] = (), absolute: bool = True) -> None:
        super().__init__(max, pattern, choices)
        self.absolute = absolute

    @property
    def doc(self) -> str:  # type: ignore[override]
        return "path"

    def check(self, v: Any) -> None:
        super().check(v)
        if self.absolute and not v.startswith("/"):
            raise Bad(f"{v!r} is not an absolute path")


class Nullable(Type):
    __slots__ = ("inner",)

    def __init__(self, inner: Type) -> None:
        self.inner = inner

    @property
    def doc(self) -> str:  # type: ignore[override]
        return f"{self.inner.doc} or nil"

    def check(self, v: Any) -> None:
        if v is not None:
            self.inner.check(v)


class AnyOf(Type):
    __slots__ = ("options",)

    def __init__(self, options: tuple[Type, ...]) -> None:
        self.options = options

    @property
    def doc(self) -> str:  # type: ignore[override]
        return " or ".join(o.doc for o in self.options)

    def check(self, v: Any) -> None:
        errors = []
        for o in self.options:
            try:
                o.check(v)
                return
            except Bad as err:
                errors.append(err.why)
        raise Bad("; ".join(errors))


class List(Type):
    __slots__ = ("item", "max", "min", "size")

    def __init__(self, item: Type, min: int = 0, max: int = MAX_ITEMS,
                 size: int | None = None) -> None:
        self.item, self.min, self.max, self.size = item, min, max, size

    @property
    def doc(self) -> str:  # type: ignore[override]
        n = f"{self.size} x " if self.size is not None else ""
        return f"[{n}{self.item.doc}]"

    def check(self, v: Any) -> None:
        if not isinstance(v, (list, tuple)):
            raise Bad(f"{_what(v)}, not a list")
        if self.size is not None and len(v) != self.size:
            raise Bad(f"{len(v)} items, not {self.size}")
        if not self.min <= len(v) <= self.max:
            raise Bad(f"{len(v)} items (from {self.min} to {self.max})")
        for i, x in enumerate(v):
            try:
                self.item.check(x)
            except Bad as err:
                raise err.at(f"[{i}]") from None


class Tuple(Type):
    __slots__ = ("items", "names")

    def __init__(self, items: tuple[Type, ...], names: tuple[str, ...] = ()) -> None:
        self.items, self.names = items, names

    @property
    def doc(self) -> str:  # type: ignore[override]
        if self.names:
            return "[" + ", ".join(self.names) + "]"
        return "[" + ", ".join(t.doc for t in self.items) + "]"

    def check(self, v: Any) -> None:
        if not isinstance(v, (list, tuple)) or len(v) != len(self.items):
            raise Bad(f"{_what(v)}, not a list of {len(self.items)}")
        for i, (t, x) in enumerate(zip(self.items, v, strict=True)):
            try:
                t.check(x)
            except Bad as err:
                raise err.at(f"[{i}]") from None


class Dict(Type):
    __slots__ = ("key", "max", "value")

    def __init__(self, key: Type, value: Type, max: int = MAX_ITEMS) -> None:
        self.key, self.value, self.max = key, value, max

    @property
    def doc(self) -> str:  # type: ignore[override]
        return f"{{{self.key.doc}: {self.value.doc}}}"

    def check(self, v: Any) -> None:
        if not isinstance(v, dict):
            raise Bad(f"{_what(v)}, not a map")
        if len(v) > self.max:
            raise Bad(f"{len(v)} entries (at most {self.max})")
        for k, x in v.items():
            try:
                self.key.check(k)
            except Bad as err:
                raise Bad(f"key {k!r}: {err.why}") from None
            try:
                self.value.check(x)
            except Bad as err:
                raise err.at(f"[{k!r}]") from None


class F:
    """A key of a map: its type, whether it must be there, what it means."""

    __slots__ = ("doc", "name", "required", "type")

    def __init__(self, name: str, type: Type, doc: str = "",
                 required: bool = True) -> None:
        self.name, self.type, self.doc, self.required = name, type, doc, required

    def __repr__(self) -> str:
        return f"F({self.name!r}, {self.type!r}, required={self.required})"


class Struct(Type):
    __slots__ = ("extra", "fields", "name")

    def __init__(self, fields: tuple[F, ...], extra: bool = True, name: str = "map") -> None:
        self.fields = fields
        self.extra = extra  # keys not declared here are accepted (and ignored)
        self.name = name

    @property
    def doc(self) -> str:  # type: ignore[override]
        return self.name

    def check(self, v: Any) -> None:
        if not isinstance(v, dict):
            raise Bad(f"{_what(v)}, not a map")
        for f in self.fields:
            if f.name not in v:
                if f.required:
                    raise Bad("missing", (f.name,))
                continue
            try:
                f.type.check(v[f.name])
            except Bad as err:
                raise err.at(f.name) from None
        if not self.extra:
            unknown = set(v) - {f.name for f in self.fields}
            if unknown:
                raise Bad(f"unknown keys {sorted(map(str, unknown))}")


# -- the fast path of the checks --------------------------------------------------------
# Each type compiled once into a predicate: True only if its ``check`` would accept the
# value (never more lenient; where unsure, False).  A record the predicate accepts is
# accepted; any other is checked again with ``check``, which names what is wrong: the
# refusals are exactly ``check``'s, the predicate only saves its per-field overhead.

Fast = Callable[[Any], bool]
_FAST: dict[int, tuple[Type, Fast]] = {}


def fast(t: Type) -> Fast:
    """The compiled predicate of ``t`` (made on first use, kept)."""
    got = _FAST.get(id(t))
    if got is None or got[0] is not t:
        got = _FAST[id(t)] = (t, _compile(t))
    return got[1]


def compile_all() -> None:
    """Every kind's predicate made now (1-2 ms): what a long-lived process does once so
    that the checks of its forks (cryod's commands) do not each make them again."""
    for k in KINDS:
        fast(k.body)


def _slow(t: Type) -> Fast:
    def ok(v: Any) -> bool:
        try:
            t.check(v)
        except Bad:
            return False
        return True

    return ok


_INT, _BOOL, _OTHER = 0, 1, 2  # how a map's key is checked in its loop (no call for ints)


def _field(t: Type) -> tuple[int, int, int, Fast]:
    if type(t) is Int:
        assert isinstance(t, Int)
        return _INT, t.lo, t.hi, fast(t)
    if type(t) is Bool:
        return _BOOL, 0, 1, fast(t)
    return _OTHER, 0, 0, fast(t)


def _compile(t: Type) -> Fast:
    """The predicate of ``t``: closures over its parts' (made in well under a millisecond
    for the whole grammar: compiling source for it would cost a small image's check)."""
    k = type(t)
    if k is Int:
        assert isinstance(t, Int)
        lo, hi = t.lo, t.hi
        return lambda v: type(v) is int and lo <= v <= hi
    if k is Num:
        return lambda v: type(v) is int or (type(v) is float and not math.isnan(v))
    if k is Bool:
        return lambda v: v is True or v is False or (type(v) is int and 0 <= v <= 1)
    if k is Str or k is Path:
        assert isinstance(t, Str)
        mx, choices = t.max, frozenset(t.choices)
        match = re.compile(t.pattern).fullmatch if t.pattern else None
        absolute = isinstance(t, Path) and t.absolute

        def string(v: Any) -> bool:
            if type(v) is not str or len(v) > mx or "\0" in v:
                return False
            if choices and v not in choices:
                return False
            if match is not None and match(v) is None:
                return False
            return not absolute or v.startswith("/")

        return string
    if k is Bytes:
        assert isinstance(t, Bytes)
        size, bmax = t.size, t.max
        return lambda v: type(v) is bytes and (size is None or len(v) == size) and \
            len(v) <= bmax  # fmt: skip
    if k is Nullable:
        assert isinstance(t, Nullable)
        inner = fast(t.inner)
        return lambda v: v is None or inner(v)
    if k is AnyOf:
        assert isinstance(t, AnyOf)
        ranges = [(o.lo, o.hi) for o in t.options if isinstance(o, Int) and type(o) is Int]
        rest = [fast(o) for o in t.options if type(o) is not Int]
        if len(ranges) == 1 and len(rest) == 1:  # (an int or one other: no generator each)
            (ilo, ihi), other = ranges[0], rest[0]
            return lambda v: (type(v) is int and ilo <= v <= ihi) or other(v)
        opts = tuple(fast(o) for o in t.options)
        return lambda v: any(o(v) for o in opts)
    if k is List:
        assert isinstance(t, List)
        lmin, lmax, lsize = t.min, t.max, t.size
        if type(t.item) is Int:  # (a list of ints: no call for each)
            assert isinstance(t.item, Int)
            ilo, ihi = t.item.lo, t.item.hi

            def ints(v: Any) -> bool:
                if type(v) is not list and type(v) is not tuple:
                    return False
                n = len(v)
                if (lsize is not None and n != lsize) or not lmin <= n <= lmax:
                    return False
                for x in v:  # noqa: SIM110 (a loop: no call for each item)
                    if type(x) is not int or not ilo <= x <= ihi:
                        return False
                return True

            return ints
        item = fast(t.item)

        def items(v: Any) -> bool:
            if type(v) is not list and type(v) is not tuple:
                return False
            n = len(v)
            if (lsize is not None and n != lsize) or not lmin <= n <= lmax:
                return False
            return all(map(item, v))

        return items
    if k is Tuple:
        assert isinstance(t, Tuple)
        each = tuple(_field(x) for x in t.items)
        width = len(each)

        def row(v: Any) -> bool:
            if (type(v) is not list and type(v) is not tuple) or len(v) != width:
                return False
            for (code, lo, hi, ok), x in zip(each, v, strict=True):
                if code == _INT:
                    if type(x) is not int or not lo <= x <= hi:
                        return False
                elif not ok(x):
                    return False
            return True

        return row
    if k is Dict:
        assert isinstance(t, Dict)
        key, value, dmax = fast(t.key), fast(t.value), t.max
        return lambda v: type(v) is dict and len(v) <= dmax and all(
            key(a) and value(b) for a, b in v.items())  # fmt: skip
    if k is Struct:
        assert isinstance(t, Struct)
        checks = {f.name: _field(f.type) for f in t.fields}
        required = frozenset(f.name for f in t.fields if f.required)
        extra = t.extra

        def struct(v: Any) -> bool:  # (the keys it has, not every key it could have)
            if type(v) is not dict or not required.issubset(v):
                return False
            get = checks.get
            for name, x in v.items():
                c = get(name)
                if c is None:
                    if not extra:
                        return False
                    continue
                code, lo, hi, ok = c
                if code == _INT:
                    if type(x) is not int or not lo <= x <= hi:
                        return False
                elif code == _BOOL:
                    if x is not True and x is not False and not (type(x) is int and
                                                                 0 <= x <= 1):  # fmt: skip
                        return False
                elif not ok(x):
                    return False
            return True

        return struct
    return _slow(t)  # a type of its own: its check, as it is


def _what(v: Any) -> str:
    if isinstance(v, (bytes, bytearray)):
        return f"{len(v)} bytes"
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


# -- the declarations ------------------------------------------------------------------

PID = Int(1, MAX_PID, "pid")
FD = Int(0, (1 << 20) - 1, "fd")
ADDR = Int(0, U64, "address")  # (vsyscall sits at the top)
HEX = Str(max=18, pattern=r"(0x)?[0-9a-fA-F]{1,16}")
SIGINFO = Bytes(128)
VMA_KINDS = ("anon", "file", "shmem", "shared-file", "sysv-shm", "special", "skip", "aio")
DESC_KINDS = ("file", "dir", "chr", "stdio", "ctty", "pipe", "fifo", "unix", "inet", "pty",
              "eventfd", "signalfd", "timerfd", "epoll", "app_listen", "app_conn",
              "link", "pidfd", "proc", "inotify", "fanotify")  # fmt: skip
SHMO_KINDS = ("anon", "memfd", "deleted")

PROC = Struct((
    F("pid", PID), F("ppid", Int(0, MAX_PID, "pid or 0")), F("pgid", Int(0, MAX_PID)),
    F("sid", Int(0, MAX_PID)), F("zombie", Bool()),
    F("exit_code", Int(0, U16), "wait status of a zombie"),
    F("exit_signal", Int(0, 64)),
    F("threads", List(PID), "tids, the leader first (none for a zombie)"),
    F("nspid", PID, "its pid in its own namespace"),
    F("nstids", List(PID), "the threads' tids there"),
    F("task", Struct((
        F("comm", Bytes(max=64)), F("uids", List(Int(0, U32), size=4)),
        F("gids", List(Int(0, U32), size=4)), F("groups", List(Int(0, U32), max=1 << 16)),
        F("caps", Struct(tuple(F(n, HEX) for n in ("CapInh", "CapPrm", "CapEff", "CapBnd",
                                                    "CapAmb")), name="zombie caps")),
        F("no_new_privs", Int(0, 1)), F("blocked", Int(0, U64)), F("ignored", Int(0, U64)),
        F("caught", Int(0, U64)), F("filters", Int(0, 1 << 16), "seccomp filters"),
        F("sched", List(Int(-20, 99), size=3), "policy, nice, real-time priority",
          required=False),
        F("seccomp", Int(1, 3), "its seccomp mode where 1 (strict) or 3 (seccomp killed it)",
          required=False),
        F("timerslack", Int(0), "ns", required=False),
        F("rlimits", Dict(Int(0, 15), Tuple((Int(), Int()), ("soft", "hard"))),
          "{resource: [soft, hard]}", required=False),
    ), name="zombie task"), "a zombie: what /proc shows of its task", required=False),
), name="proc")  # fmt: skip

LOCK_MODES = ("READ", "WRITE")
OFFSET = Int(0, (1 << 63) - 1)
OWN_LOCK = Struct((
    F("kind", Str(choices=("ofd", "flock"))), F("mode", Str(choices=LOCK_MODES)),
    F("start", OFFSET), F("end", Nullable(OFFSET), "nil: to the end of the file"),
    F("pid", PID, "an flock: the process that took it", required=False),
), extra=False, name="description lock")  # fmt: skip

VMA = Struct((
    F("start", ADDR), F("end", ADDR), F("prot", Int(0, 7)), F("shared", Bool()),
    F("kind", Str(choices=VMA_KINDS)), F("path", Str()), F("pgoff", Int()),
    F("flags", List(Str(max=2)), "smaps VmFlags"),
    F("data", Int(0, ADDR_END), "bytes of it saved", required=False),
    F("file", List(Int(), size=4), "[dev, ino, size, mtime_ns] of a mapped file",
      required=False),
    F("obj", Int(0, U32), "kind shmem: its object in SHMO", required=False),
    F("shmid", Int(0, (1 << 31) - 1), "kind sysv-shm: the segment", required=False),
    F("key", Int(0, U32), "kind sysv-shm: its key", required=False),
    F("hugetlb", Int(4096, 1 << 30), "its huge page size", required=False),
    F("guards", List(Tuple((ADDR, Int(1, ADDR_END)), ("address", "length"))),
      "guard pages", required=False),
    F("pkey", Int(0, 15), "its x86 protection key", required=False),
    F("zeros", List(Tuple((ADDR, Int(1, ADDR_END)), ("address", "length"))),
      "kind anon: runs of pages mapped to the shared zero page (read, never written)",
      required=False),
    F("thp", List(Tuple((ADDR, Int(1, ADDR_END)), ("address", "length"))),
      "kind anon: runs mapped by transparent huge pages, collapsed again (MADV_COLLAPSE)",
      required=False),
    F("locks", List(OWN_LOCK), "flocks and OFD locks held only through this mapping's file"
      " (its fd closed; engine/locks.py)", required=False),
), name="vma")  # fmt: skip

NS_KINDS = ("cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts")
TCP_STATES = ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
              "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV")
MEMFD = Struct((F("name", Str(max=249), "as given to memfd_create"),
                F("seals", Int(0, U32), "F_GET_SEALS")), extra=False, name="memfd")
POSIX_LOCK = Struct((
    F("pid", PID, "the process that holds it"), F("fd", FD, "through which fd"),
    F("mode", Str(choices=LOCK_MODES)), F("start", OFFSET),
    F("end", Nullable(OFFSET), "last byte (nil: to the end of the file)"),
), extra=False, name="posix lock")  # fmt: skip
LEASE = Struct((F("mode", Str(choices=LOCK_MODES)), F("pid", PID), F("fd", FD)),
               extra=False, name="lease")  # fmt: skip
SIG_OWNER = Struct((
    F("type", Int(0, 2), "F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2"),
    F("pid", PID, "as cryo saw it"), F("nspid", PID, "as its own pid namespace sees it"),
), extra=False, name="signal owner")  # fmt: skip
SOCKOPT = Tuple((Int(0, U32), Int(0, U32), Bytes(max=1 << 12)), ("level", "option", "value"))
SOCKADDR = List(AnyOf((Int(-(1 << 63), U64), Str(max=256))), min=1, max=8)
TCP_REPAIR = Struct((
    F("state", Int(1, 12), "tcpi_state"), F("inq", Int(0, U32)), F("outq", Int(0, U32)),
    F("unsent", Int(0, U32)), F("mss", Int(0, U32)), F("options", Int(0, U8), "tcpi_options"),
    F("snd_wscale", Int(0, 15)), F("rcv_wscale", Int(0, 15)), F("timestamp", Int(0, U32)),
    F("sndbuf", Int(0, U32)), F("rcvbuf", Int(0, U32)),
    F("window", List(Int(0, U32), size=5), "snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup"),
    F("inseq", Int(0, U32)), F("recvq", Bytes(max=1 << 30), "bytes received, unread"),
    F("outseq", Int(0, U32)), F("sendq", Bytes(max=1 << 30), "bytes sent, unacknowledged"),
    F("reuseaddr", Int(0, 1), "SO_REUSEADDR (repair mode overwrites it)"),
    F("buflock", Int(0, 3), "SO_BUF_LOCK: the sizes the program fixed (SOCK_SNDBUF_LOCK 1,"
      " SOCK_RCVBUF_LOCK 2), the others the kernel's to tune", required=False),
    F("full", Int(1, 1), "its send queue full (no POLLOUT): its writer waits for room",
      required=False),
    F("clamp", Int(0, U32), "TCP_WINDOW_CLAMP", required=False),
    F("lock", Str(max=64), "the nftables table that holds the connection until the restart",
      required=False),
), extra=False, name="tcp repair")  # fmt: skip

_HANDLE = (
    F("ino", Int(0, U64), "the inode watched"), F("dev", Int(0, U64), "its device"),
    F("htype", Int(-(1 << 31), (1 << 31) - 1), "its file handle's type", required=False),
    F("handle", Bytes(max=128), "its file handle (open_by_handle_at)", required=False),
    F("path", Str(), "its path, found from the handle at checkpoint", required=False),
    F("fmt", Int(0, U32), "its file type (S_IFMT)", required=False),
)
INOTIFY_WATCH = Struct((
    F("wd", Int(1, 1 << 31)), F("mask", Int(0, U32), "with IN_ONESHOT, IN_EXCL_UNLINK"),
    *_HANDLE), name="inotify watch")  # fmt: skip
FAN_MARK = Struct((
    F("on", Str(choices=("inode", "mount", "filesystem"))), F("mflags", Int(0, U32)),
    F("mask", Int(0, U64)), F("ignored", Int(0, U64), "the ignored mask"),
    *(F(f.name, f.type, f.doc, required=False) for f in _HANDLE),
), name="fanotify mark")  # fmt: skip
PROC_FILE = Struct((F("pid", PID), F("rest", Str(pattern=r"(/(?!\.\.?(/|$))[^/]+)*/?"),
                      "the path after /proc/PID (no `.` or `..` component)"),
                    F("kind", Str(choices=("file", "dir")))), name="proc file")  # fmt: skip

DESC = Struct((
    F("id", Int(0, MAX_ITEMS), "its index in `descs`"), F("kind", Str(choices=DESC_KINDS)),
    F("path", Str()), F("pos", Int(0, (1 << 63) - 1)), F("flags", Int(0, U32),
                                                         "as in fdinfo, without O_CLOEXEC"),
    F("ino", Int()), F("dev", Int()), F("mode", Int(0, U32)), F("size", Int(0, (1 << 63) - 1)),
    F("pid", PID, "where it was first seen"), F("fd", FD),
    F("deleted", Bool(), "file: deleted while open", required=False),
    F("blob", Int(0, MAX_ITEMS), "its contents: index of an FDAT record", required=False),
    F("data", Bytes(max=1 << 24), "pipe, fifo: bytes in flight", required=False),
    F("pipe_size", Int(4096, 1 << 31), "pipe, fifo: F_GETPIPE_SZ", required=False),
    F("packets", List(Int(1, 1 << 31), max=1 << 16), "a packet pipe (O_DIRECT): the size"
      " of each packet of `data`", required=False),
    F("sotype", Str(choices=("stream", "dgram", "seqpacket", "raw")), "unix, inet",
      required=False),
    F("peer", Int(), "unix: the other end's inode", required=False),
    F("queue", List(Bytes(max=1 << 24)), "unix: messages waiting", required=False),
    F("count", Int(), "eventfd", required=False),
    F("semaphore", Bool(), "eventfd", required=False),
    F("sigmask", Int(), "signalfd", required=False),
    F("clockid", Int(0, 15), "timerfd", required=False),
    F("ticks", Int(), "timerfd", required=False),
    F("settime_flags", Int(0, U32), "timerfd", required=False),
    F("value", List(Int(), size=2), "timerfd: [sec, nsec]", required=False),
    F("interval", List(Int(), size=2), "timerfd: [sec, nsec]", required=False),
    F("deadline", List(Int(), size=2), "timerfd with TFD_TIMER_ABSTIME: its expiry on its"
      " clock, [sec, nsec]", required=False),
    F("watch", List(List(Int(), size=3)), "epoll: [[fd, events, data], ...]",
      required=False),
    F("app_name", Bytes(max=108), "app_listen, app_conn: the cryo.app agent's socket name",
      required=False),
    # files deleted while open, memfds, FIFOs (engine/ghosts.py)
    F("uid", Int(0, U32), "file (deleted), fifo: its owner", required=False),
    F("gid", Int(0, U32), "file (deleted), fifo: its group", required=False),
    F("atime_ns", Int(0, (1 << 63) - 1), "file (deleted), fifo", required=False),
    F("mtime_ns", Int(0, (1 << 63) - 1), "file, fifo", required=False),
    F("handle", Bytes(max=4 + 128), "file: its file handle (name_to_handle_at: the handle"
      " type, 4 bytes little-endian, then the handle), the same file at restart",
      required=False),
    F("fsid", Int(0, (1 << 64) - 1), "file (with a handle): its filesystem's id (statfs"
      " f_fsid): with `dev`, the filesystem it was on (another machine's has the same"
      " device number)", required=False),
    F("node", Bool(), "dir, chr (deleted): made again at restart (mkdir, mknod), one inode for"
      " every description of the same dev and ino", required=False),
    F("rdev", Int(0, U32), "chr (deleted): its device number", required=False),
    F("ghost", Str(max=32, pattern=r"ghost-[0-9]+"), "file (deleted): the side file of its"
      " contents (shared by every description of the inode)", required=False),
    F("extents", List(Tuple((Int(0, (1 << 63) - 1), Int(1, (1 << 63) - 1)),
                            ("offset", "length"))),
      "file (deleted): its data ranges in the side file, in order (the rest are holes)",
      required=False),
    F("memfd", MEMFD, "file (deleted): a memfd", required=False),
    F("prealloc", List(Tuple((Int(0, (1 << 63) - 1), Int(1, (1 << 63) - 1)),
                             ("offset", "length"))),
      "file (deleted): ranges fallocate reserved and nothing wrote (FIEMAP's unwritten"
      " extents), past its end too", required=False),
    F("unlinkable", Bool(), "file (deleted, O_TMPFILE): linkat cannot name it (made with"
      " O_EXCL, or linked and unlinked since: its inode not I_LINKABLE)", required=False),
    F("xattrs", List(Tuple((Str(max=255), Bytes(max=1 << 16)), ("name", "value"))),
      "file (deleted): its extended attributes (user.*, POSIX ACLs)", required=False),
    F("iflags", Int(1, 0xF8), "file (deleted): its inode flags chattr sets (S, i, a, d, A;"
      " FS_IOC_GETFLAGS)", required=False),
    F("obj", Int(0, MAX_ITEMS), "file (deleted): also mapped, saved as that SHMO object",
      required=False),
    F("ns", Str(choices=NS_KINDS), "file: a namespace fd (/proc/PID/ns/NAME)",
      required=False),
    F("nsino", Int(1, U64), "file: the namespace's inode", required=False),
    # locks and signal owners (engine/locks.py)
    F("posix", List(POSIX_LOCK), "POSIX record locks held through it", required=False),
    F("locks", List(OWN_LOCK), "OFD locks and flocks held by it", required=False),
    F("lease", LEASE, "a lease held through it", required=False),
    F("owner", SIG_OWNER, "F_SETOWN_EX", required=False),
    F("sig", Int(1, 64), "F_SETSIG", required=False),
    # sockets (engine/sockets.py: unix; engine/inet.py: inet, packet, netlink)
    F("name", Nullable(Bytes(max=108)), "unix: its address (a leading NUL: abstract)",
      required=False),
    F("shutdown", Int(0, 3), "unix, inet datagram: SHUT_RD 1, SHUT_WR 2, both 3",
      required=False),
    F("in_flight", List(Tuple((Int(0, MAX_ITEMS), Int(0, MAX_ITEMS)),
                              ("message", "description"))),
      "unix: fds carried by a queued message (SCM_RIGHTS)", required=False),
    F("listen", Int(0, U32), "unix: listening, with this backlog", required=False),
    F("queued", List(AnyOf((Int(0, U64), Tuple((Str(max=64), Int(0, U16)),
                                                ("address", "port"))))),
      "connections waiting to be accepted, in order: unix, their sockets' inodes; TCP,"
      " their clients' [address, port]", required=False),
    F("unlinked", Bool(), "unix: its path no longer names it", required=False),
    F("sockfile", Tuple((Int(0, 0o7777), Int(0, U32), Int(0, U32), Int(0, (1 << 63) - 1),
                         Int(0, (1 << 63) - 1)), ("mode", "uid", "gid", "atime_ns",
                                                  "mtime_ns")),
      "unix bound to a path: its socket file's permissions, owner and times, put back"
      " on the file the restart binds", required=False),
    F("cwd", Path(), "unix: the directory a relative address is in", required=False),
    F("peer_gone", Bool(), "unix: its other end was closed", required=False),
    F("peer_name", Nullable(Bytes(max=108)), "unix: the peer's address", required=False),
    F("external", Bool(), "unix: the peer is outside the image (--ext-unix-sk)",
      required=False),
    F("peercred", Tuple((PID, Int(0, U32), Int(0, U32), List(Int(0, U32))),
                        ("pid", "euid", "egid", "groups")),
      "unix: SO_PEERCRED and SO_PEERGROUPS (who made its connection, or listened)",
      required=False),
    F("connect_cred", Tuple((PID, Int(0, U32), Int(0, U32), List(Int(0, U32))),
                            ("pid", "euid", "egid", "groups")),
      "unix: a client waiting to be accepted: who connects it again (its holder)",
      required=False),
    F("creds", List(Tuple((Int(0, MAX_ITEMS), Int(), Int(0, U32), Int(0, U32)),
                          ("message", "pid", "uid", "gid"))),
      "unix: SCM_CREDENTIALS of queued messages (SO_PASSCRED)", required=False),
    F("senders", List(Tuple((Int(0, MAX_ITEMS), Bytes(max=108)), ("message", "name"))),
      "unix datagram: queued messages from an autobound sender closed since, and its name"
      " (sent again from it)", required=False),
    F("opts", List(SOCKOPT), "unix, inet: options that differ from a new socket's",
      required=False),
    F("family", Int(0, 64, "address family"), "inet: AF_INET, AF_INET6, AF_PACKET,"
      " AF_NETLINK", required=False),
    F("proto", Int(0, U16), "inet", required=False),
    F("local", Nullable(SOCKADDR), "inet: getsockname", required=False),
    F("remote", Nullable(SOCKADDR), "inet: getpeername", required=False),
    F("state", Str(choices=TCP_STATES), "inet, TCP: its state", required=False),
    F("backlog", Int(0, U32), "inet, TCP LISTEN", required=False),
    F("closed", Bool(), "inet, TCP: restored closed (--tcp-close)", required=False),
    F("tcp", TCP_REPAIR, "inet, TCP connection (--tcp-established)", required=False),
    F("groups", List(Int(1, 1 << 16)), "netlink: multicast groups", required=False),
    # ptys (engine/tty.py)
    F("index", Int(0, 1 << 20), "pty: its number (/dev/pts/N)", required=False),
    F("master", Bool(), "pty: the master side", required=False),
    F("packet", Int(0, 1), "pty master: TIOCPKT", required=False),
    F("locked", Int(0, 1), "pty master: TIOCSPTLCK", required=False),
    F("excl", Int(1, 1), "pty master: its slave in exclusive mode (TIOCEXCL)",
      required=False),
    F("ldisc", Int(27, 27), "pty master: its slave's line discipline (TIOCSETD) when not"
      " N_TTY: N_NULL", required=False),
    F("stopped", Int(1, 2), "pty master: its slave's output stopped, by its STOP character"
      " under IXON (1; the START character goes on) or by tcflow TCOOFF (2)",
      required=False),
    F("pktstatus", Int(1, 255), "pty master in packet mode: the control status its next"
      " read returns (TIOCPKT_*)", required=False),
    F("termios", Bytes(max=256), "pty master: the slave's struct termios2 (its speeds"
      " too; an image of before: termios); stdio, ctty: the job's terminal's termios",
      required=False),
    F("winsize", Bytes(8), "pty master, stdio, ctty: struct winsize", required=False),
    F("termios_locked", Bytes(36), "pty master: its slave's locked settings"
      " (TIOCSLCKTRMIOS: the bits a program cannot change), when any", required=False),
    F("to_slave", Bytes(max=1 << 20), "pty master: bytes waiting for the slave; stdio,"
      " ctty (--shell-job, the job in the foreground): input waiting on its terminal",
      required=False),
    F("to_slave_lines", List(Tuple((Bytes(max=1 << 20), Int(0, 2)),
                                   ("bytes", "0 a line, 1 one ended by EOF, 2 being typed"))),
      "pty master, its slave canonical (stdio, ctty: the terminal): `to_slave` as the"
      " lines a read returns one by one"
      " (a line's delimiter included, an EOF not), then the line being typed",
      required=False),
    F("to_master", Bytes(max=1 << 20), "pty master: bytes waiting for the master",
      required=False),
    F("column", Int(0, 1 << 31), "pty master: the output column its line discipline"
      " keeps (where a tab expands to under XTABS, ONOCR's column 0), when not 0",
      required=False),
    F("held_echoes", Bytes(max=1 << 20), "pty master, its slave's output stopped by its"
      " STOP character: the echoes its line discipline held back (as written with output"
      " processing off), let out at the START character", required=False),
    F("to_slave_queued", Int(0, 1 << 20), "pty master, its slave noncanonical: how many of"
      " `to_slave`'s bytes its line discipline held (the rest was still in the"
      " terminal's buffer, taken under its settings later)", required=False),
    F("sessions", List(Tuple((PID, Int(0, MAX_PID)), ("sid", "foreground pgid"))),
      "pty master: the sessions whose controlling terminal it is", required=False),
    F("dev_tty", Bool(), "pty slave: opened as /dev/tty (its process's terminal)",
      required=False),
    F("foreground", Bool(), "stdio, ctty (--shell-job): the job was its terminal's"
      " foreground group (`termios`, `winsize`: that terminal's)", required=False),
    F("queued_on", Int(0, U64), "a connection waiting to be accepted: its listener (inet:"
      " the listener's description; unix: the listener's inode)", required=False),
    # pidfds, /proc files of the checkpoint's processes (engine/specialfds.py)
    F("target", PID, "pidfd: the process it refers to, as cryo saw it", required=False),
    F("thread_of", PID, "pidfd of a thread (``target``): that thread's process, the only one"
      " that holds it", required=False),
    F("start", Nullable(Int(0, U64)), "pidfd, /proc file of a process outside: that"
      " process's start time (reopened only on the same one)", required=False),
    F("late", Bool(), "pidfd, proc: opened once its process exists again", required=False),
    F("proc", PROC_FILE, "proc: which process's /proc file", required=False),
    # inotify and fanotify (engine/fsnotify.py); epoll watches of closed fds (anonfds.py)
    F("watches", List(INOTIFY_WATCH), "inotify: its watches, by wd", required=False),
    F("marks", List(FAN_MARK), "fanotify: its marks", required=False),
    F("fan_flags", Int(0, U32), "fanotify: fanotify_init flags", required=False),
    F("event_flags", Int(0, U32), "fanotify: fanotify_init event_f_flags", required=False),
    F("hidden", List(Tuple((FD, Int(0, U32), Int(0, U64), Int(0, MAX_ITEMS)),
                           ("fd", "events", "data", "desc"))),
      "epoll: watches added by an fd since closed, and the description they watch",
      required=False),
    F("hugetlb", Int(4096, 1 << 30), "file (deleted): a hugetlb memfd's page size",
      required=False),
), name="description")  # fmt: skip

FDENT = Struct((F("fd", FD), F("desc", Int(0, MAX_ITEMS), "index into FDSC descs"),
                F("cloexec", Bool())), name="fd")  # fmt: skip

TIMER = Struct((
    F("id", Int(0, (1 << 31) - 1)), F("signal", Int(0, 64)), F("value", Int()),
    F("notify", Str(choices=("signal", "none", "thread"))), F("tid", Int(0, MAX_PID)),
    F("clock", Int(-8, 15), "negative: the process's or its only thread's CPU clock"),
    F("spec", Bytes(32), "struct itimerspec"),
    F("to_thread", Bool(), "SIGEV_THREAD_ID: aimed at thread `tid`", required=False),
    F("deadline", Int(0, 1 << 63), "CLOCK_REALTIME set with TIMER_ABSTIME: its expiry, ns"
      " since the epoch", required=False),
), name="timer")  # fmt: skip

OBJ = Struct((
    F("id", Int(0, MAX_ITEMS), "its index in `objs`"), F("kind", Str(choices=SHMO_KINDS)),
    F("size", Int(0, 1 << 46)), F("mode", Int(0, 0o7777)), F("name", Str()),
    F("dev", Int()), F("ino", Int()),
    F("uid", Int(0, U32), "memfd, deleted: its owner", required=False),
    F("gid", Int(0, U32), "memfd, deleted: its group", required=False),
    F("huge", Int(0, 1 << 30), "hugetlb: its page size (0: none)", required=False),
    F("where", Tuple((PID, ADDR, ADDR), ("pid", "start", "end")),
      "a mapping of it in a process, to read it from", required=False),
), name="object")  # fmt: skip


class Kind:
    """One record kind of core.img."""

    __slots__ = ("body", "by", "count", "doc", "kind")

    def __init__(self, kind: bytes, by: str, count: str, body: Type, doc: str = "") -> None:
        self.kind = kind
        self.by = by  # the module that writes it
        self.count = count  # "one", "at most one", "per process", "per thread", "any"
        self.body = body
        self.doc = doc

    def __repr__(self) -> str:
        return f"Kind({self.kind!r})"

    @property
    def name(self) -> str:
        return self.kind.decode().strip()


KINDS: tuple[Kind, ...] = (
    Kind(b"HEAD", "engine/dump.py", "one", Struct((
        F("arch", Str(), "uname machine"), F("kernel", Str(), "release", required=False),
        F("cryo", Str(), "version", required=False),
        F("created", Num(), "unix time", required=False), F("hostname", Str(), required=False),
        F("page_size", Int(4096, 1 << 30), required=False),
        F("addrs", List(Str(max=64), max=1 << 12), "the host's addresses (cryo.app's"
          " restart_info)", required=False),
        F("root_pid", PID, "the process checkpointed (TREE root)"),
        F("pids", List(PID, min=1), "every process of the image"),
        F("clocks", Struct((
            F("monotonic", Int(0, 1 << 62), "ns"), F("boottime", Int(0, 1 << 62), "ns"),
            F("realtime", Int(0, (1 << 63) - 1), "ns since 1970"),
        ), name="clocks"), "the clocks as the processes read them when frozen (engine/"
          "clocks.py)", required=False),
        F("cpu", Struct((F("vendor", Str(max=64)), F("flags", List(Str(max=64), max=1024))),
                        name="cpu"), "the CPU's vendor and /proc/cpuinfo flags (engine/cpu.py)",
          required=False),
        F("vdso", Struct((
            F("symbols", List(Tuple((Str(max=256), Int(), Int()), ("name", "offset", "size")),
                              max=1024)),
            F("checksum", Int(), "xxh3-64 of its image"),
        ), name="vdso"), "the kernel's vDSO: its dynamic symbols (engine/vdso.py)",
          required=False),
    ), name="head"), "the image"),
    Kind(b"TREE", "engine/tree.py", "one", Struct((
        F("root", PID), F("scope", Str(choices=("process", "tree", "pgid", "sid"))),
        F("pidns", Bool(), "the root is pid 1 of its own pid namespace: restart makes a new one",
          required=False),
        F("procs", List(PROC, min=1), "every process, live or zombie"),
    ), name="tree"), "the processes, their parents, groups, sessions, threads"),
    Kind(b"TASK", "engine/task.py", "per process", Struct((
        F("pid", PID), F("ppid", Int(0, MAX_PID)), F("pgid", Int(0, MAX_PID)),
        F("sid", Int(0, MAX_PID)), F("comm", Str(max=64)), F("exit_signal", Int(0, 64)),
        F("personality", Int(0, U32)),
        F("rlimits", Dict(Int(0, 15), Tuple((Int(), Int()), ("soft", "hard"))),
          "{resource: [soft, hard]}"),
        F("prctl", Dict(Str(choices=("pdeathsig", "dumpable", "thp_disable",
                                     "child_subreaper")), Int(0, U32)),
          "{pdeathsig, dumpable, thp_disable, child_subreaper}"),
        F("audit", Nullable(List(Int(0, U32), size=2)), "[loginuid, sessionid]",
          required=False),
        F("oom_score_adj", Int(-1000, 1000), required=False),
        F("membarrier", Int(0, U32), "MEMBARRIER_CMD_GET_REGISTRATIONS", required=False),
        F("autogroup_nice", Nullable(Int(-20, 19)), "its scheduler autogroup's nice",
          required=False),
        F("mdwe", Int(1, U32), "PR_GET_MDWE, when set", required=False),
        F("coredump_filter", Int(0, U32), "/proc/PID/coredump_filter", required=False),
        F("futex_slots", Int(0, U32), "PR_FUTEX_HASH_GET_SLOTS: its private futex hash's"
          " slots (0: the global hash)", required=False),
        F("stops_collected", List(PID), "its group-stopped children whose stop a wait of its"
          " took (engine/jobctl.py)", required=False),
        F("continued_pending", List(PID), "its children whose CLD_CONTINUED report no wait"
          " of its took yet (engine/jobctl.py)", required=False),
        F("cgroups", List(List(Str(max=4096), size=3), max=64),
          "[[hierarchy id, controllers, path]] as in /proc/PID/cgroup", required=False),
        F("ldt", List(Tuple((Int(0, 8191), Int(1, U64)), ("index", "descriptor")),
                      max=8192), "the LDT's non-empty entries (engine/x86.py)",
          required=False),
        F("xcomp", Int(1, U64), "the xstate features permitted (ARCH_GET_XCOMP_PERM), when"
          " more than a new process's (AMX)", required=False),
        F("vma_policies", List(Tuple((ADDR, ADDR, Int(1, U32), Bytes(max=128)),
                                     ("start", "end", "mode", "nodes")), max=1 << 16),
          "the mappings' own NUMA policies (mbind; engine/numa.py)",
          required=False),
    ), name="task"), "ids, limits, comm, personality, prctl flags"),
    Kind(b"MM  ", "engine/memory.py", "per process", Struct((
        F("pid", PID), F("vmas", List(VMA), "the mappings, in address order (below)"),
        F("auxv", Bytes(max=1 << 16)), F("exe", Str()),
        F("mm", Struct(tuple(F(n, ADDR) for n in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
            "start_stack", "arg_start", "arg_end", "env_start", "env_end")),
            name="mm fields"), "{start_code, end_code, ..., env_end}"),
        F("mlockall", Int(0, 7), "MCL_ flags", required=False),
        F("ksm_merge_any", Bool(), required=False),
        F("pkeys", List(Int(1, 15)), "x86 protection keys allocated", required=False),
        F("cow", Struct((F("from", PID, "the parent"),
                         F("runs", List(Tuple((ADDR, Int(1, ADDR_END)), ("address", "length"))),
                           "pages shared copy-on-write with it, saved with it")),
                        name="cow"), required=False),
        F("cow_siblings", List(Tuple((PID, ADDR, Int(1, ADDR_END)),
                                     ("sibling", "address", "length"))),
          "pages shared copy-on-write with a sibling dumped before it (not with the parent,"
          " which rewrote its copy), saved with that sibling", required=False),
    ), name="mm"), "mm fields, auxv, exe, mappings"),
    Kind(b"SIGS", "engine/signals.py", "per process", Struct((
        F("pid", PID),
        F("actions", Dict(Int(1, 64), Bytes(32)), "{signal: struct kernel_sigaction}"),
        F("pending_shared", List(SIGINFO, max=1 << 16), "siginfo, 128 bytes each"),
    ), name="signals"), "actions and process-wide pending signals"),
    Kind(b"TIMR", "engine/timers.py", "per process", Struct((
        F("pid", PID), F("itimers", List(Bytes(32), size=3), "3 x struct itimerval"),
        F("posix", List(TIMER, max=1 << 16), "POSIX timers"),
    ), name="timers"), "interval timers and POSIX timers"),
    Kind(b"FILE", "engine/files.py", "per process", Struct((
        F("pid", PID), F("fds", List(FDENT, max=1 << 20)), F("cwd", Path()),
        F("root", Path()), F("umask", Int(0, 0o777)),
        F("cwd_deleted", Struct((
            F("dev", Int(0, U32 * U32)), F("ino", Int(0, U32 * U32)), F("mode", Int(0, U32)),
            F("uid", Int(0, U32)), F("gid", Int(0, U32)),
            F("atime_ns", Int(0, (1 << 63) - 1)), F("mtime_ns", Int(0, (1 << 63) - 1)),
        ), extra=False, name="deleted cwd"), "the working directory was deleted (``cwd`` is"
          " its path): made again at restart (ghosts.make_nodes)", required=False),
    ), name="files"), "the fd table, cwd, root, umask"),
    Kind(b"THRD", "engine/threads.py", "per thread", Struct((
        F("pid", PID), F("tid", PID), F("regs", Bytes(216), "struct user_regs_struct"),
        F("xstate", Bytes(max=1 << 20), "NT_X86_XSTATE area"),
        F("blocked", Int(), "signal mask"), F("pending", List(SIGINFO, max=1 << 16)),
        F("altstack", Bytes(24), "stack_t"), F("comm", Bytes(max=64)),
        F("clear_tid", Int()), F("rseq", Tuple((Int(), Int(0, U32), Int(0, U32)),
                                               ("address", "size", "signature"))),
        F("robust_list", Tuple((Int(), Int()), ("head", "size"))),
        F("no_new_privs", Int(0, 1)),
        F("uids", List(Int(0, U32), size=4), "real, effective, saved, fs"),
        F("gids", List(Int(0, U32), size=4), "real, effective, saved, fs"),
        F("groups", List(Int(0, U32), max=1 << 16)),
        F("caps", Struct(tuple(F(n, HEX) for n in ("CapInh", "CapPrm", "CapEff", "CapBnd",
                                                    "CapAmb")), name="caps"),
          "hex masks as in /proc"),
        F("securebits", Int(0, U32), required=False),
        F("pdeathsig", Int(0, 64), required=False), F("dumpable", Int(0, 3), required=False),
        F("timerslack", Int(0), "PR_GET_TIMERSLACK (ns)", required=False),
        F("mce_kill", Int(0, 2), "PR_MCE_KILL_GET: late, early, default", required=False),
        F("personality", Int(0, U32), "a thread's own personality, where it differs from"
          " its process's", required=False),
        F("fs", Struct((F("cwd", Str()), F("umask", Int(0, 0o777))), name="thread fs"),
          "a thread's own cwd and umask (unshare(CLONE_FS))", required=False),
        F("tsc", Int(1, 2), "PR_GET_TSC: enable, SIGSEGV", required=False),
        F("cpuid", Int(0, 0), "ARCH_GET_CPUID, when cpuid faults", required=False),
        F("sud", List(Int(), size=4), "syscall user dispatch, when on: mode, selector,"
          " offset, len", required=False),
        F("mempolicy", Tuple((Int(1, U32), Bytes(max=128)), ("mode", "nodes")),
          "get_mempolicy's mode (with its flags) and node mask, when not the default",
          required=False),
        F("sched", Struct((
            F("policy", Int(0, 7)), F("flags", Int()), F("nice", Int(-20, 19)),
            F("priority", Int(0, 99)), F("runtime", Int()), F("deadline", Int()),
            F("period", Int()), F("util", List(Int(0, 1024), size=2)),
        ), name="sched"), "sched_getattr's policy, flags, nice, priority, ...",
          required=False),
        F("affinity", List(Int(0, 8191), min=1), "CPUs", required=False),
        F("ioprio", Int(0, U16), required=False),
        F("group_stop", Int(0, 64), "stopped by this signal when seized (0: running)",
          required=False),
        F("seccomp", Struct((F("mode", Int(0, 2)),
                             F("filters", List(Tuple((Bytes(max=1 << 19), Int(0, U32)),
                                                     ("bpf", "flags"))),
                               "first installed first")),
                      name="seccomp"), required=False),
        F("restart", Struct((F("fn", Str()), F("left_ns", Int(0))), name="restart block"),
          "stopped in poll, FUTEX_WAIT or nanosleep whose time left only its restart"
          " block holds, or in epoll_wait/epoll_pwait (fn \"epoll\") or rt_sigtimedwait,"
          " semtimedop, epoll_pwait2, io_getevents, io_pgetevents (fn \"timespec\"), their"
          " timeout's end read off its kernel stack: its fn and that time (ns;"
          " engine/restartblock.py)",
          required=False),
    ), name="thread"), "one thread: registers, xstate, mask, pending, credentials"),
    Kind(b"FDSC", "engine/files.py", "at most one", Struct((
        F("descs", List(DESC), "every open file description, once (below)"),
    ), name="descriptions"), "the open file descriptions"),
    Kind(b"SHMO", "engine/shmem.py", "at most one", Struct((
        F("objs", List(OBJ), "[{id, kind, size, mode, name, dev, ino}]"),
    ), name="objects"), "shared memory objects"),
    Kind(b"FDAT", "engine/files.py", "any", Bytes(), "RAW: contents of a file deleted while"
         " open (a description's `blob`)"),
    Kind(b"PBLK", "engine/memory.py", "any", Struct((
        F("index", Int(0, MAX_ITEMS), "its place among the blocks"),
        F("offset", Int(4096, 1 << 50), "in pages.img, 4096-aligned"),
        F("stored", Int(0, MAX_BLOCK), "bytes there"), F("raw", Int(0, MAX_BLOCK),
                                                          "bytes of page data"),
        F("codec", Str(choices=("none", "zstd"))), F("csum", Int(), "xxh3-64 of the stored bytes"),
        F("runs", List(Tuple((ADDR, Int(1, MAX_BLOCK)), ("address", "length")), min=1),
          "where the raw bytes go, in order"),
        F("pid", PID, "addresses in that process", required=False),
        F("obj", Int(0, MAX_ITEMS), "offsets in that shared memory object", required=False),
    ), name="block"), "a block of page data in pages.img"),
    Kind(b"APPX", "engine/appchannel.py", "any", Struct((
        F("pid", PID),
        F("dropped", List(Tuple((ADDR, Int(1, U64)), ("address", "length"))),
          "memory the application left out (cryo.app.advise): zeros at restart"),
        F("files", List(Struct((
            F("path", Path()), F("side", Str(max=255, pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]*")),
            F("mode", Int(0, 0o7777)), F("size", Int(0, 1 << 40)),
        ), name="saved file")), "files the application saved (cryo.app.add_saved_file)"),
    ), name="application"), "what a cryo.app agent asked of the checkpoint"),
    Kind(b"EPRD", "engine/epollready.py", "any", Struct((
        F("pid", PID),
        F("epolls", List(Struct((
            F("fd", FD),
            F("ready", List(Tuple((FD, Int(0, U32), Int(0, U64)), ("fd", "events", "data"))),
              "its edge-triggered and one-shot watches on its ready list, in order"),
            F("disarmed", List(Tuple((FD, Int(0, U32), Int(0, U64)), ("fd", "events", "data"))),
              "its one-shot watches that fired (no event until rearmed)", required=False),
        ), name="epoll ready list"), min=1), "epolls with edge-triggered or one-shot watches"),
    ), name="epoll ready lists"), "which watches wait on each epoll's ready list"),
    Kind(b"AIOR", "engine/aio.py", "any", Struct((
        F("pid", PID),
        F("rings", List(Struct((
            F("addr", ADDR, "its ring's address: the context's id"),
            F("length", Int(1, 1 << 40), "the ring mapping's size"),
            F("index", Int(0, U32), "its index in the process's table"),
            F("max_reqs", Int(1, U32), "what io_setup was given"),
            F("nr", Int(1, U32), "the ring's events"),
            F("head", Int(0, U32)), F("tail", Int(0, U32)),
            F("events", Bytes(max=1 << 30), "the io_events not reaped, head first"),
        ), name="AIO context"), min=1), "its io_setup contexts, by index"),
    ), name="AIO contexts"), "AIO rings and the completions they hold"),
    Kind(b"HSPF", "engine/hsperf.py", "any", Struct((
        F("pid", PID),
        F("files", List(Struct((
            F("path", Path()), F("side", Str(max=255, pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]*")),
            F("size", Int(0, 1 << 20)), F("mtime", Int(), "st_mtime_ns"),
            F("mode", Int(0, 0o7777)), F("uid", Int(0, U32)), F("gid", Int(0, U32)),
        ), name="JVM performance file"), min=1), "its bytes, put back at restart"),
    ), name="hsperfdata"), "the JVM's /tmp/hsperfdata_USER/PID, mapped shared"),
    Kind(b"SPMF", "engine/spmf.py", "any", Struct((
        F("pid", PID),
        F("files", List(Struct((
            F("path", Path()), F("name", Str(max=255, pattern=r"spmf-[0-9a-f]{64}"),
                                 "its side file"),
            F("exe", Bool(), "the executable (else a private file mapping)"),
            F("size", Int(0, 1 << 50)), F("mtime", Int(), "st_mtime_ns"),
            F("mode", Int(0, 0o7777)), F("dev", Int(0, U64)), F("ino", Int(0, U64)),
        ), name="saved mapped file")), "the executable and libraries saved (--save-files)"),
    ), name="saved mapped files"), "the files a process maps, saved with --save-files"),
    Kind(b"MAPF", "engine/changed.py", "any", Struct((
        F("pid", PID),
        F("files", List(Struct((
            F("path", Path()), F("size", Int(0, 1 << 62)), F("mtime", Int(), "st_mtime_ns"),
            F("ranges", List(Tuple((Int(0, 1 << 62), Int(0, 1 << 62)), ("offset", "length"))),
              "the bytes its private mappings cover that the image does not hold, merged"),
            F("hash", Bytes(16), "xxh3-128 of those bytes"),
            F("build_id", Bytes(max=64), "its ELF build-id", required=False),
        ), name="mapped file")), "every file the process maps privately"),
    ), name="mapped files"), "what a restart checks of each file mapped privately (its"
         " pages not in the image are read from it)"),
    Kind(b"TRAK", "engine/dirty.py", "any", Struct((
        F("pid", PID), F("token", Str(max=64)),
    ), name="tracking"), "the write tracking armed in a process (stores)"),
    Kind(b"SIDE", "image/sink.py", "any", Struct((
        F("name", Str(max=255, pattern=r"[A-Za-z0-9][A-Za-z0-9._+-]*")),
        F("size", Int(0, 1 << 50)), F("digest", Bytes(32), "BLAKE2b-256 of its bytes"),
    ), name="side file"), "a side file of the image (System V segments)"),
    Kind(b"MADE", "image/sink.py", "at most one", Struct((
        F("uid", Int(0, U32), "the effective uid that made the checkpoint"),
        F("gid", Int(0, U32), required=False),
    ), name="made"), "who made the image (cryo.image.trust)"),
    Kind(b"SEAL", "image/seal.py", "at most one", Struct((
        F("mac", Bytes(32), "keyed BLAKE2b of the file before this record"),
        F("key", Bytes(8), "which key", required=False),
    ), name="seal"), "the last record before END"),
)
BY_KIND = {k.kind: k for k in KINDS}
SUBSTRUCTS = (PROC, VMA, DESC, FDENT, OBJ, TIMER, MEMFD, POSIX_LOCK, OWN_LOCK, LEASE,
              SIG_OWNER, TCP_REPAIR)
PER_PROCESS = (b"TASK", b"MM  ", b"SIGS", b"TIMR", b"FILE")


# -- checking an image -------------------------------------------------------------------


def _label(kind: bytes, i: int, rec: Any) -> str:
    name = kind.decode(errors="replace").strip()
    who = ""
    if isinstance(rec, dict):
        ids = [f"{k} {rec[k]}" for k in ("pid", "tid", "index") if isinstance(rec.get(k), int)]
        who = f" ({', '.join(ids)})" if ids else ""
    return f"{name} record {i}{who}"


class _Checker:
    def __init__(self, image: Any) -> None:
        self.image = image
        self.what = f"{getattr(image, 'what', 'image')} {image.path}"

    def fail(self, where: str, why: str) -> ImageCorrupt:
        return ImageCorrupt(f"{self.what} is corrupt: {where}: {why}", path=self.image.path)

    def records(self, kind: bytes) -> list[Any]:
        return list(self.image.raw(kind))

    def shape(self) -> None:
        """Every record of a declared kind against its declaration; counts."""
        for k in KINDS:
            recs = self.records(k.kind)
            if k.count == "one" and len(recs) != 1:
                raise self.fail(f"{k.name} records", f"{len(recs)}, not exactly one")
            if k.count == "at most one" and len(recs) > 1:
                raise self.fail(f"{k.name} records", f"{len(recs)}, not at most one")
            ok = fast(k.body) if recs else None  # (made for the kinds there are)
            for i, rec in enumerate(recs):
                if ok is not None and ok(rec):
                    continue
                try:
                    k.body.check(rec)
                except Bad as err:
                    where = ".".join(err.where).replace(".[", "[")
                    raise self.fail(_label(k.kind, i, rec),
                                    f"{where}: {err.why}" if where else err.why) from None

    def refs(self) -> None:
        """References between records."""
        head = self.records(b"HEAD")[0]
        tree = self.records(b"TREE")[0]
        procs = tree["procs"]
        pids = [p["pid"] for p in procs]
        if len(set(pids)) != len(pids):
            raise self.fail("TREE", "a pid is listed twice")
        if tree["root"] not in pids:
            raise self.fail("TREE", f"root {tree['root']} is not one of its processes")
        if head["root_pid"] != tree["root"] or sorted(set(head["pids"])) != sorted(pids):
            raise self.fail("HEAD", "root_pid or pids differ from TREE")
        live = {p["pid"]: p for p in procs if not p["zombie"]}
        tids: dict[int, int] = {}
        for p in procs:
            if len(p["nstids"]) != len(p["threads"]) or len(set(p["threads"])) != len(p["threads"]):
                raise self.fail(f"TREE process {p['pid']}", "threads and nstids do not match")
            if not p["zombie"] and p["threads"][:1] != [p["pid"]]:
                raise self.fail(f"TREE process {p['pid']}", "its first thread is not its leader")
            for t in p["threads"]:
                if t in tids:
                    raise self.fail(f"TREE process {p['pid']}", f"thread {t} is listed twice")
                tids[t] = p["pid"]
        for kind in PER_PROCESS:
            seen: set[int] = set()
            for i, rec in enumerate(self.records(kind)):
                pid = rec["pid"]
                if pid not in live:
                    raise self.fail(_label(kind, i, rec), f"pid {pid} is not a live process of"
                                    " TREE")  # fmt: skip
                if pid in seen:
                    raise self.fail(_label(kind, i, rec), f"a second record for pid {pid}")
                seen.add(pid)
            missing = sorted(set(live) - seen)
            if missing:
                raise self.fail(f"process {missing[0]} of TREE",
                                f"no {kind.decode().strip()} record")  # fmt: skip
        seen_t: set[int] = set()
        for i, rec in enumerate(self.records(b"THRD")):
            where = _label(b"THRD", i, rec)
            if rec["pid"] not in live:
                raise self.fail(where, f"pid {rec['pid']} is not a live process of TREE")
            if tids.get(rec["tid"]) != rec["pid"]:
                raise self.fail(where, f"tid {rec['tid']} is not a thread of {rec['pid']} in"
                                " TREE")  # fmt: skip
            if rec["tid"] in seen_t:
                raise self.fail(where, f"a second record for tid {rec['tid']}")
            seen_t.add(rec["tid"])
        for pid, p in live.items():
            for t in p["threads"]:
                if t not in seen_t:
                    raise self.fail(f"process {pid} of TREE", f"no THRD record for thread {t}")
        self.files(live)
        vmas = self.memory(live)
        self.blocks(vmas)

    def files(self, live: dict[int, Any]) -> None:
        pids = {p["pid"] for p in self.records(b"TREE")[0]["procs"]}
        fdsc = self.records(b"FDSC")
        descs = fdsc[0]["descs"] if fdsc else []
        blobs = len(self.records(b"FDAT"))
        for i, d in enumerate(descs):
            where = f"FDSC description {i}"
            if d["id"] != i:
                raise self.fail(where, f"id {d['id']}, not its index {i}")
            if d.get("node") and (d["kind"] not in ("dir", "chr") or not d.get("deleted")
                                  or (d["kind"] == "chr") != ("rdev" in d)):  # fmt: skip
                raise self.fail(where, f"a {d['kind']} made again (node) must be a deleted"
                                " directory, or a deleted character device with its rdev")
            if d.get("deleted") and not d.get("node") and not (
                    isinstance(d.get("blob"), int) and d["blob"] < blobs):  # fmt: skip
                raise self.fail(where, f"blob {d.get('blob')} is not an FDAT record")
            if "blob" in d and not d["blob"] < blobs:
                raise self.fail(where, f"blob {d['blob']} is not an FDAT record")
            if d["kind"] in ("file", "dir", "chr", "fifo") and not d["path"].startswith("/"):
                raise self.fail(where, f"path {d['path']!r} is not absolute")
            if d["kind"] == "stdio" and d["fd"] > 2:
                raise self.fail(where, f"stdio on fd {d['fd']}")
            if d["kind"] == "unix" and ("sotype" not in d or "peer" not in d):
                raise self.fail(where, "a unix socket without sotype or peer")
            if d["kind"] == "timerfd" and any(x not in d for x in (
                    "clockid", "ticks", "settime_flags", "value", "interval")):  # fmt: skip
                raise self.fail(where, "a timerfd without its timer")
            if d["kind"] == "eventfd" and ("count" not in d or "semaphore" not in d):
                raise self.fail(where, "an eventfd without count or semaphore")
            if d["kind"] == "signalfd" and "sigmask" not in d:
                raise self.fail(where, "a signalfd without sigmask")
            if d["kind"] == "epoll" and "watch" not in d:
                raise self.fail(where, "an epoll without watch")
            if "data" in d and len(d["data"]) > d.get("pipe_size", 1 << 16):
                raise self.fail(where, "more data in flight than the pipe holds")
            end = 0
            for off, n in d.get("extents", []):
                if off < end or off + n > d["size"]:
                    raise self.fail(where, f"extent {off}+{n} overlaps the one before or"
                                    f" lies past its size {d['size']}")  # fmt: skip
                end = off + n
            for msg, desc in d.get("in_flight", []):
                if desc >= len(descs) or msg >= len(d.get("queue", [])):
                    raise self.fail(where, f"fd in flight: message {msg} or description"
                                    f" {desc} is not there")  # fmt: skip
            if d["kind"] == "inet" and d.get("state") == "LISTEN" and "backlog" not in d:
                raise self.fail(where, "a TCP listener without backlog")
            if d["kind"] == "inet" and "family" not in d:
                raise self.fail(where, "an inet socket without family")
            if "memfd" in d and not (d.get("deleted") and d["path"].startswith("/memfd:")):
                raise self.fail(where, "a memfd that is not a deleted /memfd: file")
            if d["kind"] == "inet" and "queued_on" in d and not (
                    d["queued_on"] < len(descs) and descs[d["queued_on"]]["kind"] == "inet"):
                raise self.fail(where, f"queued on description {d['queued_on']}, which is"
                                " not a TCP listener of FDSC")  # fmt: skip
            if d["kind"] == "proc" and not ("proc" in d and d["proc"]["pid"] in pids):
                raise self.fail(where, "a /proc file of a process that is not in TREE")
            if d["kind"] == "pidfd" and "thread_of" in d:  # a thread's (specialfds.py)
                procs = {p["pid"]: p for p in self.records(b"TREE")[0]["procs"]}
                if d.get("target") not in procs.get(d["thread_of"], {}).get("threads", ()):
                    raise self.fail(where, f"a pidfd of {d.get('target')}, which is not a"
                                    f" thread of process {d['thread_of']} of TREE")  # fmt: skip
            elif d["kind"] == "pidfd" and d.get("late") and d.get("target") not in pids:
                raise self.fail(where, f"a pidfd of {d.get('target')}, which is not in TREE")
            for lk in [*d.get("posix", []), *([d["lease"]] if "lease" in d else [])]:
                if lk["pid"] not in live:
                    raise self.fail(where, f"a lock of pid {lk['pid']}, which is not a live"
                                    " process of TREE")  # fmt: skip
        for i, rec in enumerate(self.records(b"FILE")):
            fds = [e["fd"] for e in rec["fds"]]
            if len(set(fds)) != len(fds):
                raise self.fail(_label(b"FILE", i, rec), "an fd is listed twice")
            for e in rec["fds"]:
                if e["desc"] >= len(descs):
                    raise self.fail(_label(b"FILE", i, rec),
                                    f"fd {e['fd']}: description {e['desc']} is not in FDSC")
            by_fd = {e["fd"]: descs[e["desc"]] for e in rec["fds"]}
            for e in rec["fds"]:
                d = descs[e["desc"]]
                if d["kind"] == "epoll" and d["pid"] == rec["pid"]:
                    for fd, _ev, _data in d["watch"]:
                        if fd not in by_fd:
                            raise self.fail(_label(b"FILE", i, rec), f"epoll fd {e['fd']}"
                                            f" watches fd {fd}, which it does not have")

    def memory(self, live: dict[int, Any]) -> dict[int, list[Any]]:
        shmo = self.records(b"SHMO")
        objs = shmo[0]["objs"] if shmo else []
        for i, o in enumerate(objs):
            if o["id"] != i:
                raise self.fail(f"SHMO object {i}", f"id {o['id']}, not its index {i}")
        out: dict[int, list[Any]] = {}
        for i, rec in enumerate(self.records(b"MM  ")):
            where = _label(b"MM  ", i, rec)
            prev = 0
            for v in rec["vmas"]:
                at = f"mapping {v['start']:#x}-{v['end']:#x}"
                if v["start"] % 4096 or v["end"] % 4096 or v["start"] >= v["end"]:
                    raise self.fail(where, f"{at} is not page-aligned and non-empty")
                if v["start"] < prev:
                    raise self.fail(where, f"{at} overlaps the one before or is out of order")
                prev = v["end"]
                if v["kind"] == "shmem" and not (isinstance(v.get("obj"), int)
                                                 and v["obj"] < len(objs)):  # fmt: skip
                    raise self.fail(where, f"{at}: object {v.get('obj')} is not in SHMO")
                if v["kind"] == "sysv-shm" and ("shmid" not in v or "key" not in v):
                    raise self.fail(where, f"{at}: a System V mapping without shmid or key")
                if v["kind"] in ("file", "shared-file") and not v["path"].startswith("/"):
                    raise self.fail(where, f"{at}: path {v['path']!r} is not absolute")
            out[rec["pid"]] = rec["vmas"]
        self.objs = objs
        return out

    def blocks(self, vmas: dict[int, list[Any]]) -> None:
        """Every block's runs inside a saved mapping of its process, or inside its object
        (both readers' blocks: a store's are planned from its page maps)."""
        sizes = {o["id"]: o["size"] for o in self.objs}
        spans = {pid: _merged([(v["start"], v["end"]) for v in vs]) for pid, vs in vmas.items()}
        for i, rec in enumerate(self.records(b"PBLK")):
            if rec["index"] != i:
                raise self.fail(_label(b"PBLK", i, rec), f"index {rec['index']}, not {i}")
            if rec["offset"] % 4096:
                raise self.fail(_label(b"PBLK", i, rec), "offset is not 4096-aligned")
            if sum(n for _, n in rec["runs"]) != rec["raw"]:
                raise self.fail(_label(b"PBLK", i, rec), "runs do not add up to raw")
            if rec["codec"] == "none" and rec["stored"] != rec["raw"]:
                raise self.fail(_label(b"PBLK", i, rec), "stored and raw differ, uncompressed")
        for i, b in enumerate(self.image.blocks):
            where = f"pages block {b.get('index', i)}"
            runs = b.get("runs")
            if not isinstance(runs, list):
                raise self.fail(where, "no runs")
            if ("pid" in b) == ("obj" in b):
                raise self.fail(where, "neither (or both) of pid and obj")
            if "pid" in b:
                if b["pid"] not in spans:
                    raise self.fail(where, f"pid {b['pid']} is not a live process")
                for a, n in runs:
                    if not _inside(spans[b["pid"]], a, a + n):
                        raise self.fail(where, f"run {a:#x}+{n:#x} is outside the mappings of"
                                        f" {b['pid']}")  # fmt: skip
            else:
                if b["obj"] not in sizes:
                    raise self.fail(where, f"object {b['obj']} is not in SHMO")
                for a, n in runs:
                    if a < 0 or a + n > sizes[b["obj"]]:
                        raise self.fail(where, f"run {a:#x}+{n:#x} is outside object"
                                        f" {b['obj']} of {sizes[b['obj']]} bytes")  # fmt: skip


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _inside(spans: list[tuple[int, int]], a: int, b: int) -> bool:
    import bisect

    i = bisect.bisect_right(spans, (a, 1 << 64)) - 1
    return i >= 0 and spans[i][0] <= a and b <= spans[i][1]


def undeclared(t: Type, v: Any, where: str = "") -> Iterator[str]:
    """The keys of ``v`` that ``t`` does not declare (accepted as extra), as paths like
    ``descs[3].locks[0].owner``: what a real image must not have (tests)."""
    if isinstance(t, Struct) and isinstance(v, dict):
        declared = {f.name: f.type for f in t.fields}
        for k, x in v.items():
            if k in declared:
                yield from undeclared(declared[k], x, f"{where}.{k}" if where else str(k))
            else:
                yield f"{where}.{k}" if where else str(k)
    elif isinstance(t, Nullable):
        yield from undeclared(t.inner, v, where)
    elif isinstance(t, AnyOf):
        for o in t.options:
            try:
                o.check(v)
            except Bad:
                continue
            yield from undeclared(o, v, where)
            return
    elif isinstance(t, List) and isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            yield from undeclared(t.item, x, f"{where}[{i}]")
    elif isinstance(t, Tuple) and isinstance(v, (list, tuple)):
        for i, (it, x) in enumerate(zip(t.items, v, strict=False)):
            yield from undeclared(it, x, f"{where}[{i}]")
    elif isinstance(t, Dict) and isinstance(v, dict):
        for k, x in v.items():
            yield from undeclared(t.value, x, f"{where}[{k!r}]")


def undeclared_keys(image: Any) -> list[str]:
    """Every key of every record of ``image`` that its declaration does not name, as
    ``KIND record i: path`` (an empty list for an image the schema covers whole)."""
    out: list[str] = []
    for k in KINDS:
        for i, rec in enumerate(image.raw(k.kind)):
            out.extend(f"{k.name} record {i}: {p}" for p in undeclared(k.body, rec))
    return out


def check(image: Any) -> None:
    """Check every record of ``image`` (an ImageSource: ``raw(kind)``, ``blocks``,
    ``path``) against its declaration and the others; ImageCorrupt on the first misfit."""
    c = _Checker(image)
    c.shape()
    c.refs()


# -- the tables of docs/image-format.md -------------------------------------------------


def _keys(t: Type) -> str:
    if isinstance(t, Struct):
        parts = []
        for f in t.fields:
            bit = f"`{f.name}`"
            extra = [x for x in (f.type.doc if not isinstance(f.type, Struct) else "",
                                 f.doc) if x]
            if not f.required:
                extra.append("optional")
            if extra:
                bit += f" ({'; '.join(extra)})"
            parts.append(bit)
        return ", ".join(parts)
    return t.doc


def doc_tables() -> str:
    """The record tables of docs/image-format.md, generated from the declarations."""
    lines = ["| kind | written by | how many | keys |", "| --- | --- | --- | --- |"]
    for k in KINDS:
        keys = _keys(k.body) if isinstance(k.body, Struct) else k.doc
        lines.append(f"| `{k.kind.decode()}` | {k.by} | {k.count} | {keys} |")
    lines.append("")
    lines.append("Maps inside records:")
    lines.append("")
    lines.append("| map | keys |")
    lines.append("| --- | --- |")
    for t in SUBSTRUCTS:
        lines.append(f"| {t.name} | {_keys(t)} |")
    return "\n".join(lines) + "\n"


BEGIN = "<!-- generated by python -m cryo.image.schema: begin -->"
END = "<!-- generated by python -m cryo.image.schema: end -->"


def render_doc(text: str) -> str:
    """``text`` (docs/image-format.md) with its generated part replaced."""
    a, b = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:a] + "\n" + doc_tables() + text[b:]


def main(argv: Iterable[str] | None = None) -> int:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--write"]:
        path = args[1] if len(args) > 1 else "docs/image-format.md"
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(render_doc(text))
        return 0
    sys.stdout.write(doc_tables())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
