"""``cryo grid agent | run | adopt | checkpoint | status | restart | watch``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("grid", help="applications spread over several hosts (etcd)",
                       description="The grid checkpointer: parts of one application on"
                       " several hosts, checkpointed together and restarted together.")  # fmt: skip
    gs = p.add_subparsers(dest="grid_command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = gs.add_parser(name, help=help_)
        c.add_argument("--etcd", required=True, metavar="URL", help="an etcd client URL")
        return c

    c = cmd("agent", "run this host's agent (one per host)")
    c.add_argument("--host", required=True, help="this host's name in the grid")
    c.add_argument("--store", required=True, metavar="DIR",
                   help="where its parts' images go, and the replicas other hosts send")
    c.add_argument("--lease", type=int, default=5, metavar="S",
                   help="seconds without news after which the host counts as failed")
    c.add_argument("--dev", metavar="IFACE",
                   help="the interface service addresses go on (default: the one in their"
                   " subnet)")
    c.add_argument("--listen", metavar="ADDR:PORT",
                   help="take other hosts' replicas here (the address they reach this one at)")
    c.add_argument("--secret-file", metavar="FILE",
                   help="the grid's shared secret (as cryo migrate's): replicas are streamed"
                   " and taken only with it")  # fmt: skip
    c.set_defaults(func=_agent)
    c = cmd("run", "start one part of CMD on each host")
    c.add_argument("--app", required=True)
    c.add_argument("--hosts", required=True, help="h1,h2,...")
    c.add_argument("--store", default="", metavar="DIR",
                   help="a directory every host sees, for the parts' output (default: each"
                   " host's store; a part moved off a failed host then cannot reopen it)")
    c.add_argument("--services", metavar="A0,A1,...",
                   help="one service address per part (IPv4, in a subnet of its host): it"
                   " moves with the part, so that restored TCP connections stay valid")
    c.add_argument("--replicas", type=int, default=0, metavar="N",
                   help="each part's image is streamed to N other hosts' agents before it"
                   " votes (0: the hosts share one store)")
    _keep_options(c)
    c.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS ({part}: its number)")
    c.set_defaults(func=_run)
    c = cmd("adopt", "take processes that already run as the parts of an application")
    c.add_argument("app")
    c.add_argument("parts", nargs="+", metavar="HOST:PID",
                   help="part n: the process tree of PID on grid host HOST")
    c.add_argument("--store", default="", metavar="DIR", help="as for grid run")
    c.add_argument("--services", metavar="A0,A1,...",
                   help="the parts' service addresses, already on their hosts (as for grid"
                   " run): they move with the parts")  # fmt: skip
    c.add_argument("--replicas", type=int, default=0, metavar="N", help="as for grid run")
    c.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="how long the agents may take (default 30 s)")
    _keep_options(c)
    c.set_defaults(func=_adopt)
    c = cmd("checkpoint", "one consistent checkpoint of every part")
    c.add_argument("app")
    c.add_argument("--timeout", type=float, default=60.0, metavar="S")
    c.set_defaults(func=_checkpoint)
    c = cmd("status", "hosts, parts, committed version, rounds")
    c.add_argument("app")
    c.set_defaults(func=_status)
    c = cmd("restart", "restart every part from the last committed version")
    c.add_argument("app")
    c.add_argument("--version", type=int, metavar="V",
                   help="a version the application keeps (--keep-last, --keep-every)")
    c.set_defaults(func=_restart)
    c = cmd("watch", "periodic global checkpoints; restart when a host fails")
    c.add_argument("app")
    c.add_argument("--every", type=float, metavar="S", help="seconds between checkpoints")
    _keep_options(c, durations=True)
    c.set_defaults(func=_watch)


def _keep_options(c: argparse.ArgumentParser, durations: bool = False) -> None:
    c.add_argument("--keep-last", type=int, metavar="N",
                   help="keep the last N committed global versions (default 1)")
    c.add_argument("--keep-every", metavar="K|T" if durations else "K",
                   help="keep every K-th version too" + (" (or one per period T, e.g. 1h,"
                                                          " given --every)" if durations else ""))


def _keep(args: argparse.Namespace) -> dict[str, Any] | None:
    """The retention asked for (coordinator.retention's arguments), or None."""
    from cryo.cli.daemon import _keep_every
    from cryo.errors import Usage

    if args.keep_last is None and args.keep_every is None:
        return None
    every = args.keep_every
    if every is not None and not every.strip().isdigit() and not hasattr(args, "every"):
        raise Usage("--keep-every takes a number of versions here (a period: grid watch)")
    return {"last": args.keep_last or 1,
            "every": _keep_every(every.strip(), getattr(args, "every", None))
            if every is not None else None}


def _etcd(args: argparse.Namespace) -> Any:
    from cryo.grid.etcd import Etcd

    return Etcd(args.etcd)


def _agent(args: argparse.Namespace) -> int:
    from cryo.grid.agent import Agent
    from cryo.migrate.auth import read_secret

    secret = read_secret(args.secret_file) if args.secret_file else None
    agent = Agent(_etcd(args), args.host, args.store, lease=args.lease, dev=args.dev,
                  listen=args.listen, secret=secret)  # fmt: skip
    print(f"agent {args.host} registered", file=sys.stderr, flush=True)
    try:
        agent.serve()
    finally:
        agent.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    from cryo.errors import Usage
    from cryo.grid import coordinator

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise Usage("cryo grid run needs a command: -- CMD ARGS")
    services = args.services.split(",") if args.services else []
    parts = coordinator.run(_etcd(args), args.app, args.hosts.split(","), cmd, args.store,
                            services=services, replicas=args.replicas, keep=_keep(args))
    for n, p in sorted(parts.items()):
        print(f"part {n} on {p['host']}: pid {p['pid']}")
    return 0


def _adopt(args: argparse.Namespace) -> int:
    from cryo.errors import Usage
    from cryo.grid import coordinator

    parts = []
    for spec in args.parts:
        host, _, pid = spec.rpartition(":")
        if not host or not pid.isdigit():
            raise Usage(f"cryo grid adopt: {spec!r} is not HOST:PID")
        parts.append((host, int(pid)))
    services = args.services.split(",") if args.services else []
    got = coordinator.adopt(_etcd(args), args.app, parts, args.store, services=services,
                            replicas=args.replicas, timeout=args.timeout,
                            keep=_keep(args))  # fmt: skip
    for n, p in sorted(got.items()):
        print(f"part {n} on {p['host']}: pid {p['pid']} adopted")
    return 0


def _checkpoint(args: argparse.Namespace) -> int:
    from cryo.grid import coordinator

    v = coordinator.checkpoint(_etcd(args), args.app, timeout=args.timeout,
                               report=lambda what: print(what, file=sys.stderr, flush=True))
    print(f"{args.app}: global version {v} committed")
    return 0


def _status(args: argparse.Namespace) -> int:
    from cryo.grid import coordinator

    json.dump(coordinator.status(_etcd(args), args.app), sys.stdout, indent=2, default=str)
    print()
    return 0


def _restart(args: argparse.Namespace) -> int:
    from cryo.grid import coordinator

    parts = coordinator.restart(_etcd(args), args.app, args.version)
    for n, p in sorted(parts.items()):
        print(f"part {n} on {p['host']}: pid {p['pid']}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from cryo.grid import coordinator

    coordinator.watch(_etcd(args), args.app, args.every, keep=_keep(args))
    return 0
