"""``cryo ipc ...`` and the seed's krgipcmsg/krgipcsem/krgipcshm commands (placeholder)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("ipc", help="save and load System V IPC objects")
    p.set_defaults(func=lambda _args: 0)


def krgipcmsg_main() -> int:
    return 2


def krgipcsem_main() -> int:
    return 2


def krgipcshm_main() -> int:
    return 2
