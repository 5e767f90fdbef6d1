"""``cryo daemon`` (also ``cryod``), ``cryo jobs`` and ``cryo job ...``: a thin layer on
cryo.daemon's server and Client."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from cryo.cli.fmt import human
from cryo.errors import Usage

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """``10m``, ``1.5h``, ``500ms``, ``1d``, or seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h|d|w)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 10m, 1h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def keep_every(text: str) -> str:
    """A number of versions (``7``) or a duration (``1d``), converted once --every is
    known."""
    if not re.fullmatch(r"\d+", text.strip()):
        duration(text)
    return text.strip()


def unit(args: argparse.Namespace) -> str:
    exe = f"{sys.executable} -m cryo daemon"
    opts = f" --socket {args.socket} --state {args.state} --store {args.store}"
    if args.metrics:
        opts += f" --metrics {args.metrics}"
    opts += f" --max-concurrent {args.max_concurrent}"
    if args.nice != -10:
        opts += f" --nice {args.nice}"
    if args.checkpoint_timeout != 3600.0:
        opts += f" --checkpoint-timeout {args.checkpoint_timeout:g}"
    if args.grid:
        opts += f" --grid {args.grid} --grid-store {args.grid_store}"
        opts += f" --host {args.host}" if args.host else ""
        opts += f" --grid-lease {args.grid_lease}" if args.grid_lease != 5 else ""
        opts += f" --grid-dev {args.grid_dev}" if args.grid_dev else ""
        opts += f" --grid-listen {args.grid_listen}" if args.grid_listen else ""
        opts += f" --grid-secret-file {args.grid_secret_file}" if args.grid_secret_file else ""
    import os

    import cryo

    doc = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        cryo.__file__)))), "docs", "protocol.md")  # fmt: skip
    docs = f"Documentation=file://{doc}\n" if os.path.exists(doc) else ""
    return f"""[Unit]
Description=cryo checkpoint daemon (periodic checkpoints, restart after a crash)
{docs}After=local-fs.target
RequiresMountsFor=/var/lib/cryo

[Service]
Type=simple
ExecStart={exe}{opts}
KillMode=process
# cryod leaves its jobs running when it stops; checkpoints in flight let their
# targets go by themselves (the engine's worker)
Restart=on-failure
RestartSec=1
RuntimeDirectory=cryo
RuntimeDirectoryPreserve=yes
StateDirectory=cryo

[Install]
WantedBy=multi-user.target
"""


def daemon_parser(p: argparse.ArgumentParser) -> None:
    from cryo.daemon.gridhost import DEFAULT_STORE as DEFAULT_GRID_STORE
    from cryo.daemon.protocol import DEFAULT_SOCKET, DEFAULT_STATE, DEFAULT_STORE

    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"the unix socket (default {DEFAULT_SOCKET}, mode 0666)")
    p.add_argument("--state", default=DEFAULT_STATE, metavar="DIR",
                   help=f"where the SQLite state lives (default {DEFAULT_STATE})")
    p.add_argument("--store", default=DEFAULT_STORE, metavar="DIR",
                   help=f"the default store of jobs (default {DEFAULT_STORE})")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics at http://ADDR:PORT/metrics")
    p.add_argument("--max-concurrent", type=int, default=2, metavar="N",
                   help="at most N checkpoints at once (default 2)")
    p.add_argument("--nice", type=int, default=-10, metavar="N",
                   help="run the daemon and its checkpoints at nice N, and its session's"
                   " autogroup (default -10: due checkpoints keep their time when the jobs"
                   " fill the CPUs; 0: as the jobs); jobs it starts run at 0")
    p.add_argument("--staged-timeout", type=duration, default=120.0, metavar="T",
                   help="abort a staged checkpoint not resumed within T (default 2m)")
    p.add_argument("--checkpoint-timeout", type=duration, default=3600.0, metavar="T",
                   help="kill a checkpoint (or gc) that has not ended within T, which fails"
                   " and is retried; its targets go on as they were (default 1h; 0: none)")
    p.add_argument("--log", metavar="FILE", help="JSON log lines to FILE (default stderr)")
    g = p.add_argument_group("the grid (issue 15): this daemon runs its host's grid agent")
    g.add_argument("--grid", metavar="ETCD_URL",
                   help="run the grid agent of this host inside the daemon, on this etcd")
    g.add_argument("--host", metavar="NAME",
                   help="this host's name in the grid (default: the hostname)")
    g.add_argument("--grid-store", default=DEFAULT_GRID_STORE, metavar="DIR",
                   help="where the parts' images go, as cryo grid agent --store (default"
                   f" {DEFAULT_GRID_STORE})")
    g.add_argument("--grid-lease", type=int, default=5, metavar="S",
                   help="seconds without news after which this host counts as failed")
    g.add_argument("--grid-dev", metavar="IFACE",
                   help="the interface the parts' service addresses go on (cryo grid agent"
                   " --dev; default: the one in their subnet)")
    g.add_argument("--grid-listen", metavar="ADDR:PORT",
                   help="take other hosts' replicas here (cryo grid agent --listen)")
    g.add_argument("--grid-secret-file", metavar="FILE",
                   help="the grid's shared secret (cryo grid agent --secret-file)")
    p.add_argument("--print-unit", action="store_true", help="print a systemd unit and exit")
    p.set_defaults(func=cmd_daemon)


def register(sub: Any) -> None:
    p = sub.add_parser("daemon", help="run cryod, the checkpoint daemon",
                       description="Run the daemon: periodic checkpoints of jobs into a store,"
                       " retention, restart after a crash; clients talk to it on its socket.")
    daemon_parser(p)

    p = sub.add_parser("jobs", help="list the daemon's jobs")
    _client(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_jobs)

    job = sub.add_parser("job", help="manage one job of the daemon")
    jsub = job.add_subparsers(dest="job_command", required=True, metavar="ACTION",
                              parser_class=_CmdParser)
    for verb in ("add", "run"):
        p = jsub.add_parser(verb, help="adopt a process (--pid) or start a command as a job"
                            if verb == "add" else "start a command as a job (= add -- CMD)",
                            usage=f"cryo job {verb} NAME [options]"
                            f" {'(--pid PID | -- CMD ARGS)' if verb == 'add' else '-- CMD ARGS'}")
        p.add_argument("name", metavar="NAME")
        if verb == "add":
            p.add_argument("--pid", type=int, help="adopt this running process")
        p.add_argument("--every", type=duration, metavar="T",
                       help="checkpoint every T (30s, 10m, 1h, 1d)")
        p.add_argument("--keep-last", type=int, metavar="N", help="keep the last N versions")
        p.add_argument("--keep-every", type=keep_every, metavar="K|T",
                       help="also keep every K-th version, or one per period T (with --every)")
        p.add_argument("--store", metavar="STORE", help="the store (root only)")
        p.add_argument("--output", "-o", metavar="FILE",
                       help="stdout and stderr of the command (default /dev/null)")
        p.add_argument("--scope", choices=("process", "tree"),
                       help="what a checkpoint takes (default: tree for a command)")
        p.add_argument("--restart-on-failure", action="store_true",
                       help="restart it from its last version when it dies by a signal")
        p.add_argument("--max-restarts", type=int, metavar="N", help="at most N (default 3)")
        _client(p)
        p.set_defaults(func=cmd_add)
    for verb, text in (("show", "one job, and its versions"),
                       ("checkpoint", "checkpoint it now"),
                       ("restart", "kill what runs and restart it from a version"),
                       ("rm", "forget it (its versions stay in the store)"),
                       ("history", "its checkpoints and restarts, with their results"),
                       ("prepare", "staged: run callbacks and freeze it"),
                       ("write", "staged: write the frozen state as a new version"),
                       ("resume", "staged: let it go on"),
                       ("abort", "staged: let it go on as before")):
        p = jsub.add_parser(verb, help=text)
        p.add_argument("name", metavar="NAME")
        if verb == "restart":
            p.add_argument("--version", type=int, metavar="N", help="default the latest")
        if verb == "rm":
            p.add_argument("--kill", action="store_true", help="also kill its processes")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        _client(p)
        p.set_defaults(func=cmd_job, verb=verb)


class _CmdParser(argparse.ArgumentParser):
    """Everything after the first ``--`` is the command (``cmd``), whatever comes between
    NAME and it (argparse's REMAINDER would take the options after NAME too)."""

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:  # fmt: skip
        words = list(sys.argv[1:] if args is None else args)
        cmd: list[str] = []
        if "--" in words:
            i = words.index("--")
            words, cmd = words[:i], words[i + 1 :]
        ns, extra = super().parse_known_args(words, namespace)
        ns.cmd = cmd
        return ns, extra


def _client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--socket", metavar="PATH",
                   help="the daemon's socket (default $CRYO_DAEMON_SOCKET or"
                   " /run/cryo/cryod.sock)")


def cmd_daemon(args: argparse.Namespace) -> int:
    if args.print_unit:
        print(unit(args), end="")
        return 0
    from cryo.daemon.server import main

    return main(args)


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _due(t: float | None) -> str:
    if t is None:
        return "-"
    left = t - time.time()
    return "now" if left <= 0 else f"in {left:.0f}s" if left < 120 else _when(t)


def cmd_jobs(args: argparse.Namespace) -> int:
    from cryo.daemon import Client

    with Client(args.socket) as c:
        jobs = c.jobs()
    if args.json:
        json.dump(jobs, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'NAME':<20} {'OWNER':>6} {'PID':>8} {'STATE':<10} {'VERSIONS':>8}"
          f"  {'LAST CHECKPOINT':<19} {'SIZE':>10} {'STORED':>10}  NEXT DUE")  # fmt: skip
    for j in jobs:
        state = j["state"] + ("*" if j["busy"] else "")
        print(f"{j['name']:<20} {j['owner']:>6} {j['pid'] or '-':>8} {state:<10}"
              f" {j['versions']:>8}  {_when(j['last_checkpoint']):<19}"
              f" {human(j['memory']) if j['memory'] is not None else '-':>10}"
              f" {human(j['stored']):>10}  {_due(j['next_due']) if j['every'] else '-'}")
    return 0


def _keep_every(text: str | None, every: float | None) -> int | None:
    if text is None:
        return None
    if re.fullmatch(r"\d+", text):
        return int(text)
    if not every:
        raise Usage("--keep-every as a duration needs --every (or give a number of versions)")
    return max(1, round(duration(text) / every))


def cmd_add(args: argparse.Namespace) -> int:
    from cryo.daemon import Client

    cmd = args.cmd
    pid = getattr(args, "pid", None)
    if (pid is None) == (not cmd):
        raise Usage("give either --pid PID or -- CMD ARGS")
    with Client(args.socket) as c:
        job = c.add(args.name, pid=pid, cmd=cmd or None, output=args.output,
                    every=args.every, keep_last=args.keep_last,
                    keep_every=_keep_every(args.keep_every, args.every), store=args.store,
                    scope=args.scope, restart_on_failure=args.restart_on_failure,
                    max_restarts=args.max_restarts)  # fmt: skip
    print(f"job {job['name']}: pid {job['pid']}", file=sys.stderr)
    print(job["pid"])
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from cryo.daemon import Client

    with Client(args.socket) as c:
        out: Any
        if args.verb == "show":
            out = c.job(args.name)
            out["version_list"] = c.versions(args.name)
        elif args.verb == "checkpoint":
            out = c.checkpoint(args.name)
            if not args.json:
                print(f"{args.name} version {out['version']}: {human(out['memory'])} of memory,"
                      f" {human(out['stored'])} stored, {out['seconds']:.3f} s, frozen"
                      f" {out['frozen']:.3f} s", file=sys.stderr)  # fmt: skip
                return 0
        elif args.verb == "restart":
            out = c.restart(args.name, args.version)
            if not args.json:
                print(f"{args.name}: version {out['version']} restarted as pid {out['pid']}",
                      file=sys.stderr)
                print(out["pid"])
                return 0
        elif args.verb == "rm":
            c.remove(args.name, kill=args.kill)
            return 0
        elif args.verb == "history":
            out = c.history(args.name)
            if not args.json:
                for a in out:
                    late = f" late {a['started'] - a['due']:.3f}s" if a["due"] else ""
                    what = f" v{a['version']}" if a["version"] else ""
                    err = f" {a['error']}: {a['message']}" if a["error"] else ""
                    print(f"{_when(a['started'])} {a['kind']:<10} {a['status']:<11}{what}"
                          f"{late}{err}")  # fmt: skip
                return 0
        else:
            out = getattr(c, args.verb)(args.name)
        if out is not None:
            json.dump(out, sys.stdout, indent=2)
            print()
    return 0


def run_options(p: argparse.ArgumentParser, cmd_run: Any) -> None:
    """`cryo run --every T -- CMD`: the options that make `cryo run` start CMD as a job of
    cryod (as `cryo job add`) instead of on its own; without --every, ``cmd_run``."""
    g = p.add_argument_group("as a job of the daemon (cryod)")
    g.add_argument("--every", type=duration, metavar="T",
                   help="start it as a job of cryod, checkpointed every T (30s, 10m, 1h)")
    g.add_argument("--name", metavar="NAME", help="the job's name (default: the program's"
                   " name and a number)")
    g.add_argument("--keep-last", type=int, metavar="N", help="keep the last N versions")
    g.add_argument("--keep-every", type=keep_every, metavar="K|T",
                   help="also keep every K-th version, or one per period T")
    g.add_argument("--restart-on-failure", action="store_true",
                   help="restart it from its last version when it dies by a signal")
    g.add_argument("--max-restarts", type=int, metavar="N", help="at most N (default 3)")
    _client(p)

    def dispatch(args: argparse.Namespace) -> int:
        if args.every is None:
            return int(cmd_run(args) or 0)
        return run_job(args)

    p.set_defaults(func=dispatch)


def run_job(args: argparse.Namespace) -> int:
    import os

    from cryo import safefile
    from cryo.daemon import Client

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise Usage("which program? cryo run --every T -- CMD ARGS")
    if args.pid_ns:
        raise Usage("--pid-ns does not go with --every (yet)")
    with Client(args.socket) as c:
        name = args.name
        if name is None:
            taken = {j["name"] for j in c.jobs()}
            stem = re.sub(r"[^A-Za-z0-9._+-]", "_", os.path.basename(cmd[0])).lstrip("._+-")
            name = next(f"{stem or 'job'}-{i}" for i in range(1, 10**6)
                        if f"{stem or 'job'}-{i}" not in taken)  # fmt: skip
        job = c.add(name, cmd=cmd, output=os.path.abspath(args.output), every=args.every,
                    keep_last=args.keep_last,
                    keep_every=_keep_every(args.keep_every, args.every),
                    restart_on_failure=args.restart_on_failure,
                    max_restarts=args.max_restarts)  # fmt: skip
    if args.pidfile:
        safefile.write_pidfile(args.pidfile, job["pid"])
    print(f"job {job['name']}: pid {job['pid']}, every {args.every:g} s", file=sys.stderr)
    print(job["pid"])
    return 0


def cryod_main(argv: Sequence[str] | None = None) -> int:
    """The ``cryod`` console script: ``cryo daemon`` under its own name."""
    from cryo.cli import run

    parser = argparse.ArgumentParser(prog="cryod", description="the cryo checkpoint daemon")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    daemon_parser(parser)
    return run(parser, argv)


__all__ = ["cryod_main", "duration", "register", "run_job", "run_options"]
