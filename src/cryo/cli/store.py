"""``cryo store ls|verify|gc`` (placeholder)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    pass
