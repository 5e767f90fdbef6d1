"""Seals: a keyed MAC that says "cryo wrote this file on a host holding this key".

Every framed file of an image (core.img, a store version's pmap.img) ends with a SEAL
record before END: BLAKE2b-256 keyed with the host's image key over the BLAKE2b-256
digest of every byte before it (file header and records).  Page data is covered through
the checksums the sealed records hold (PBLK ``csum``, a store's PHSH hashes, a side
file's ``SIDE`` digest); see docs/image-format.md and docs/design.md "Trust and
privilege".

The key is 32 random bytes in ``/var/lib/cryo/image.key`` (``$CRYO_KEY_FILE`` instead),
created on first use, mode 0600, readable by root only.  Hosts that restart each other's
images share the same key file (a cluster copies it to every host once); an image from
a host with another key does not verify, and is refused unless trusted explicitly.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from typing import Any

from cryo.errors import CryoError
from cryo.image import format as fmt

KEY_FILE = "/var/lib/cryo/image.key"
KEY_BYTES = 32
_PERSON = b"cryo-seal-v1"
_cache: dict[str, bytes] = {}


def key_path() -> str:
    return os.environ.get("CRYO_KEY_FILE") or KEY_FILE


def _read_key(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise CryoError(f"image key {path} is not a private file of this user (mode"
                            f" {stat.S_IMODE(st.st_mode):o}, owner {st.st_uid}): refusing"
                            " to use it", path=path)  # fmt: skip
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise CryoError(f"image key {path} is not {KEY_BYTES} bytes", path=path)
    return key


def _create_key(path: str) -> None:
    """Written aside, then linked into place: two first users agree on one key."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = fmt.create_private(tmp, replace_stale=True)
    try:
        os.write(fd, os.urandom(KEY_BYTES))  # (what secrets.token_bytes returns)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with suppress(OSError):
        fmt.fsync_dir(os.path.dirname(path) or ".")


def load_key(*, create: bool = False) -> bytes | None:
    """This host's image key; None when this user may not read it (not root, say) or,
    without ``create``, when there is none yet."""
    path = key_path()
    if path in _cache:
        return _cache[path]
    try:
        key = _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
        try:
            _create_key(path)
        except PermissionError:
            return None
        key = _read_key(path)
    except PermissionError:
        return None
    _cache[path] = key
    return key


def key_id(key: bytes) -> bytes:
    """8 bytes naming a key (not revealing it): tells "made with another key" apart."""
    return fmt.blake2b(b"key id", key=key, digest_size=8, person=_PERSON).digest()


def mac(key: bytes, digest: bytes) -> bytes:
    return fmt.blake2b(digest, key=key, digest_size=32, person=_PERSON).digest()


def sealer(key: bytes | None = None) -> fmt.Sealer | None:
    """What :class:`cryo.image.format.RecordWriter` takes as ``seal``: this host's key
    (made if needed), or None when there is no key we may use (the file goes unsealed)."""
    key = key if key is not None else load_key(create=True)
    if key is None:
        return None
    k = key

    def seal(digest: bytes) -> dict[str, Any]:
        return {"mac": mac(k, digest), "key": key_id(k)}

    return seal


def problem(records: list[fmt.Record], key: bytes | None, name: str) -> str | None:
    """Why the SEAL among ``records`` (as read by fmt.read_file) does not verify with
    ``key``; None when it does."""
    seals = [r for r in records if r.kind == fmt.SEAL]
    if not seals:
        return f"{name} is not sealed"
    rec = seals[-1]
    p = rec.payload
    if not isinstance(p, dict) or not isinstance(p.get("mac"), bytes) or rec.digest is None:
        return f"{name} has a malformed seal"
    if key is None:
        return f"{name} is sealed, but this host has no image key ({key_path()})"
    if not fmt.compare_digest(p["mac"], mac(key, rec.digest)):
        if p.get("key") != key_id(key):
            return f"{name} was sealed with another host's key"
        return f"{name} was changed after it was sealed"
    return None
