"""Modules imported on first use: ``inet = lazy("cryo.engine.inet")`` is a stand-in that
imports the module the first time one of its attributes is read, and hands every read
and write on to it from then on.

For a resource module that most programs never need (TCP and unix sockets, terminals,
the applications' channel, fanotify ...): a small program's ``cryo checkpoint`` then
never imports it (docs/design.md, "Start-up").  The module is imported for real (it is in
``sys.modules``, its own imports run), so a test that patches it patches what the
stand-in reads.  Use it with the plain import under ``TYPE_CHECKING``, so that the type
checker sees the module itself::

    if TYPE_CHECKING:
        from cryo.engine import inet
    else:
        inet = lazy("cryo.engine.inet")
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


class _Lazy:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def _module(self) -> Any:
        name = object.__getattribute__(self, "_name")
        mod = sys.modules.get(name)
        return mod if mod is not None else importlib.import_module(name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._module(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._module(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._module(), attr)

    def __repr__(self) -> str:
        name = object.__getattribute__(self, "_name")
        return f"<lazy module {name!r}{'' if name in sys.modules else ' (not imported)'}>"


def lazy(name: str) -> Any:
    """A stand-in for the module ``name``, imported when first used."""
    return _Lazy(name)


def imported(name: str) -> bool:
    """Whether the module ``name`` was imported (a lazy one: used) in this process."""
    return name in sys.modules


__all__ = ["imported", "lazy"]
