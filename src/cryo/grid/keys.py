"""The grid's etcd keys and their values, declared once (docs/protocol.md, "Grid").

Every value is a JSON object.  Under ``/cryo/``:

    hosts/HOST                        {host, pid, store, started, replica}  under the
                                                                agent's lease
    apps/APP                          {app, cmd, hosts, store, services, replicas, created,
                                       adopted, adopting, keep: {last, every}}
    apps/APP/parts/N                  {part, host, pid, state, epoch, image}  state:
                                                                starting, running,
                                                                failed, lost, fenced;
                                                                adopting, refused
                                                                (grid adopt)
    apps/APP/rounds/V                 {version, state, deadline, by, parts}  state:
                                                                prepare, cut (with
                                                                replicas), committed,
                                                                aborted
    apps/APP/rounds/V/votes/N         {part, ok, reason, image, host, replicated,
                                       replicas: {HOST: path}}
    apps/APP/committed                {version, images: {N: path}, hosts: {N: host},
                                       replicas: {N: {HOST: path}},
                                       kept: {V: {images, hosts, replicas}}}
    apps/APP/restart                  {epoch, version, assign: {N: host}, images, hosts,
                                       replicas}
    apps/APP/coordinator              {by}                      under the coordinator's
                                                                lease (its election)

A round's decision is one transaction that compares the round's value with the
"prepare" value it was written with: committing it (and moving ``committed`` to its
version) or aborting it; whichever comes first wins, so a round is decided once.
"""

from __future__ import annotations

import json
from typing import Any

ROOT = "/cryo/"
PREPARE, COMMITTED, ABORTED = "prepare", "committed", "aborted"
CUT = "cut"  # every part written and voted: they go on; their replicas are being sent


def host(name: str) -> str:
    return f"{ROOT}hosts/{name}"


def hosts() -> str:
    return f"{ROOT}hosts/"


def app(name: str) -> str:
    return f"{ROOT}apps/{name}"


def parts(name: str) -> str:
    return f"{ROOT}apps/{name}/parts/"


def part(name: str, n: int) -> str:
    return f"{ROOT}apps/{name}/parts/{n}"


def rounds(name: str) -> str:
    return f"{ROOT}apps/{name}/rounds/"


def round_(name: str, v: int) -> str:
    return f"{ROOT}apps/{name}/rounds/{v:08d}"


def votes(name: str, v: int) -> str:
    return f"{ROOT}apps/{name}/rounds/{v:08d}/votes/"


def vote(name: str, v: int, n: int) -> str:
    return f"{ROOT}apps/{name}/rounds/{v:08d}/votes/{n}"


def committed(name: str) -> str:
    return f"{ROOT}apps/{name}/committed"


def restart(name: str) -> str:
    return f"{ROOT}apps/{name}/restart"


def coordinator(name: str) -> str:
    return f"{ROOT}apps/{name}/coordinator"


def encode(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def decode(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None
