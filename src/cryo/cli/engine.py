"""``cryo checkpoint | restart | run | show``: parse, call the library, print."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cryo import safefile
from cryo.cli.fmt import human
from cryo.errors import Usage


def register(sub: Any, only: str | None = None) -> None:
    """The parsers of checkpoint, restart, run and show (or only the one named)."""
    for name, add in (("checkpoint", _checkpoint), ("restart", _restart), ("run", _run),
                      ("show", _show)):  # fmt: skip
        if only in (None, name):
            add(sub)


def _checkpoint(sub: Any) -> None:
    p = sub.add_parser("checkpoint", help="save a running process into an image directory",
                       description="Save the complete state of process PID into DIR. The "
                       "process keeps running unless --stop, --kill or --signal is given; "
                       "the signal is sent once the image is safely written.")  # fmt: skip
    p.add_argument("pid", type=int, nargs="?", help="the process to checkpoint")
    sc = p.add_mutually_exclusive_group()
    sc.add_argument("--tree", action="store_true",
                    help="the process and all its descendants (default for `cryo run` jobs)")
    sc.add_argument("--process", action="store_true",
                    help="only the process, with all its threads (default otherwise)")
    sc.add_argument("--pgid", type=int, metavar="PGID", help="every process of group PGID")
    sc.add_argument("--sid", type=int, metavar="SID", help="every process of session SID")
    _where(p, "checkpoint")
    p.add_argument("--force", action="store_true", help="replace an image already in DIR")
    p.add_argument("--compress", action="store_true", help="compress page data with zstd")
    p.add_argument("--shell-job", action="store_true",
                   help="fds 0-2 on a terminal, pipe, socket or unlinked file are handed"
                   " over at restart")
    p.add_argument("--page-cache", action="store_true",
                   help="write pages through the page cache (a restart soon after is faster;"
                   " by default they go to the disk directly, for a shorter freeze)")
    p.add_argument("--save-files", action="store_true",
                   help="put the executable and the libraries (every file mapped privately)"
                   " into the image: a restart uses them if the originals moved, were"
                   " deleted or changed")
    p.add_argument("--pre-copy", action="store_true",
                   help="copy the pages in rounds while the process runs, then freeze it"
                   " only for those written meanwhile and its other state (-D only)")
    p.add_argument("--no-callbacks", action="store_true",
                   help="do not run the applications' callbacks (cryo.app); critical"
                   " sections are still waited for")
    p.add_argument("--nonblocking", action="store_true",
                   help="fail at once (exit 13) if an application is inside a critical"
                   " section, instead of waiting for its end")
    p.add_argument("--callback-timeout", type=float, default=30.0, metavar="S",
                   help="seconds the applications' callbacks and critical sections may"
                   " take (default 30)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--stop", dest="signal", action="store_const", const=signal.SIGSTOP,
                   help="stop the process after the checkpoint")
    g.add_argument("--kill", dest="signal", action="store_const", const=signal.SIGKILL,
                   help="kill the process after the checkpoint")
    g.add_argument("--signal", dest="signal", type=_signal, metavar="SIG",
                   help="send SIG (name or number) after the checkpoint")
    _net(p)
    p.set_defaults(func=cmd_checkpoint, signal=0)


def _restart(sub: Any) -> None:
    p = sub.add_parser("restart", help="recreate a process from an image directory",
                       description="Recreate the process saved in DIR. By default cryo "
                       "waits for it and exits with its status.")  # fmt: skip
    _where(p, "restart")
    p.add_argument("--version", type=int, metavar="N",
                   help="with --store: restart version N (default: the latest)")
    p.add_argument("--detach", "-d", action="store_true", help="return once it runs")
    p.add_argument("--pidfile", metavar="FILE", help="write the restored pid to FILE")
    p.add_argument("--must-reuse-pid", action="store_true",
                   help="fail unless every process gets its old pid back (the default)")
    p.add_argument("--new-pids", action="store_true",
                   help="where an old pid is taken, take a new one (a program that keeps"
                        " pids, its own or its children's, may then go wrong)")
    p.add_argument("--shell-job", action="store_true",
                   help="give the process this terminal/stdio for its saved fds 0-2")
    p.add_argument("--translate", action="append", default=[], metavar="OLD=NEW",
                   help="reopen files under OLD from NEW instead (repeatable)")
    p.add_argument("--trust-image", action="store_true",
                   help="restart an image whose seal does not verify (edited, or made on a"
                   " host with another key); its owner's privileges still bound it")
    p.add_argument("--allow-duplicate", action="store_true",
                   help="restart a second copy of an image that is running already")
    p.add_argument("--ignore-changed-files", action="store_true",
                   help="reopen files that changed since the checkpoint (shorter than their"
                   " saved offset, a mapped file that differs) instead of refusing (exit 12)")
    p.add_argument("--ignore-cpu", action="store_true",
                   help="restart an image made on a CPU with instruction-set extensions this"
                   " one lacks instead of refusing (exit 6); the program must not use them")
    _net(p)
    p.set_defaults(func=cmd_restart)


def _run(sub: Any) -> None:
    p = sub.add_parser("run", help="start a program so that it can be checkpointed",
                       description="Start CMD detached from the terminal, in its own "
                       "session, stdin from /dev/null, stdout and stderr to FILE.")  # fmt: skip
    p.add_argument("--output", "-o", default="/dev/null", metavar="FILE",
                   help="append stdout and stderr to FILE (default /dev/null)")
    p.add_argument("--pidfile", metavar="FILE", help="write the pid to FILE")
    p.add_argument("--pid-ns", action="store_true",
                   help="run it as pid 1 of a new pid namespace, so that a restart can always"
                   " give every process its old pid")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    from cryo.cli.daemon import run_options  # --every T: a job of cryod (cli/daemon.py)

    run_options(p, cmd_run)


def _show(sub: Any) -> None:
    p = sub.add_parser("show", help="print what an image holds")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--files", action="store_true",
                   help="only the files a restart opens (open, mapped, executable, cwd, root)"
                   " and whether the image holds their contents")
    p.add_argument("--no-verify", action="store_true",
                   help="do not check the records and page checksums first")
    p.set_defaults(func=cmd_show)


def _net(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tcp-established", action="store_true",
                   help="save (restore) established TCP connections with TCP_REPAIR; their"
                   " traffic is held by nftables until the restart")
    g.add_argument("--tcp-close", action="store_true",
                   help="established TCP connections are restored closed")
    p.add_argument("--ext-unix-sk", action="store_true",
                   help="unix sockets connected to a peer outside the checkpoint are"
                   " reconnected to the same address at restart")


def _net_options(args: argparse.Namespace) -> dict[str, bool]:
    return {k: True for k in ("tcp_established", "tcp_close", "ext_unix_sk")
            if getattr(args, k)}  # fmt: skip


def _where(p: argparse.ArgumentParser, verb: str) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("-D", "--images-dir", dest="dir", metavar="DIR", type=_directory,
                   help="an image directory")
    g.add_argument("--store", metavar="STORE",
                   help="an image store: versions of application --app, incremental")
    p.add_argument("--app", metavar="NAME", help="with --store: the application's name")
    p.set_defaults(verb=verb)


def _check_where(args: argparse.Namespace) -> None:
    if args.store and not args.app:
        raise Usage("--store needs --app NAME")
    if args.app and not args.store:
        raise Usage("--app goes with --store")


def _scope(args: argparse.Namespace) -> tuple[int, str]:
    if args.pgid is not None or args.sid is not None:
        if args.pid is not None:
            raise Usage("give either PID or --pgid/--sid")
        return (args.pgid, "pgid") if args.pgid is not None else (args.sid, "sid")
    if args.pid is None:
        raise Usage("which process? give PID, --pgid PGID or --sid SID")
    if args.tree:
        return args.pid, "tree"
    if getattr(args, "process", False):
        return args.pid, "process"
    from cryo.launch import RUN_MARK

    try:
        with open(f"/proc/{args.pid}/environ", "rb") as f:
            started_by_run = RUN_MARK.encode() in f.read().split(b"\0")
    except OSError:
        started_by_run = False
    if not started_by_run:
        _alone(args.pid)
    return args.pid, "tree" if started_by_run else "process"


def _alone(pid: int) -> None:
    """A process with children, given without a scope, is refused: checkpointed alone it
    would come back without them (found with PostgreSQL: its backends saw the postmaster
    die, and the restored one had none), so the caller says which it means."""
    from cryo.engine.tree import refuse_children

    refuse_children(pid, "give --tree to take them with it, or --process to take it alone")


def _directory(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("an empty path is no directory")
    return text


def _signal(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            return int(signal.Signals[name])
        except KeyError:
            raise argparse.ArgumentTypeError(f"unknown signal {text}") from None


@contextmanager
def _progress(what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on a terminal for long transfers; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar: Any = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            if total < (64 << 20):
                return
            bar = tqdm(total=total, unit="B", unit_scale=True, desc=what, leave=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def cmd_checkpoint(args: argparse.Namespace) -> int:
    # the library does the work in a worker that outlives us: killing this command at
    # any moment leaves the target as it was (engine/worker.py)
    from cryo.engine.dump import checkpoint

    _check_where(args)
    pid, scope = _scope(args)
    kw: dict[str, Any] = {"compress": args.compress, "shell_job": args.shell_job,
                          "save_files": args.save_files,
                          "signal_after": args.signal, "direct_io": not args.page_cache,
                          "scope": scope, "net": _net_options(args),
                          "no_callbacks": args.no_callbacks, "nonblocking": args.nonblocking,
                          "callback_timeout": args.callback_timeout}
    if args.pre_copy:  # (cryo.migrate: rounds while it runs)
        from cryo.cli.migrate import checkpoint_pre_copy

        return checkpoint_pre_copy(args, pid, kw)
    with _progress("checkpoint") as prog:
        if args.store:
            from cryo import store

            version, r = store.checkpoint(pid, args.store, args.app, progress=prog, **kw)
            print(f"{args.app} version {version}", file=sys.stderr)
            held = store.memory_of(args.store, args.app, version)  # as `cryo store ls`
        else:
            r = checkpoint(pid, args.dir, force=args.force, progress=prog, **kw)
            held = r.memory_bytes
    rate = r.memory_bytes / r.total_seconds / 1e9 if r.total_seconds else 0.0
    for w in r.warnings:
        print(f"cryo: warning: {w}", file=sys.stderr)
    what = f"{r.pid}" if len(r.pids) <= 1 else f"{len(r.pids)} processes"
    if r.threads > len(r.pids):
        what += f" ({r.threads} threads)"
    read = f" ({human(r.memory_bytes)} read)" if held != r.memory_bytes else ""
    print(f"checkpoint of {what} -> {r.path}: {human(held)} of memory{read},"
          f" {human(r.stored_bytes)} stored, {r.total_seconds:.3f} s ({rate:.2f} GB/s),"
          f" frozen {r.freeze_seconds:.3f} s", file=sys.stderr)  # fmt: skip
    if args.save_files:
        saved = {f["path"] for f in r.files if f["saved"] and f["use"] in ("exe", "mapped")}
        print(f"saved {len(saved)} files into the image (the executable and libraries)",
              file=sys.stderr)  # fmt: skip
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    from cryo.engine.restore import restart, wait
    from cryo.engine.translate import Translation

    translate = Translation.parse(args.translate)  # exit 2 if one is not OLD=NEW
    _check_where(args)
    kw: dict[str, Any] = {"must_reuse_pid": args.must_reuse_pid, "shell_job": args.shell_job,
                          "translate": translate, "net": _net_options(args)}
    kw.update({k: True for k in ("trust_image", "allow_duplicate", "ignore_changed_files",
                                 "ignore_cpu", "new_pids") if getattr(args, k)})  # fmt: skip
    with _progress("restart") as prog:
        if args.store:
            from cryo import store

            r = store.restart(args.store, args.app, args.version, progress=prog, **kw)
        else:
            if args.version is not None:
                raise Usage("--version goes with --store")
            r = restart(args.dir, progress=prog, **kw)
    if args.pidfile:
        safefile.write_pidfile(args.pidfile, r.pid)
    for w in r.warnings:
        print(f"cryo: warning: {w}", file=sys.stderr)
    same = "its old pid" if r.pid == r.old_pid else f"new pid (was {r.old_pid})"
    print(f"restarted {r.pid} ({same}): {human(r.memory_bytes)} in {r.total_seconds:.3f} s",
          file=sys.stderr)  # fmt: skip
    if args.detach:
        print(r.pid)
        return 0
    return wait(r.pid)


def cmd_run(args: argparse.Namespace) -> int:
    from cryo.launch import run

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise Usage("which program? cryo run [--output FILE] -- CMD ARGS")
    pid = run(cmd, args.output, pid_ns=args.pid_ns)
    if args.pidfile:
        safefile.write_pidfile(args.pidfile, pid)
    print(pid)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cryo.engine.show import describe

    info = describe(args.dir, verify=not args.no_verify)  # exit 5 if a checksum fails
    import json

    if args.files:
        if args.json:
            json.dump({"files": info["files"]}, sys.stdout, indent=2)
            print()
            return 0
        for f in info["files"]:
            saved = "  (in the image)" if f["saved"] else ""
            pids = ",".join(str(p) for p in f["pids"])
            print(f"{f['use']:<6} {f['path']}  [{pids}]{saved}")
        return 0
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    h = info["image"]
    print(f"image {os.path.abspath(args.dir)}: format {h['format']}, {h['arch']},"
          f" kernel {h['kernel']}, cryo {h['cryo']}, {h['created']}")  # fmt: skip
    print(f"  pages: {human(h['memory'])} in {h['blocks']} blocks, {human(h['stored'])} stored")
    if "clocks" in h:
        print(f"  clocks when frozen: monotonic {h['clocks']['monotonic']:.3f} s, boottime"
              f" {h['clocks']['boottime']:.3f} s")  # fmt: skip
    for p in info["processes"]:
        print(f"process {p['pid']} ({p['comm']}): ppid {p['ppid']} pgid {p['pgid']} sid"
              f" {p['sid']} uid {p['uid']} exe {p['exe']}")  # fmt: skip
        regs = p["registers"]
        in_call = f"  in {regs['syscall_name']}()" if regs["syscall"] is not None else ""
        if "time_left_ms" in regs:  # (the time left that only the kernel held)
            in_call += f", {regs['time_left_ms']:.0f} ms left"
        print(f"  cwd {p['cwd']}  rip {regs['rip']}  rsp {regs['rsp']}{in_call}")
        print("  mappings:")
        for v in p["mappings"]:
            state = f"  [{', '.join(v['state'])}]" if v.get("state") else ""
            print(f"    {v['start']}-{v['end']} {v['perms']} {human(v['size']):>10}"
                  f"  saved {human(v['saved']):>10}  {v['kind']:<11} {v['path']}"
                  f"{state}")  # fmt: skip
        print("  files:")
        for f in p["files"]:
            extra = f"  (same as fd {f['same_as']})" if "same_as" in f else ""
            own = {k: v for k, v in f.items() if k not in _FD_SHOWN}
            if own:  # locks, owners, watches, memfd seals, ...: each kind's own state
                extra += f"  [{_compact(own)}]"
            print(f"    {f['fd']:>4} {f['kind']:<6} pos {f['pos']:<8} flags {f['flags']:<9}"
                  f" {f['path']}{extra}")  # fmt: skip
        s = p["signals"]
        print(f"  signals: blocked {s['blocked']}, pending {s['pending'] + s['pending_shared']},"
              f" altstack {s['altstack']}")  # fmt: skip
        for name, act in s["actions"].items():
            print(f"    {name}: {act}")
        for key, value in p.items():  # what the other drivers describe (--json: all)
            if key not in _PROCESS_SHOWN:
                line = _compact(value)
                print(f"  {key}: {line if len(line) <= 400 else line[:400] + ' ...'}")
    return 0


_FD_SHOWN = {"fd", "kind", "pos", "flags", "path", "desc", "same_as"}
_PROCESS_SHOWN = {"pid", "ppid", "pgid", "sid", "uid", "comm", "exe", "cwd", "registers",
                  "mappings", "files", "signals"}


def _compact(value: Any) -> str:
    """One line for a described value: dicts as k=v, lists comma-separated."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_compact(v) for v in value) + "]"
    return str(value)
