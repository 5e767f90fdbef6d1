"""The grid's access to etcd, through etcd's own HTTP/JSON gateway (``etcd3gw``).

Why etcd3gw: it is maintained, speaks etcd's v3 API through the gateway that every
etcd server (3.4 in Debian) serves on its client port, needs no gRPC or protobuf
build (the old ``etcd3`` package no longer imports with current protobuf), ships type
information, and offers exactly what the grid needs: leases, compare-and-swap
transactions and prefix reads.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from cryo.errors import CryoError
from cryo.grid import keys as K

log = logging.getLogger(__name__)

RETRY_FOR = 10.0  # seconds a transient refusal (no leader, a timeout) is asked again
# gRPC codes (etcd's grpc-gateway answers {"error", "message", "code"}) that say the
# member could not serve the request now: 14 Unavailable (503: "etcdserver: no leader",
# "leader changed", "request timed out", "timeout due to leader fail"...), 4
# DeadlineExceeded (504), 8 ResourceExhausted (429: "too many requests")
TRANSIENT = {14, 4, 8}
NOT_FOUND = 5  # 404: for what the grid asks, "etcdserver: requested lease not found"


class EtcdUnavailable(CryoError):
    """etcd did not answer, or refused the request: nothing was done."""


class LeaseGone(EtcdUnavailable):
    """A write under a lease that etcd no longer has (it expired or was revoked): the
    caller's key is gone with it; nothing was done."""


def _refusal(err: Exception) -> tuple[int | None, str]:
    """The gRPC code and message of an etcd3gw error (its body is the gateway's JSON)."""
    body = getattr(err, "detail_text", None)
    try:
        got = json.loads(body) if isinstance(body, str) else None
    except ValueError:
        got = None
    if isinstance(got, dict):
        code = got.get("code")
        why = str(got.get("message") or got.get("error") or "")
        return (code if isinstance(code, int) else None), why
    return None, str(body or "")


def _b64(v: str) -> str:
    return base64.b64encode(v.encode()).decode()


def _after(prefix: str) -> str:
    """The end of the range of keys that begin with ``prefix`` (its last byte + 1)."""
    raw = prefix.encode()
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


class Etcd:
    """A thin, typed wrapper: JSON values, cryo's errors."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        import etcd3gw

        u = urlsplit(url if "://" in url else f"http://{url}")
        self.url = url
        self._where = (u.hostname or "127.0.0.1", u.port or 2379, u.scheme or "http")
        self.client = etcd3gw.client(host=self._where[0], port=self._where[1],
                                     protocol=self._where[2], timeout=timeout)  # fmt: skip
        self._call(self.client.status)
        self._kept: dict[int, KeptLease] = {}  # by TTL (kept_lease)
        self._kept_lock = threading.Lock()

    def watch(self, prefix: str, wake: threading.Event,
              ignore: Callable[[str], bool] | None = None,
              seen: Callable[[str, int, dict[str, Any] | None], None] | None = None,
              quiet: Callable[[str], bool] | None = None, start: int | None = None,
              ) -> Callable[[], None]:  # fmt: skip
        """Set ``wake`` at every change under ``prefix`` but of the keys ``ignore`` or
        ``quiet`` says (etcd's watch stream, on a connection of its own, read by a
        thread of its own), after ``seen(key, revision, value)`` is told what changed
        (value None: deleted; the revision of the change, etcd's mod_revision; not of
        the ``ignore`` keys); with ``start``, every change from that revision on, those
        made before the watch too; returns what ends it.  A stream that breaks is not
        made again, and one is made only some moments after this returns: callers
        poll as well, less often (or pass ``start``)."""
        import etcd3gw

        host, port, protocol = self._where
        client = etcd3gw.client(host=host, port=port, protocol=protocol)
        events, cancel = self._call(client.watch_prefix, prefix, start_revision=start)

        def follow() -> None:
            with contextlib.suppress(Exception):
                for event in events:
                    key = event.get("kv", {}).get("key", b"")
                    key = key.decode() if isinstance(key, bytes) else str(key)
                    if ignore is not None and ignore(key):
                        continue
                    if seen is not None:
                        kv = event.get("kv", {})
                        value = kv.get("value")
                        seen(key, int(kv.get("mod_revision", 0)),
                             K.decode(value) if value is not None
                             and event.get("type") != "DELETE" else None)  # fmt: skip
                    if quiet is None or not quiet(key):
                        wake.set()

        threading.Thread(target=follow, daemon=True, name=f"etcd watch {prefix}").start()

        def end() -> None:
            with contextlib.suppress(Exception):
                cancel()

        return end

    def _call(self, fn: Any, *args: Any, ambiguous: Callable[[], bool] | None = None,
              **kw: Any) -> Any:
        """``fn(*args, **kw)``; a transient refusal is asked again for up to RETRY_FOR
        seconds.  A conditional write whose first try may have been applied (a timeout:
        its answer was lost) passes ``ambiguous``: before asking again, it says whether
        etcd holds what the write would have put (then True is the answer)."""
        import requests

        deadline = time.monotonic() + RETRY_FOR
        tried = False
        while True:
            if tried and ambiguous is not None and self._quiet(ambiguous):
                return True
            tried = True
            try:
                return fn(*args, **kw)
            except (requests.RequestException, OSError) as err:
                raise EtcdUnavailable(f"etcd at {self.url} is unavailable: {err}") from err
            except Exception as err:  # etcd3gw's own errors (Etcd3Exception and kin)
                if not type(err).__module__.startswith("etcd3gw"):
                    raise
                code, why = _refusal(err)
                why = why or str(err) or type(err).__name__
                if code == NOT_FOUND and "lease not found" in why:
                    raise LeaseGone(f"etcd at {self.url}: {why}") from err
                # (etcd3gw raises ConnectionFailedError for a 503 too, with the body)
                if code is None and type(err).__name__ == "ConnectionFailedError" \
                        and "Service Unavailable" not in err.args:  # fmt: skip
                    raise EtcdUnavailable(f"etcd at {self.url} is unavailable: {why}") from err
                transient = code in TRANSIENT or (code is None and (
                    "Service Unavailable" in err.args or "Gateway Timeout" in err.args
                    or type(err).__name__ == "ConnectionTimeoutError"))  # fmt: skip
                if not transient or time.monotonic() > deadline:
                    raise EtcdUnavailable(f"etcd at {self.url} is unavailable or refused the"
                                          f" request: {why}") from err  # fmt: skip
                log.info("etcd at %s: %s; asked again", self.url, why)
            time.sleep(0.1)

    def _quiet(self, check: Callable[[], bool]) -> bool:
        try:
            return check()
        except Exception:  # (asked again, then)
            return False

    def get(self, key: str) -> dict[str, Any] | None:
        got = self._call(self.client.get, key)
        return K.decode(got[0]) if got else None

    def get_raw(self, key: str) -> bytes | None:
        got = self._call(self.client.get, key)
        return bytes(got[0]) if got else None

    def prefix(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for value, meta in self._call(self.client.get_prefix, prefix, sort_order="ascend",
                                      sort_target="key"):  # fmt: skip
            key = meta["key"]
            key = key.decode() if isinstance(key, bytes) else key
            decoded = K.decode(value)
            if decoded is not None:
                out.append((key, decoded))
        return out

    def prefix_revisions(self, prefix: str) -> list[tuple[str, int, dict[str, Any]]]:
        """As :meth:`prefix`, with the revision each key was last changed at."""
        out = []
        for value, meta in self._call(self.client.get_prefix, prefix):
            key = meta["key"]
            key = key.decode() if isinstance(key, bytes) else key
            decoded = K.decode(value)
            if decoded is not None:
                out.append((key, int(meta.get("mod_revision", 0)), decoded))
        return out

    def put(self, key: str, value: dict[str, Any], lease: Any = None) -> None:
        self._call(self.client.put, key, K.encode(value), lease=lease)

    def create(self, key: str, value: dict[str, Any], lease: Any = None) -> bool:
        """Put ``key`` only if it does not exist."""
        raw = K.encode(value)
        return bool(self._call(self.client.create, key, raw, lease=lease,
                               ambiguous=lambda: self._holds(key, raw)))  # fmt: skip

    def _holds(self, key: str, raw: str) -> bool:
        got = self.client.get(key)
        return bool(got) and bytes(got[0]) == raw.encode()

    def delete(self, key: str) -> None:
        self._call(self.client.delete, key)

    def delete_prefix(self, prefix: str) -> None:
        self._call(self.client.delete_prefix, prefix)

    def delete_prefixes(self, prefixes: Sequence[str]) -> None:
        """Every key under each of ``prefixes``, in one transaction."""
        if not prefixes:
            return
        ops = [{"request_delete_range": {"key": _b64(p), "range_end": _b64(_after(p))}}
               for p in prefixes]  # fmt: skip
        self._call(self.client.transaction, {"compare": [], "success": ops, "failure": []})

    def delete_tree(self, key: str) -> None:
        """``key`` and every key under ``key/``, in one transaction (not the keys that
        merely begin as ``key`` does: another application's)."""
        under = key + "/"
        end = under[:-1] + chr(ord(under[-1]) + 1)
        txn = {"compare": [], "failure": [],
               "success": [{"request_delete_range": {"key": _b64(key)}},
                           {"request_delete_range": {"key": _b64(under),
                                                     "range_end": _b64(end)}}]}  # fmt: skip
        self._call(self.client.transaction, txn)

    def lease(self, ttl: int) -> Any:
        return self._call(self.client.lease, ttl)

    def kept_lease(self, ttl: int, stale: Any = None) -> KeptLease:
        """A lease of ``ttl`` seconds that a thread keeps alive while it is used and
        for KEPT_IDLE seconds after (:meth:`KeptLease.release`), so that the calls
        of one process in a row (a coordinator's rounds) grant one, not one each;
        ``stale``: one found gone, not to be handed out again.  Nothing else may be
        put under it for longer than its use: its keys are deleted by who put them
        (it is not revoked; once let go it expires with none)."""
        with self._kept_lock:
            kept = self._kept.get(ttl)
            if kept is not None and (kept.lease is stale or not kept.alive()):
                kept.stop()
                kept = None
            if kept is None:
                kept = self._kept[ttl] = KeptLease(self.lease(ttl), ttl, self._kept_done)
            kept.users += 1
            return kept

    def _kept_done(self, kept: KeptLease) -> None:
        with self._kept_lock:
            if self._kept.get(kept.ttl) is kept:
                del self._kept[kept.ttl]

    def swap(self, key: str, old: bytes, new: dict[str, Any],
             also: Sequence[tuple[str, dict[str, Any]]] = (), lease: int | None = None,
             drop: tuple[str, bytes] | None = None) -> bool:  # fmt: skip
        """One transaction: if ``key`` still holds ``old``, put ``new`` there (and each
        of ``also``; under lease id ``lease`` if given; and delete ``drop``'s key if it
        holds its value); True if it did."""
        return self.txn([(key, old)], [(key, new), *also], lease=lease, drop=drop)

    def txn(self, compares: Sequence[tuple[str, bytes]],
            puts: Sequence[tuple[str, dict[str, Any]]], lease: int | None = None, *,
            absent: Sequence[str] = (), leases: Mapping[str, int] | None = None,
            drop: tuple[str, bytes] | None = None) -> bool:  # fmt: skip
        """One transaction: if every key of ``compares`` still holds its value and no
        key of ``absent`` exists, put each of ``puts`` (under lease id ``lease`` if
        given, or the one ``leases`` gives its key; else under none: a key put so
        leaves the lease it was under), and delete ``drop``'s key if it then holds its
        value (a transaction nested in it); True if it did.  A first try whose answer
        was lost counts as done if the first put's key holds its value."""
        request = self._request(compares, puts, lease, absent, leases, drop)
        return self._txn(request, puts) is not None

    @staticmethod
    def _request(compares: Sequence[tuple[str, bytes]],
                 puts: Sequence[tuple[str, dict[str, Any]]], lease: int | None,
                 absent: Sequence[str], leases: Mapping[str, int] | None,
                 drop: tuple[str, bytes] | None = None) -> dict[str, Any]:  # fmt: skip
        put: list[dict[str, Any]] = []
        for k, v in puts:
            request: dict[str, Any] = {"key": _b64(k), "value": _b64(K.encode(v))}
            held = (leases or {}).get(k, lease)
            if held is not None:
                request["lease"] = int(held)
            put.append({"request_put": request})
        if drop is not None:
            put.append({"request_txn": {
                "compare": [{"key": _b64(drop[0]), "result": "EQUAL", "target": "VALUE",
                             "value": base64.b64encode(drop[1]).decode()}],
                "success": [{"request_delete_range": {"key": _b64(drop[0])}}],
                "failure": []}})  # fmt: skip
        return {
            "compare": [{"key": _b64(k), "result": "EQUAL", "target": "VALUE",
                         "value": base64.b64encode(raw).decode()} for k, raw in compares]
                       + [{"key": _b64(k), "result": "EQUAL", "target": "CREATE",
                           "create_revision": 0} for k in absent],
            "success": put,
            "failure": [],
        }  # fmt: skip

    def txn_revision(self, compares: Sequence[tuple[str, bytes]],
                     puts: Sequence[tuple[str, dict[str, Any]]], lease: int | None = None, *,
                     absent: Sequence[str] = (),
                     leases: Mapping[str, int] | None = None) -> int | None:  # fmt: skip
        """As :meth:`txn`: None if nothing was put, else the revision its puts made (0
        when a first try's answer was lost: done, at a revision not known)."""
        return self._txn(self._request(compares, puts, lease, absent, leases), puts)

    def _txn(self, txn: dict[str, Any], puts: Sequence[tuple[str, dict[str, Any]]]) -> int | None:
        ambiguous = None
        if puts:
            first, first_raw = puts[0][0], K.encode(puts[0][1])
            ambiguous = lambda: self._holds(first, first_raw)  # noqa: E731
        result = self._call(self.client.transaction, txn, ambiguous=ambiguous)
        if result is True:
            return 0
        if not result.get("succeeded", False):
            return None
        return int((result.get("header") or {}).get("revision", 0))


KEPT_IDLE = 30.0  # seconds a kept lease outlives its last use


class KeptLease:
    """A lease (``lease``: etcd3gw's) refreshed every ``ttl``/3 seconds by a thread of
    its own while it has users, and for KEPT_IDLE seconds after the last let it go."""

    def __init__(self, lease: Any, ttl: int, done: Callable[[KeptLease], None]) -> None:
        self.lease, self.ttl, self.id = lease, ttl, int(lease.id)
        self.users = 0
        self._lock = threading.Lock()
        self._used = self._ok = time.monotonic()
        self._stop = threading.Event()
        self._done = done
        threading.Thread(target=self._keep, daemon=True, name=f"etcd lease {self.id}").start()

    def alive(self) -> bool:
        """Refreshed lately enough that it surely lives (less than half its TTL ago)."""
        return not self._stop.is_set() and time.monotonic() - self._ok < self.ttl / 2

    def release(self) -> None:
        with self._lock:
            self.users -= 1
            self._used = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    def _keep(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._lock:
                idle = self.users <= 0 and time.monotonic() - self._used > KEPT_IDLE
            if idle:
                break
            sent = time.monotonic()
            try:
                if self.lease.refresh() <= 0:
                    break
            except Exception as err:  # (unreachable for now: alive() says so in time)
                log.debug("etcd lease %d not refreshed: %s", self.id, err)
                continue
            self._ok = sent
        self._stop.set()
        self._done(self)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
