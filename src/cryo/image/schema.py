"""The image grammar in code (filled in below)."""

from __future__ import annotations

from typing import Any


def check(image: Any) -> None:
    """Check every record of ``image`` against its declaration."""
