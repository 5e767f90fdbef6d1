"""cryo: checkpoint/restart of Linux processes in user space.

The public API:

- :func:`checkpoint` (``cryo.engine.dump.checkpoint``): save a process, its threads and,
  by scope, its descendants, process group or session, into an image directory or a Sink;
- :func:`restart` (``cryo.engine.restore.restart``): recreate them from an image;
- :func:`describe` (``cryo.engine.show.describe``): what an image holds, as plain data;
- :func:`run` (``cryo.launch.run``): start a program so that it can be checkpointed;
- ``cryo.store`` (versions, incremental) and ``cryo.ipc`` (System V IPC on its own);
- the error tree of :mod:`cryo.errors`.

The engine is imported on first use, so that ``import cryo`` stays light.
"""

from typing import Any

from cryo.errors import (
    AccessDenied,
    CryoError,
    ImageCorrupt,
    ImageError,
    ImageExists,
    ImageIncompatible,
    ImageMissing,
    InternalError,
    NoSuchProcess,
    RestoreConflict,
    Unsupported,
)

__version__ = "0.1.0"

_LAZY = {
    "checkpoint": ("cryo.engine.dump", "checkpoint"),
    "restart": ("cryo.engine.restore", "restart"),
    "describe": ("cryo.engine.show", "describe"),
    "run": ("cryo.launch", "run"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'cryo' has no attribute {name!r}")


__all__ = [
    "AccessDenied",
    "CryoError",
    "ImageCorrupt",
    "ImageError",
    "ImageExists",
    "ImageIncompatible",
    "ImageMissing",
    "InternalError",
    "NoSuchProcess",
    "RestoreConflict",
    "Unsupported",
    "__version__",
    "checkpoint",
    "describe",
    "restart",
    "run",
]
