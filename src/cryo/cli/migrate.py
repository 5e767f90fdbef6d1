"""``cryo migrate | receive``: parse, call cryo.migrate, print."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cryo.cli.fmt import human
from cryo.errors import Usage


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="move a running process to another host",
                       description="Send process PID to `cryo receive` on another host, "
                       "which restarts it there; the pages are copied in rounds while it "
                       "runs, then it is frozen for the last ones and its state. It is "
                       "killed here once it runs there; on any failure it goes on here.")
    p.add_argument("pid", type=int, nargs="?", help="the process to move")
    sc = p.add_mutually_exclusive_group()
    sc.add_argument("--tree", action="store_true", help="the process and its descendants")
    sc.add_argument("--process", action="store_true",
                    help="only the process, with all its threads (default otherwise)")
    sc.add_argument("--pgid", type=int, metavar="PGID", help="every process of group PGID")
    sc.add_argument("--sid", type=int, metavar="SID", help="every process of session SID")
    p.add_argument("--to", required=True, metavar="HOST:PORT",
                   help="the receiver: HOST:PORT (TCP), or ssh://[user@]host (runs `cryo"
                   " receive --stdio` there)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="the secret shared with the receiver (needed over TCP)")
    p.add_argument("--leave-running", action="store_true",
                   help="do not kill the process here once it runs there (a clone)")
    p.add_argument("--keep", metavar="DIR", help="the receiver keeps a copy of the image in DIR")
    p.add_argument("--no-pre-copy", action="store_true",
                   help="no rounds: freeze at once and send everything (stop and copy)")
    p.add_argument("--max-rounds", type=int, metavar="N", help="at most N pre-copy rounds")
    p.add_argument("--lazy", action="store_true",
                   help="post-copy: start it there at once, its memory following as it"
                   " touches it (the source frozen until every page is there)")
    p.add_argument("--shell-job", action="store_true",
                   help="fds 0-2 on a terminal, pipe or socket are handed over")
    p.add_argument("--save-files", action="store_true",
                   help="the executable and the files mapped privately (libraries) go with"
                   " it: the destination uses these copies where its own differ or are missing")
    _net(p)  # --tcp-established, --tcp-close, --ext-unix-sk: as cryo checkpoint/restart
    p.add_argument("--move-address", metavar="ADDR[/PREFIX]",
                   help="this IPv4 address of this host moves with the process (taken off"
                   " here, put on the destination's interface in its subnet, announced), so"
                   " that its TCP connections (--tcp-established) and listeners on it go on")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds without progress before the connection counts as lost")
    p.add_argument("--json", action="store_true",
                   help="print the figures (rounds, downtime, bytes) as JSON on stdout")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("receive", help="take processes migrated from another host",
                       description="Accept `cryo migrate` from peers holding the shared "
                       "secret and restart what they send.")  # fmt: skip
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--listen", metavar="ADDR:PORT", help="accept TCP connections there")
    g.add_argument("--stdio", action="store_true",
                   help="one migration on stdin/stdout (what `migrate --to ssh://` runs)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="the secret shared with the senders (needed with --listen)")
    p.add_argument("--once", action="store_true", help="exit after the first migration")
    p.add_argument("--keep", metavar="DIR",
                   help="also write what was received as an image directory DIR")
    p.add_argument("--trust-image", action="store_true",
                   help="without a secret (--stdio): restart images whose seal does not"
                   " verify with this host's key (ssh authenticated the sender)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds without progress before a connection counts as lost")
    p.add_argument("--no-staging", action="store_true",
                   help="keep the pre-copy rounds' pages as received until the stream ends"
                   " (the path before staging, for comparison)")
    p.set_defaults(func=cmd_receive)


def _net(p: argparse.ArgumentParser) -> None:
    from cryo.cli.engine import _net as net

    net(p)


def _net_options(args: argparse.Namespace) -> dict[str, bool]:
    from cryo.cli.engine import _net_options as net_options

    return net_options(args)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _scope(args: argparse.Namespace) -> tuple[int, str]:
    from cryo.cli.engine import _scope as scope  # the same scopes as cryo checkpoint

    return scope(args)


def cmd_migrate(args: argparse.Namespace) -> int:
    from cryo.migrate import migrate
    from cryo.migrate.auth import read_secret

    pid, scope = _scope(args)
    secret = read_secret(args.secret_file) if args.secret_file else None
    r = migrate(pid, args.to, secret=secret, secret_file=args.secret_file, scope=scope,
                leave_running=args.leave_running, pre_copy=not args.no_pre_copy,
                keep=args.keep, max_rounds=args.max_rounds, timeout=args.timeout,
                report=_say, shell_job=args.shell_job, lazy=args.lazy,
                save_files=args.save_files, net=_net_options(args),
                move_address=args.move_address)  # fmt: skip
    for w in r.warnings:
        _say(f"cryo: warning: {w}")
    if r.rounds:
        _say(f"arming froze it {r.arm_seconds:.3f} s; {len(r.rounds)} rounds while it ran")
    _say(f"final: {r.final_bytes // 4096} pages, {human(r.final_bytes)} frozen for"
         f" {r.frozen_write:.3f} s")
    where = "left running here" if not r.killed else "killed here"
    _say(f"migrated {pid} to {r.host}: runs there as pid {r.pid} ({where}); downtime"
         f" {r.downtime:.3f} s, total {r.total_seconds:.3f} s, {human(r.bytes_sent)} sent"
         f" for {human(r.memory_bytes)} of memory")  # fmt: skip
    if r.lazy:
        _say(f"every page there {r.all_pages_seconds:.3f} s after the freeze"
             f" ({human(r.lazy_bytes)} after it ran there,"
             f" {int(r.lazy_stats.get('requests', 0))} page requests)")
    if args.json:
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(r)))
    else:
        print(r.pid)
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from cryo.image.stream import Channel
    from cryo.migrate import receive, serve
    from cryo.migrate.auth import read_secret

    secret = read_secret(args.secret_file) if args.secret_file else None
    if args.stdio:
        # the stream is stdin/stdout: nothing else may write to stdout
        import os

        out = os.dup(1)
        os.dup2(2, 1)
        got = receive(Channel(rfd=0, wfd=out, name="stdio"), secret=secret, keep=args.keep,
                      trust_image=args.trust_image, report=_say,
                      stage=not args.no_staging)  # fmt: skip
        _say(f"process {got.old_pid} from {got.peer} runs here as pid {got.pid}")
        return 0
    got2 = serve(args.listen, secret=secret, once=args.once, keep=args.keep,
                 trust_image=args.trust_image, timeout=args.timeout, report=_say,
                 stage=not args.no_staging,
                 ready=lambda port: _say(f"listening on {args.listen.rpartition(':')[0]}:"
                                         f"{port}"))  # fmt: skip
    if got2 is not None:
        print(got2.pid, flush=True)
    return 0


def checkpoint_pre_copy(args: argparse.Namespace, pid: int, kw: dict[str, Any]) -> int:
    """``cryo checkpoint --pre-copy -D DIR``: the rounds, then the final checkpoint."""
    from cryo.migrate import checkpoint_pre_copy as run

    if args.store:
        raise Usage("--pre-copy writes an image directory (-D), not a store version")
    if kw.get("compress"):
        raise Usage("--pre-copy does not compress")
    opts = {k: v for k, v in kw.items() if k not in ("compress", "direct_io", "scope")}
    r, rounds, arm = run(pid, args.dir, scope=kw["scope"], force=args.force,
                         direct_io=kw.get("direct_io", True),
                         report=lambda x: _say(f"round {x.number}: {x.pages} pages,"
                                               f" {human(x.bytes)}, {x.seconds:.3f} s"),
                         **opts)  # fmt: skip
    for w in r.warnings:
        _say(f"cryo: warning: {w}")
    _say(f"checkpoint of {r.pid} -> {r.path}: {len(rounds)} rounds while it ran (arming froze"
         f" it {arm:.3f} s), then {human(r.memory_bytes)} frozen {r.freeze_seconds:.3f} s;"
         f" {human(r.stored_bytes)} stored, {r.total_seconds:.3f} s in all")  # fmt: skip
    return 0
