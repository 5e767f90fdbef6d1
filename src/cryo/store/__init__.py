"""Versions of images, incremental page maps, retention and garbage collection (issue 5).

Placeholder: the interface the CLI calls; the implementation is in progress.
"""

from __future__ import annotations

from typing import Any

from cryo.engine.dump import DumpResult
from cryo.engine.restore import RestoreResult
from cryo.errors import Unsupported


def checkpoint(pid: int, store: str, app: str, **kw: Any) -> tuple[int, DumpResult]:
    """Add a new version of application ``app`` to ``store``; returns (version, result)."""
    raise Unsupported("image stores are not implemented yet")


def restart(store: str, app: str, version: int | None = None, **kw: Any) -> RestoreResult:
    """Restart version ``version`` (the latest by default) of ``app`` from ``store``."""
    raise Unsupported("image stores are not implemented yet")
