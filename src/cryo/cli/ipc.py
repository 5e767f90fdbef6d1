"""``cryo ipc ...`` and the seed's krgipcmsg/krgipcsem/krgipcshm commands.

Parsing and printing only: the work is in :mod:`cryo.ipc`.
"""

from __future__ import annotations

import argparse
import grp
import pwd
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cryo.cli.fmt import human

if TYPE_CHECKING:  # imported where used: `cryo checkpoint` should not pay for cryo.ipc
    from cryo import ipc
    from cryo.ipc import Kind

KINDS = ["msg", "sem", "shm"]  # cryo.ipc.Kind's values
STORE_HELP = "repository of saved objects (default: $CRYO_STORE or /var/lib/cryo)"


def _store_option(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    # On the leaves too, so that it may come after the subcommand; SUPPRESS keeps a value
    # given before the subcommand.
    p.add_argument("--store", metavar="DIR", help=STORE_HELP,
                   default=None if top else argparse.SUPPRESS)  # fmt: skip


def _key(text: str) -> int:
    from cryo import ipc
    try:
        return ipc.parse_key(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _owner(text: str) -> int:
    from cryo import ipc
    try:
        return ipc.parse_owner(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _nonneg(text: str) -> int:
    try:
        v = int(text, 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if v < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return v


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ipc",
        help="save and load System V IPC objects on their own",
        description="Save and load System V message queues, semaphore sets and shared memory"
        " segments of this IPC namespace, apart from any process, with their own versions.",
    )
    _store_option(p, top=True)
    cmds = p.add_subparsers(dest="ipc_command", required=True, metavar="COMMAND")

    s = cmds.add_parser("save", help="save an object as a new version (prints the version),"
                        " or --all objects as a new set (prints the set)")  # fmt: skip
    s.add_argument("kind", nargs="?", choices=KINDS, help="msg, sem or shm")
    s.add_argument("id", nargs="?", type=_nonneg, help="the object's id (as ipcs shows it)")
    s.add_argument("--all", action="store_true", help="every object of the IPC namespace")
    s.add_argument("--key", type=_key, help="with --all: only objects with this key")
    s.add_argument("--owner", type=_owner, help="with --all: only objects of this user")
    _store_option(s)
    s.set_defaults(func=_save)

    ld = cmds.add_parser("load", help="recreate an object from a version (latest by default),"
                         " or --all objects of a set")  # fmt: skip
    ld.add_argument("kind", nargs="?", choices=KINDS, help="msg, sem or shm")
    ld.add_argument("id", nargs="?", type=_nonneg, help="the id, or with --all the set")
    ld.add_argument("version", nargs="?", type=_nonneg, help="the version (default: latest)")
    ld.add_argument("--all", metavar="SET", type=_nonneg, help="every object of set SET")
    ld.add_argument("--replace", action="store_true",
                    help="remove an object that holds the id or key first")  # fmt: skip
    ld.add_argument(
        "--sysctl",
        action="store_true",
        help="with --all: first set the namespace limits saved with the set",
    )
    _store_option(ld)
    ld.set_defaults(func=_load)

    ls = cmds.add_parser("list", help="what is saved: versions, sizes, dates")
    ls.add_argument("kind", nargs="?", choices=[*KINDS, "set"], help="only this kind")
    _store_option(ls)
    ls.set_defaults(func=_list)

    sh = cmds.add_parser("show", help="describe a saved version (checks it through)")
    sh.add_argument("kind", choices=[*KINDS, "set"], help="msg, sem, shm, or set")
    sh.add_argument("id", type=_nonneg, help="the id, or the set")
    sh.add_argument("version", nargs="?", type=_nonneg, help="the version (default: latest)")
    _store_option(sh)
    sh.set_defaults(func=_show)

    lv = cmds.add_parser("ls-live", help="the live objects of this IPC namespace, like ipcs")
    lv.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    lv.set_defaults(func=_ls_live)


# ---------------------------------------------------------------------------------------------
# commands


def _usage(args: argparse.Namespace, message: str) -> int:
    print(f"cryo ipc {args.ipc_command}: {message}", file=sys.stderr)
    return 2


def _save(args: argparse.Namespace) -> int:
    from cryo import ipc
    if args.all:
        if args.kind or args.id is not None:
            return _usage(args, "--all takes no kind or id")
        saved = ipc.save_all(store=args.store, key=args.key, owner=args.owner)
        print(saved.number)
        for m in saved.members:
            print(f"  {m.kind.value} {m.id} version {m.version}", file=sys.stderr)
        for k, i in saved.vanished:
            print(f"  {k.value} {i} vanished before it was saved", file=sys.stderr)
        return 0
    if args.kind is None or args.id is None:
        return _usage(args, "give KIND and ID, or --all")
    if args.key is not None or args.owner is not None:
        return _usage(args, "--key and --owner go with --all")
    print(ipc.save(args.kind, args.id, store=args.store).version)
    return 0


def _load(args: argparse.Namespace) -> int:
    from cryo import ipc
    if args.all is not None:
        if args.kind or args.id is not None:
            return _usage(args, "--all SET takes no kind or id")
        for r in ipc.load_all(args.all, store=args.store, replace=args.replace,
                              sysctl=args.sysctl):  # fmt: skip
            _print_loaded(r)
        return 0
    if args.kind is None or args.id is None:
        return _usage(args, "give KIND and ID [VERSION], or --all SET")
    if args.sysctl:
        return _usage(args, "--sysctl goes with --all")
    _print_loaded(ipc.load(args.kind, args.id, args.version, store=args.store,
                           replace=args.replace))  # fmt: skip
    return 0


def _print_loaded(r: ipc.Loaded) -> None:
    print(f"{r.kind.value} {r.id} loaded from version {r.version} (key {_hex(r.key)})")
    for note in r.notes:
        print(f"  note: {note}", file=sys.stderr)


def _list(args: argparse.Namespace) -> int:
    from cryo import ipc
    entries = ipc.list_saved(store=args.store)
    rows = []
    for e in entries:
        kind = e.kind.value if e.kind else "set"
        if args.kind and kind != args.kind:
            continue
        rows.append((kind, str(e.id), "-" if e.kind is None else str(e.version),
                     human(e.size), _date(e.mtime)))  # fmt: skip
    _table(("KIND", "ID", "VERSION", "SIZE", "SAVED"), rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    from cryo import ipc
    if args.kind == "set":
        if args.version is not None:
            return _usage(args, "a set has no versions")
        info = ipc.read_set(args.id, store=args.store)
        print(f"set {info.number}  ({info.path})")
        print(f"saved      {_date(info.saved_at)}")
        flt = {k: v for k, v in info.filter.items() if v is not None}
        if flt:
            print(f"filter     {', '.join(f'{k}={v}' for k, v in flt.items())}")
        _table(("KIND", "ID", "VERSION", "KEY"),
               [(k.value, str(i), str(v), _hex(key)) for k, i, v, key in info.objects])  # fmt: skip
        print("namespace limits (loaded with --sysctl):")
        for name, value in info.sysctl.items():
            print(f"  kernel.{name} = {' '.join(value.split())}")
        return 0
    d = ipc.show(args.kind, args.id, args.version, store=args.store)
    p = d.perm
    print(f"{d.kind.value} {d.id} version {d.version}  ({d.path}, {human(d.file_size)},"
          " checksums ok)")  # fmt: skip
    print(f"saved      {d.saved_at_text} (kernel {d.kernel})")
    print(f"key        {_hex(p.key)}")
    print(f"owner      {_user(p.uid)} / {_group(p.gid)}")
    print(f"creator    {_user(p.cuid)} / {_group(p.cgid)}")
    print(f"mode       {p.mode & 0o777:04o}")
    for name, value in d.counts.items():
        print(f"{name:<10} {value}")
    print("left out:")
    for item in d.left_out:
        print(f"  - {item}")
    return 0


def _ls_live(args: argparse.Namespace) -> int:
    from cryo import ipc
    from cryo.ipc import Kind
    kinds = [Kind(args.kind)] if args.kind else list(Kind)
    for kind in kinds:
        objs = ipc.live(kind)
        rows: list[tuple[str, ...]]
        head: tuple[str, ...]
        if kind is Kind.MSG:
            print("------ Message Queues --------")
            head = ("key", "msqid", "owner", "perms", "used-bytes", "messages")
            rows = [(str(o.size), str(o.count)) for o in objs]
        elif kind is Kind.SHM:
            print("------ Shared Memory Segments --------")
            head = ("key", "shmid", "owner", "perms", "bytes", "nattch", "status")
            rows = [(str(o.size), str(o.count), _shm_status(o.mode)) for o in objs]
        else:
            print("------ Semaphore Arrays --------")
            head = ("key", "semid", "owner", "perms", "nsems")
            rows = [(str(o.count),) for o in objs]
        _table(head, [(_hex(o.key), str(o.id), _user(o.uid), f"{o.mode & 0o777:o}", *r)
                      for o, r in zip(objs, rows, strict=True)])  # fmt: skip
        print()
    return 0


# ---------------------------------------------------------------------------------------------
# the seed's commands


def _krg_parser(kind: Kind) -> argparse.ArgumentParser:
    name = f"krgipc{kind.value}"
    p = argparse.ArgumentParser(
        prog=name,
        description=f"Save or load a System V {kind.noun} (Kerrighed's {name}): cryo ipc"
        f" save|load {kind.value} ID [VERSION].",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("-save", "-s", "--save", dest="action", action="store_const", const="save",
                   help="save the object as a new version; prints the version")  # fmt: skip
    g.add_argument("-load", "-l", "--load", dest="action", action="store_const", const="load",
                   help="recreate the object from VERSION (default: the latest)")  # fmt: skip
    p.add_argument("id", type=_nonneg, help="the object's id")
    p.add_argument("version", nargs="?", type=_nonneg, help="with -load: the version")
    p.add_argument("--replace", action="store_true", help="with -load: remove what is in the way")
    p.add_argument("--store", metavar="DIR", help=STORE_HELP)
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    p.set_defaults(func=lambda args: _krg(kind, args))
    return p


def _krg(kind: Kind, args: argparse.Namespace) -> int:
    from cryo import ipc
    if args.action == "save":
        if args.version is not None or args.replace:
            print(f"krgipc{kind.value}: -save takes only an ID", file=sys.stderr)
            return 2
        print(ipc.save(kind, args.id, store=args.store).version)
        return 0
    _print_loaded(ipc.load(kind, args.id, args.version, store=args.store, replace=args.replace))
    return 0


def _krg_main(kind: Kind, argv: Sequence[str] | None) -> int:
    from cryo.cli import run

    return run(_krg_parser(kind), argv)


def krgipcmsg_main(argv: Sequence[str] | None = None) -> int:
    from cryo.ipc import Kind
    return _krg_main(Kind.MSG, argv)


def krgipcsem_main(argv: Sequence[str] | None = None) -> int:
    from cryo.ipc import Kind
    return _krg_main(Kind.SEM, argv)


def krgipcshm_main(argv: Sequence[str] | None = None) -> int:
    from cryo.ipc import Kind
    return _krg_main(Kind.SHM, argv)


# ---------------------------------------------------------------------------------------------
# printing


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    for r in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _hex(key: int) -> str:
    return f"{key & 0xFFFFFFFF:#010x}"


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _shm_status(mode: int) -> str:
    flags = [("dest", 0o1000), ("locked", 0o2000)]
    return " ".join(name for name, bit in flags if mode & bit)
