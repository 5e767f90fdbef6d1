"""Small formatting helpers shared by the command-line front ends."""

from __future__ import annotations


def human(n: float) -> str:
    """Bytes as a person reads them: 512 B, 1.5 KiB, 64.0 MiB, 1.0 GiB."""
    f = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if f < 1024 or unit == "GiB":
            return f"{int(f)} B" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return f"{f:.1f} GiB"  # pragma: no cover
