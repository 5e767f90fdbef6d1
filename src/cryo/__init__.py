"""cryo: checkpoint/restart of Linux processes in user space.

The public API:

- :func:`checkpoint` (``cryo.engine.dump.checkpoint``): save a process, its threads and,
  by scope, its descendants, process group or session, into an image directory or a Sink;
- :func:`start_checkpoint` (a handle to ``poll()``) and :func:`prepare` (a staged
  checkpoint: ``write(dest)``, then ``resume()`` or ``abort()``); :class:`CheckpointSession`
  to step through every phase;
- :func:`restart` (``cryo.engine.restore.restart``): recreate them from an image;
- ``cryo.app``: what an application imports to take part (callbacks, critical sections);
- :func:`describe` (``cryo.engine.show.describe``): what an image holds, as plain data;
- :func:`run` (``cryo.launch.run``): start a program so that it can be checkpointed;
- ``cryo.store`` (versions, incremental) and ``cryo.ipc`` (System V IPC on its own);
- the error tree of :mod:`cryo.errors`.

The engine is imported on first use, so that ``import cryo`` stays light.
"""

from typing import Any

from cryo.errors import (
    AccessDenied,
    CheckpointRefused,
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
    "start_checkpoint": ("cryo.engine.dump", "start_checkpoint"),
    "prepare": ("cryo.engine.dump", "prepare"),
    "CheckpointSession": ("cryo.engine.session", "CheckpointSession"),
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
    "CheckpointRefused",
    "CheckpointSession",
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
    "prepare",
    "restart",
    "run",
    "start_checkpoint",
]
