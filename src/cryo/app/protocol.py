"""The messages between cryo and an application that uses ``cryo.app`` (or ``cryo.h``),
declared once; docs/protocol.md documents them.

Discovery: the application listens on a unix stream socket bound to an abstract name
that starts with :data:`PREFIX`; cryo finds it among the fds of the processes it is
about to checkpoint.  A message is one line of UTF-8: its name, then ``key=value``
fields, separated by tabs; in values ``%``, tab and newline are written ``%25``,
``%09`` and ``%0A``.  A key may repeat (``file=``).

    cryo -> app   checkpoint  signal requester target scope nonblocking callbacks timeout
    app -> cryo   ready       file* (saved files) drop* (memory to leave out: ADDR:LEN)
                  busy        reason   (inside a critical section, non-blocking request)
                  abort       reason   (a callback vetoed the checkpoint)
    cryo -> app   continued            (the image is written; the program goes on)
                  failed      reason   (the checkpoint failed; the program goes on)
    cryo -> app   restarted   old_pid new_pid old_host new_host old_addrs new_addrs
                              image generation dropped   (sent by the restart, on the
                              connection the checkpoint left open)
"""

from __future__ import annotations

PREFIX = b"\0cryo-app/"
CHECKPOINT, READY, BUSY, ABORT = "checkpoint", "ready", "busy", "abort"
CONTINUED, FAILED, RESTARTED = "continued", "failed", "restarted"
MAX_LINE = 1 << 20


def _esc(v: str) -> str:
    return v.replace("%", "%25").replace("\t", "%09").replace("\n", "%0A")


def _unesc(v: str) -> str:
    return v.replace("%0A", "\n").replace("%09", "\t").replace("%25", "%")


def encode(name: str, fields: list[tuple[str, object]] | None = None) -> bytes:
    parts = [name] + [f"{k}={_esc(str(v))}" for k, v in fields or []]
    return ("\t".join(parts) + "\n").encode()


def decode(line: bytes) -> tuple[str, list[tuple[str, str]]]:
    name, *parts = line.decode(errors="replace").rstrip("\n").split("\t")
    fields = []
    for p in parts:
        k, _, v = p.partition("=")
        fields.append((k, _unesc(v)))
    return name, fields


def read_line(sock: object, limit: int = MAX_LINE) -> bytes:
    """One message from a blocking socket (b"" if the peer closed first)."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = sock.recv(1)  # type: ignore[attr-defined]
        if not chunk:
            return b""
        buf += chunk
        if len(buf) > limit:
            raise ValueError("message too long")
    return bytes(buf)
