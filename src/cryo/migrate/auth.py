"""Who may send a process: both sides prove they hold a shared secret, and every frame
after is authenticated with keys derived from it (docs/design.md, "Migration").

The handshake, over cryo.image.stream frames (tagged with the public key until the keys
are set)::

    sender   HELO {proto, nonce_c, auth}        auth: whether it has a secret
    receiver CHAL {nonce_s}
    sender   PROF {proof: HMAC(secret, "client" || nonce_c || nonce_s)}
    receiver ACPT {proof: HMAC(secret, "server" || nonce_c || nonce_s), host}   (keyed)
          or DENY {why}                          (and the connection is closed)

Then the sender's frames are keyed with HMAC(secret, "c2s" || nonce_c || nonce_s), the
receiver's with "s2c".  The nonces are 32 random bytes of each side, so a recorded
session can be neither replayed nor continued; the sequence numbers in every frame's tag
keep frames from being dropped, repeated or reordered.  The secret itself never goes
over the wire; it should be random (it is not stretched: a guessable one can be found
offline from a recorded handshake).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import platform
import secrets
import socket
import stat
from typing import Any

from cryo.errors import CryoError, ImageUntrusted, Usage
from cryo.image.stream import Framer

PROTO = "cryo-migrate-1"
MIN_SECRET = 16


class AuthFailed(ImageUntrusted):
    """The peer does not hold the shared secret (or refused ours): exit 11."""


def read_secret(path: str) -> bytes:
    """The shared secret in ``path``: a private file (no access for group or others),
    at least 16 bytes once surrounding white space is stripped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise Usage(f"secret file {path}: {err.strerror}", path=path) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
            raise Usage(f"secret file {path} must be a regular file readable by its owner"
                        f" only (mode {stat.S_IMODE(st.st_mode):o})", path=path)  # fmt: skip
        data = os.read(fd, 1 << 16).strip()
    finally:
        os.close(fd)
    if len(data) < MIN_SECRET:
        raise Usage(f"secret file {path} holds {len(data)} bytes; at least {MIN_SECRET}"
                    " random bytes are needed", path=path)  # fmt: skip
    return data


def _mac(secret: bytes, label: bytes, nc: bytes, ns: bytes) -> bytes:
    return hmac.new(secret, label + nc + ns, hashlib.sha256).digest()


def _nonce(meta: dict[str, Any], key: str) -> bytes:
    n = meta.get(key)
    if not isinstance(n, bytes) or len(n) != 32:
        raise CryoError("the peer's handshake is malformed")
    return n


def _host() -> dict[str, Any]:
    return {"host": socket.gethostname(), "arch": platform.machine(),
            "kernel": platform.release(), "takes_lazy": True,
            "takes_address": True}  # fmt: skip


def client(framer: Framer, secret: bytes | None, hello: dict[str, Any]) -> dict[str, Any]:
    """The sender's side; returns what the receiver said of itself."""
    peer = framer.channel.name
    nc = secrets.token_bytes(32)
    framer.send(b"HELO", {"proto": PROTO, "nonce": nc, "auth": secret is not None,
                          **_host(), **hello})  # fmt: skip
    m = framer.expect(b"CHAL", b"DENY")
    if m["_kind"] == b"DENY":
        raise AuthFailed(f"{peer} refused the migration: {m.get('why')}")
    ns = _nonce(m, "nonce")
    if secret is not None:
        framer.send(b"PROF", {"proof": _mac(secret, b"client", nc, ns)})
        framer.set_keys(_mac(secret, b"c2s", nc, ns), _mac(secret, b"s2c", nc, ns))
    else:
        framer.send(b"PROF", {})
    try:
        m = framer.expect(b"ACPT", b"DENY")
    except CryoError as err:
        if secret is not None and "does not authenticate" in str(err):
            raise AuthFailed(f"{peer} refused the migration: wrong secret") from err
        raise
    if m["_kind"] == b"DENY":
        raise AuthFailed(f"{peer} refused the migration: {m.get('why')}")
    if secret is not None and not (isinstance(m.get("proof"), bytes) and hmac.compare_digest(
            m["proof"], _mac(secret, b"server", nc, ns))):  # fmt: skip
        raise AuthFailed(f"{peer} does not hold the shared secret: not sending to it")
    return m


def server(framer: Framer, secret: bytes | None) -> dict[str, Any]:
    """The receiver's side; returns the sender's HELO.  A sender without the secret
    (when there is one) is told DENY and AuthFailed is raised."""
    peer = framer.channel.name
    hello = framer.expect(b"HELO")
    if hello.get("proto") != PROTO:
        framer.send(b"DENY", {"why": f"protocol {hello.get('proto')!r}, not {PROTO}"})
        raise CryoError(f"{peer} speaks protocol {hello.get('proto')!r}, not {PROTO}")
    nc = _nonce(hello, "nonce")
    if secret is not None and not hello.get("auth"):
        framer.send(b"DENY", {"why": "this receiver needs the shared secret (--secret-file)"})
        raise AuthFailed(f"{peer} has no secret: refused")
    ns = secrets.token_bytes(32)
    framer.send(b"CHAL", {"nonce": ns})
    proof = framer.expect(b"PROF").get("proof")
    if secret is not None:
        if not (isinstance(proof, bytes)
                and hmac.compare_digest(proof, _mac(secret, b"client", nc, ns))):  # fmt: skip
            framer.send(b"DENY", {"why": "wrong secret"})
            raise AuthFailed(f"{peer} does not hold the shared secret: refused")
        framer.set_keys(_mac(secret, b"s2c", nc, ns), _mac(secret, b"c2s", nc, ns))
        framer.send(b"ACPT", {"proof": _mac(secret, b"server", nc, ns), **_host()})
    else:
        framer.send(b"ACPT", _host())
    return hello
