"""``cryo store ls|verify|gc``: parse, call cryo.store, print."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from cryo.cli.fmt import human
from cryo.errors import ExitCode


def register(sub: Any) -> None:
    p = sub.add_parser("store", help="list, verify and prune image stores",
                       description="Image stores hold versions of applications, written by"
                       " `cryo checkpoint PID --store STORE --app NAME`: the first full, the"
                       " next ones incremental.")  # fmt: skip
    ss = p.add_subparsers(dest="store_command", required=True, metavar="COMMAND")

    q = ss.add_parser("ls", help="applications and versions with their sizes")
    q.add_argument("store", metavar="STORE")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_ls)

    q = ss.add_parser("verify", help="check every checksum of the store",
                      description="Read every record and every stored page of the store"
                      " and check its checksum, and every page map against the files it"
                      " refers to. Exits with 5 if anything is damaged.")  # fmt: skip
    q.add_argument("store", metavar="STORE")
    q.add_argument("--app", metavar="NAME", help="only this application")
    q.set_defaults(func=cmd_verify)

    q = ss.add_parser("gc", help="delete old versions, keeping the others restorable",
                      description="Delete the versions not kept. Pages that kept versions"
                      " still read stay (the file of a deleted version is kept as is when"
                      " they are most of it, else they are copied into the oldest kept"
                      " version that reads them).")  # fmt: skip
    q.add_argument("store", metavar="STORE")
    q.add_argument("--keep-last", type=int, required=True, metavar="N",
                   help="keep the last N versions of each application (at least 1)")
    q.add_argument("--keep-every", type=int, metavar="K",
                   help="also keep every version whose number is a multiple of K")
    q.add_argument("--app", metavar="NAME", help="only this application")
    q.add_argument("--dry-run", "-n", action="store_true", help="say what would be done")
    q.set_defaults(func=cmd_gc)


def cmd_ls(args: argparse.Namespace) -> int:
    from cryo import store

    apps = store.describe(args.store)
    if args.json:
        json.dump(apps, sys.stdout, indent=2)
        print()
        return 0
    if not apps:
        print(f"{args.store}: no application")
        return 0
    print(f"{'APP':<20} {'VERSION':>7}  {'CREATED':<19} {'MEMORY':>10} {'NEW':>10}"
          f" {'STORED':>10}  READS PAGES OF")  # fmt: skip
    for a in apps:
        for v in a["versions"]:
            if "error" in v:
                print(f"{a['app']:<20} {v['version']:>7}  damaged: {v['error']}")
                continue
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created"] or 0))
            needs = ",".join(str(n) for n in v["needs"]) or "-"
            if v["retired"]:
                needs = "(retired: pages kept for later versions)"
            print(f"{a['app']:<20} {v['version']:>7}  {when:<19} {human(v['memory']):>10}"
                  f" {human(v['new']):>10} {human(v['stored']):>10}  {needs}")  # fmt: skip
        print(f"{a['app']:<20} {'total':>7}  {'':<19} {'':>10} {'':>10}"
              f" {human(a['stored']):>10}")  # fmt: skip
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cryo import store

    r = store.verify(args.store, args.app)
    for p in r.problems:
        where = f"{p.app} version {p.version}" if p.version is not None else p.app
        print(f"cryo: {where}: {p.what}", file=sys.stderr)
    state = f"{len(r.problems)} problem(s)" if r.problems else "ok"
    print(f"{args.store}: {r.apps} application(s), {r.versions} version(s), {r.files} page"
          f" file(s), {r.pages} pages checked: {state}")  # fmt: skip
    return ExitCode.IMAGE_CORRUPT if r.problems else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from cryo import store

    reports = store.gc(args.store, args.keep_last, args.keep_every, app=args.app,
                       dry_run=args.dry_run)  # fmt: skip
    verb = "would " if args.dry_run else ""
    for r in reports:
        def nums(vs: list[int]) -> str:
            return ", ".join(str(v) for v in vs) or "none"

        print(f"{r.app}: kept {nums(r.kept)}; {verb}delete {nums(r.deleted)};"
              f" {verb}retire {nums(r.retired)}")  # fmt: skip
        for src, into, n in r.merged:
            print(f"{r.app}: {verb}copy {n} pages of version {src} into version {into}")
        if not args.dry_run:
            print(f"{r.app}: {human(r.freed)} freed")
    return 0
