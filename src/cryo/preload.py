"""Importing cryo's modules ahead of need, for the long-lived processes (cryod, ``cryo
receive``): the engine imports many of its modules lazily, and importing them costs
compiling (where there is no bytecode cache) and executing them (schemas, dataclasses):
half a second and more on a loaded machine.  The daemon preloads them once at start, so
that every checkpoint's child (forked from it) has them already; the receiver while the
rounds of a migration arrive, so that they are not part of the downtime."""

from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger(__name__)

PACKAGES = ("cryo.engine", "cryo.image", "cryo.store", "cryo.procfs")


def preload(packages: tuple[str, ...] = PACKAGES) -> int:
    """Import every module of ``packages`` (not their subpackages' tests, nothing that
    fails: a module that needs what is missing is left for whoever needs it); returns
    how many were imported."""
    n = 0
    for name in packages:
        try:
            pkg = importlib.import_module(name)
        except Exception as err:
            log.debug("preload: %s: %r", name, err)
            continue
        for m in pkgutil.iter_modules(getattr(pkg, "__path__", []), f"{name}."):
            try:
                importlib.import_module(m.name)
            except Exception as err:
                log.debug("preload: %s: %r", m.name, err)
            else:
                n += 1
    _warm()
    return n


def _warm() -> None:
    """What the imported modules make on first use and keep, made now: the image
    grammar's compiled checks (every restart and ``cryo show`` of a child of cryod
    would otherwise make them again)."""
    import sys

    schema = sys.modules.get("cryo.image.schema")
    if schema is not None:
        try:
            schema.compile_all()
        except Exception as err:  # (a cache only)
            log.debug("preload: schema: %r", err)


__all__ = ["PACKAGES", "preload"]
