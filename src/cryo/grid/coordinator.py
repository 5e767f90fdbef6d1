"""The grid checkpointer's coordinator (seed 003): one consistent checkpoint of an
application spread over several hosts, and its restart after a host fails.

A global checkpoint is two phases under a global version V.  The coordinator (whoever
holds the application's election key in etcd) writes round V as "prepare" with a
deadline; every host's agent prepares its parts (the applications' callbacks, the
freeze), writes each part's image and votes; once every part voted yes the coordinator
commits V with one transaction (the round becomes "committed" and the application's
``committed`` record points at V's images), otherwise, or at the deadline, it aborts.
Agents resume their parts either way (discarding the images of an aborted round).  A
round left "prepare" by a coordinator that died is aborted by the next coordinator, or
by any agent once its deadline is long past: the decision is a compare-and-swap, so a
round is decided exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from cryo import errors
from cryo.errors import CryoError, ExitCode
from cryo.grid import keys as K
from cryo.grid.etcd import Etcd, LeaseGone

log = logging.getLogger(__name__)
GRACE = 5.0  # seconds after a round's deadline before anyone may abort it
ELECTION_TTL = 5  # seconds after a coordinator dies before the next may take over
KEEP_ROUNDS = 8  # decided rounds kept in etcd (status shows them), up to twice as many


class RoundFailed(CryoError):
    """A global checkpoint was aborted: a part could not prepare, or time ran out."""


class UnknownHost(CryoError):
    """A host named for a part has no live agent (none registered in etcd)."""

    exit_code = ExitCode.UNKNOWN_HOST


class AppExists(CryoError):
    """An application of that name is in the grid already."""

    exit_code = ExitCode.CONFLICT


ADOPT_TTL = 10  # seconds an adoption's keys outlive an adopter that died half-way


def live_hosts(etcd: Etcd) -> dict[str, dict[str, Any]]:
    return {k.rsplit("/", 1)[1]: v for k, v in etcd.prefix(K.hosts())}


def app_keys(etcd: Etcd, app: str) -> list[tuple[str, dict[str, Any]]]:
    """Every key of application ``app`` (its record, parts, rounds and their votes,
    committed, restart...) in one request; not those of an application whose name
    begins as this one's does."""
    return [(k, v) for k, v in etcd.prefix(K.app(app))
            if k == K.app(app) or k.startswith(K.app(app) + "/")]  # fmt: skip


def parts_of(etcd: Etcd, app: str) -> dict[int, dict[str, Any]]:
    return {int(k.rsplit("/", 1)[1]): v for k, v in etcd.prefix(K.parts(app))}


def run(etcd: Etcd, app: str, hosts: list[str], cmd: list[str], store: str,
        timeout: float = 30.0, services: list[str] | None = None,
        replicas: int = 0, keep: dict[str, Any] | None = None) -> dict[int, dict[str, Any]]:
    """Start one part of ``cmd`` per host (``{part}`` in its arguments is the part's
    number, ``{addr}`` its service address, ``{addrs}`` every part's, comma-separated);
    returns the parts once every one runs.  ``services`` gives each part an address of
    its own that moves with it; ``replicas`` is how many other hosts get a copy of each
    part's image before it votes; ``keep`` the global versions kept (:func:`retention`)."""
    services = _check_hosts(etcd, hosts, services, replicas)
    if not etcd.create(K.app(app), {"app": app, "cmd": cmd, "hosts": hosts, "store": store,
                                    "services": services, "replicas": replicas,
                                    "created": time.time(),
                                    **({"keep": retention(**keep)} if keep else {})}):
        raise AppExists(f"application {app} exists already")
    for n, h in enumerate(hosts):
        etcd.put(K.part(app, n), {"part": n, "host": h, "pid": None, "state": "starting"})
    return wait_running(etcd, app, len(hosts), timeout)


def retention(last: int = 1, every: int | None = None) -> dict[str, Any]:
    """The global versions an application keeps (as the daemon's jobs and ``cryo store
    gc``): the last ``last`` committed and, with ``every`` K, each whose number is a
    multiple of K.  Kept in its record; each commit lists the older versions kept in
    ``committed`` ("kept": their images, hosts and replicas), and each agent removes
    its images of the others (agent._retire)."""
    if last < 1:
        raise errors.Usage("an application keeps at least its last version (--keep-last 1)")
    if every is not None and every < 1:
        raise errors.Usage("--keep-every takes a positive number of versions")
    return {"last": last, "every": every}


def _entry(committed: dict[str, Any]) -> dict[str, Any]:
    """What a ``committed`` record says of its own version: a "kept" entry."""
    return {k: committed.get(k) for k in ("images", "hosts", "replicas")}


def _retained(previous: dict[str, Any] | None, version: int,
              keep: dict[str, Any]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The versions before ``version`` kept once it is committed: of those the previous
    ``committed`` record kept, and its own, the ones ``keep`` keeps."""
    from cryo.store import kept_versions

    have = dict((previous or {}).get("kept") or {})
    if previous:
        have[str(previous["version"])] = _entry(previous)
    published = sorted({*(int(v) for v in have), version})
    kept = kept_versions(published, int(keep.get("last") or 1), keep.get("every"))
    return {str(v): have[str(v)] for v in kept if v != version}


def set_retention(etcd: Etcd, app: str, keep: dict[str, Any]) -> None:
    """Change the versions ``app`` keeps from its next commit on."""
    while True:
        raw = etcd.get_raw(K.app(app))
        record = K.decode(raw) if raw is not None else None
        if raw is None or record is None:
            raise CryoError(f"no grid application {app}")
        if etcd.swap(K.app(app), raw, {**record, "keep": retention(**keep)}):
            return


def _check_hosts(etcd: Etcd, hosts: list[str], services: list[str] | None,
                 replicas: int) -> list[str]:  # fmt: skip
    """Every host has a live agent, one service address per part (or none), enough
    live hosts for the replicas: the service addresses."""
    alive = live_hosts(etcd)
    missing = sorted({h for h in hosts if h not in alive})
    if missing:
        raise UnknownHost(f"no grid agent on host {', '.join(missing)} (live: "
                          f"{', '.join(sorted(alive)) or 'none'})")  # fmt: skip
    services = services or []
    if services and len(services) != len(hosts):
        raise CryoError(f"{len(hosts)} parts but {len(services)} service addresses")
    if replicas >= len(alive) and replicas:
        raise CryoError(f"{replicas} replicas need {replicas + 1} live hosts; {len(alive)} live")
    return services


def adopt(etcd: Etcd, app: str, parts: list[tuple[str, int]], store: str = "",
          services: list[str] | None = None, replicas: int = 0, timeout: float = 30.0,
          uid: int | None = None, keep: dict[str, Any] | None = None
          ) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Take processes that already run under the grid as application ``app``: part n
    is process tree ``parts[n] = (host, pid)``, taken by that host's agent, and from
    then on a part like those :func:`run` starts.  Every part is adopted or none:
    an unknown host (:class:`UnknownHost`), an application of that name
    (:class:`AppExists`), a pid that is not there (NoSuchProcess) or not of ``uid``
    (AccessDenied; by default the caller's; root's may be any) and a part its agent
    does not take within ``timeout`` leave nothing in etcd, and no agent keeps a part.

    The keys are written under a lease of the adopter's (ADOPT_TTL, kept alive while it
    waits) and taken off it in the one transaction that ends the adoption: an adopter
    that dies half-way leaves nothing once the lease expires; an agent forgets the
    parts of an application that is gone."""
    hosts = [h for h, _ in parts]
    pids = [(h, int(pid)) for h, pid in parts]
    if not pids:
        raise errors.Usage("nothing to adopt: HOST:PID ...")
    if len(set(pids)) != len(pids):
        raise errors.Usage(f"a part named twice: {sorted(p for p in pids if pids.count(p) > 1)}")
    services = _check_hosts(etcd, hosts, services, replicas)
    uid = os.getuid() if uid is None else uid
    lease = etcd.lease(ADOPT_TTL)
    record = {"app": app, "cmd": None, "hosts": hosts, "store": store, "services": services,
              "replicas": replicas, "created": time.time(), "adopted": True,
              "adopting": True, **({"keep": retention(**keep)} if keep else {})}  # fmt: skip
    try:
        if not etcd.create(K.app(app), record, lease=lease):
            raise AppExists(f"application {app} exists already")
    except BaseException:
        with contextlib.suppress(Exception):
            lease.revoke()
        raise
    try:
        for n, (h, pid) in enumerate(pids):
            etcd.put(K.part(app, n), {"part": n, "host": h, "pid": pid, "state": "adopting",
                                      "uid": uid, "lease": lease.id}, lease=lease)  # fmt: skip
        deadline = time.monotonic() + timeout
        refreshed = time.monotonic()
        while True:
            got = {int(k.rsplit("/", 1)[1]): (k, v) for k, v in etcd.prefix(K.parts(app))}
            refused = [v for _, v in got.values() if v.get("state") == "refused"]
            if refused:
                p = refused[0]
                cls = getattr(errors, str(p.get("error")), None)
                if not (isinstance(cls, type) and issubclass(cls, CryoError)):
                    cls = CryoError
                raise cls(f"part {p['part']} ({p['host']}:{p['pid']}) not adopted:"
                          f" {p.get('reason')}")  # fmt: skip
            if len(got) == len(pids) and all(v.get("state") == "running"
                                               for _, v in got.values()):  # fmt: skip
                break
            if time.monotonic() > deadline:
                slow = sorted(n for n, (_, v) in got.items() if v.get("state") != "running")
                raise CryoError(f"parts {slow} of {app} were not adopted within {timeout:g} s")
            if time.monotonic() - refreshed > ADOPT_TTL / 3:
                lease.refresh()
                refreshed = time.monotonic()
            time.sleep(0.02)
        # the end: every key off the lease at once, if none changed meanwhile
        raw = {k: etcd.get_raw(k) for k in [K.app(app), *(k for k, _ in got.values())]}
        if any(v is None for v in raw.values()):
            raise CryoError(f"the adoption of {app} lost its keys (its lease expired)")
        final = {k: K.decode(v) or {} for k, v in raw.items()}
        final[K.app(app)].pop("adopting", None)
        for v in final.values():
            v.pop("lease", None)
        if not etcd.txn([(k, v) for k, v in raw.items() if v is not None],
                        list(final.items())):  # fmt: skip
            raise CryoError(f"the keys of {app} changed during its adoption")
    except BaseException:
        with contextlib.suppress(Exception):  # (if this fails too: the lease's expiry)
            etcd.delete_tree(K.app(app))
        with contextlib.suppress(Exception):
            lease.revoke()
        raise
    with contextlib.suppress(Exception):  # (its keys are off it)
        lease.revoke()
    return parts_of(etcd, app)


def wait_running(etcd: Etcd, app: str, count: int, timeout: float, epoch: int | None = None,
                 assign: dict[str, str] | None = None) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Wait until ``count`` parts run (at ``epoch``); with ``assign``, a host given a
    part that dies meanwhile ends the wait (the restart is to be planned again)."""
    deadline = time.monotonic() + timeout
    while True:
        parts = parts_of(etcd, app)
        if assign:
            alive = live_hosts(etcd)
            gone = sorted({h for n, h in assign.items() if h not in alive
                           and parts.get(int(n), {}).get("epoch") != epoch})  # fmt: skip
            if gone:
                raise CryoError(f"host {', '.join(gone)} failed during the restart of {app}")
        ok = [p for p in parts.values() if p["state"] == "running" and p.get("pid")
              and (epoch is None or p.get("epoch") == epoch)]  # fmt: skip
        if len(ok) == count:
            return parts
        failed = [p for p in parts.values() if p["state"] == "failed"]
        if failed:
            raise CryoError(f"part {failed[0]['part']} of {app} failed to start:"
                            f" {failed[0].get('reason')}")  # fmt: skip
        if time.monotonic() > deadline:
            raise CryoError(f"the parts of {app} did not all run within {timeout:g} s:"
                            f" {sorted(parts.items())}")  # fmt: skip
        time.sleep(0.02)


class Election:
    """The application's coordinator: whoever created its coordinator key, under a
    lease that expires ``ttl`` seconds after the coordinator dies.  ``wait`` is how long
    to wait for the key when another holds it (a dead coordinator's lease to expire).
    With ``take`` False the key is taken later, by :meth:`take`, or with a first round
    by :meth:`open`.  The lease is the process's kept one (Etcd.kept_lease): rounds in
    a row grant one lease, and a coordinator's key is deleted, not its lease revoked
    (by the round's commit, else by :meth:`close`)."""

    def __init__(self, etcd: Etcd, app: str, ttl: int = ELECTION_TTL,
                 wait: float = 0.0, take: bool = True) -> None:  # fmt: skip
        self.etcd, self.app, self.ttl, self.wait = etcd, app, ttl, wait
        self.me = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.raw = K.encode({"by": self.me}).encode()  # the key's value
        self.kept = etcd.kept_lease(ttl)
        self.held = False  # the key is ours (and not yet deleted)
        if take:
            try:
                self.take()
            except BaseException:
                self.close()
                raise

    @property
    def lease(self) -> Any:
        return self.kept.lease

    def _renew(self) -> None:
        """Our lease was gone (we were starved for longer than its TTL): another."""
        old = self.kept
        self.kept = self.etcd.kept_lease(self.ttl, stale=old.lease)
        old.release()

    def take(self) -> None:
        etcd, app = self.etcd, self.app
        deadline = time.monotonic() + self.wait
        while True:
            # our lease is kept alive while we wait for a dead coordinator's to expire
            # (longer than its TTL when etcd's leader changed: the new one extends
            # every lease): a key put under a lease that expired is refused (404)
            if not self.kept.alive():
                self._renew()
            try:
                if etcd.create(K.coordinator(app), {"by": self.me}, lease=self.kept.lease):
                    break
            except LeaseGone:
                self._renew()
                continue
            if time.monotonic() >= deadline:
                who = (etcd.get(K.coordinator(app)) or {}).get("by")
                raise CryoError(f"{app} has a coordinator already ({who})")
            time.sleep(0.1)
        self.held = True

    def open(self, key: str, value: dict[str, Any]) -> int | None:
        """Take the key and create round ``key`` (``value``) in one transaction, if no
        coordinator holds the key and the round does not exist: the revision of both
        (0: not known), or None if nothing was done."""
        if not self.kept.alive():
            self._renew()
        try:
            got = self.etcd.txn_revision([], [(K.coordinator(self.app), {"by": self.me}),
                                              (key, value)],
                                         absent=[K.coordinator(self.app), key],
                                         leases={K.coordinator(self.app): self.kept.id})
        except LeaseGone:  # (the slow way, then)
            self._renew()
            return None
        self.held = got is not None
        return got

    def dropped(self) -> tuple[str, bytes]:
        """What a decision deletes with it: our key, if it still holds our value."""
        return K.coordinator(self.app), self.raw

    def close(self, deleted: bool = False) -> None:
        """The end: our key deleted (unless ``deleted``: a commit did), the lease let
        go (it expires once unused)."""
        if self.held and not deleted:
            with contextlib.suppress(Exception):  # (gone with its lease, else)
                self.etcd.txn([], [], drop=self.dropped())
        self.held = False
        self.kept.release()


def resolve(etcd: Etcd, app: str, poll: float = 0.02,
            rounds: list[tuple[str, dict[str, Any]]] | None = None) -> list[tuple[int, str]]:
    """Decide every round left in "prepare" by a coordinator that is gone (we hold the
    election, so none is deciding it): committed if every part voted yes (their images
    are written and they are held), aborted at a no vote or once its deadline passed;
    until then wait for the votes.  ``rounds``: the rounds' keys as just read, if they
    were.  Returns (version, state) of each one decided."""
    out = []
    for key, first in etcd.prefix(K.rounds(app)) if rounds is None else rounds:
        if "/votes/" in key or first.get("state") not in (K.PREPARE, K.CUT):
            continue
        r, v = first, int(first["version"])
        raw = etcd.get_raw(key)
        while raw is not None:
            got = {int(k.rsplit("/", 1)[1]): x for k, x in etcd.prefix(K.votes(app, v))}
            parts = r.get("parts") or sorted(got)
            # (never past the deadline plus GRACE: agents abort then, and a held part's
            # watchdog may let it go soon after, so the cut would be no longer one)
            if all(got.get(n, {}).get("ok") and written(got[n]) for n in parts) and \
                    time.time() < r["deadline"] + GRACE:  # fmt: skip
                done = _next(etcd, app, key, raw, r, got, parts)
                if done is None:  # (cut: the replicas are on their way)
                    time.sleep(poll)
                    raw = etcd.get_raw(key)
                    r = K.decode(raw) or r
                    continue
                if done:
                    out.append((v, K.COMMITTED))
                break
            if any(not x["ok"] for x in got.values()) or time.time() > r["deadline"]:
                if etcd.swap(key, raw, {**r, "state": K.ABORTED}):
                    out.append((v, K.ABORTED))
                break
            time.sleep(poll)
            raw = etcd.get_raw(key)
            now = K.decode(raw)
            if now is None or now.get("state") not in (K.PREPARE, K.CUT):
                break
            r = now
    return out


def written(vote: dict[str, Any]) -> bool:
    """A yes vote whose part's image is written (not only collected: early release)."""
    return bool(vote.get("phase", "written") == "written")


def _next(etcd: Etcd, app: str, key: str, raw: bytes, r: dict[str, Any],
          got: dict[int, dict[str, Any]], parts: list[int],
          drop: tuple[str, bytes] | None = None) -> bool | None:  # fmt: skip
    """Every part of round ``r`` (held in etcd as ``raw``) voted yes: commit it (True;
    False if another decided it first; ``drop``: the coordinator's key, deleted with
    it), or, when replicas are still to be sent, cut it first (the parts go on, then
    send them) and wait for them (None)."""
    if all(got[n].get("replicated", True) for n in parts):
        record = _committed(int(r["version"]), got, parts)
        if r.get("keep"):  # (more than the last: the older versions kept listed with it)
            record["kept"] = _retained(etcd.get(K.committed(app)), int(r["version"]),
                                       r["keep"])  # fmt: skip
        return etcd.swap(key, raw, {**r, "state": K.COMMITTED, "decided": time.time()},
                         [(K.committed(app), record)], drop=drop)  # fmt: skip
    if r["state"] == K.PREPARE and not etcd.swap(key, raw, {**r, "state": K.CUT,
                                                           "cut": time.time()}):  # fmt: skip
        return False
    return None


def _committed(version: int, got: dict[int, dict[str, Any]], parts: list[int]) -> dict[str, Any]:
    """The ``committed`` record of round ``version`` from its votes."""
    return {"version": version, "images": {str(n): got[n]["image"] for n in parts},
            "hosts": {str(n): got[n].get("host") for n in parts},
            "replicas": {str(n): got[n].get("replicas") or {} for n in parts}}  # fmt: skip


def resolve_stale(etcd: Etcd, app: str, now: float | None = None) -> list[int]:
    """Abort every round still "prepare" whose deadline is past (plus GRACE unless a
    coordinator is resolving its own rounds); returns their versions."""
    now = time.time() if now is None else now
    out = []
    for key, r in etcd.prefix(K.rounds(app)):
        if "/votes/" in key or r.get("state") not in (K.PREPARE, K.CUT) \
                or now < r["deadline"]:  # fmt: skip
            continue
        raw = etcd.get_raw(key)
        if raw is not None and etcd.swap(key, raw, {**r, "state": K.ABORTED}):
            out.append(int(r["version"]))
    return out


def prune(etcd: Etcd, app: str, rounds: list[dict[str, Any]], keep: int = KEEP_ROUNDS) -> None:
    """Forget the decided ``rounds`` (and their votes) but the last ``keep``, once there
    are twice as many (what every agent reads at each step stays small; a checkpoint
    seldom pays for it)."""
    if len(rounds) < 2 * keep:
        return
    # (one transaction; K.round_ is the round's key and its votes')
    etcd.delete_prefixes([K.round_(app, int(r["version"])) for r in
                          sorted(rounds, key=lambda r: int(r["version"]))[:-keep]
                          if r.get("state") not in (K.PREPARE, K.CUT)])  # fmt: skip


def checkpoint(etcd: Etcd, app: str, timeout: float = 60.0,
               report: Any = None, hold: bool = False) -> int:  # fmt: skip
    """One global checkpoint; returns its version, or raises RoundFailed (every part
    then resumes as it was).  A round left half-done by a coordinator that died is
    decided first (``report`` is called with what became of it).  The parts are let
    go once every part is frozen and collected and its own pages are read (early
    release); with ``hold``, only at the decision (or the cut), as before."""
    # the lease first; then, when etcd holds no coordinator and no round half-done,
    # the election and the round in one transaction (else the election, then what a
    # coordinator that is gone left, then the round)
    election = Election(etcd, app, wait=ELECTION_TTL + 2, take=False)
    committed = False
    try:
        quick = True  # (until the one transaction fails once)
        while True:
            # every key of the application in one request (its record, parts, rounds
            # and their votes): what the round is planned from
            kv = app_keys(etcd, app)
            if not any(k == K.app(app) for k, _ in kv):
                raise CryoError(f"no grid application {app}")
            if dict(kv)[K.app(app)].get("adopting"):
                raise CryoError(f"{app} is being adopted (grid adopt): not every part is"
                                " taken")  # fmt: skip
            at_start = [(k, v) for k, v in kv if k.startswith(K.rounds(app))]
            half_done = any("/votes/" not in k and v.get("state") in (K.PREPARE, K.CUT)
                            for k, v in at_start)  # fmt: skip
            if not election.held and (not quick or half_done
                                      or any(k == K.coordinator(app) for k, _ in kv)):
                election.take()
                continue  # (read again: what is there now that we coordinate)
            if election.held:
                for v, state in resolve(etcd, app, rounds=at_start):
                    if report is not None:
                        report(f"round {v} of {app}, left by a coordinator that is gone:"
                               f" {state}")  # fmt: skip
            parts = {int(k.rsplit("/", 1)[1]): v for k, v in kv
                     if k.startswith(K.parts(app))}  # fmt: skip
            rounds = [v for k, v in at_start if "/votes/" not in k]
            version = max((int(r["version"]) for r in rounds), default=0) + 1
            now = time.time()
            prepare = {"version": version, "state": K.PREPARE, "deadline": now + timeout,
                       "by": election.me, "parts": sorted(parts), "created": now}  # fmt: skip
            if hold:
                prepare["hold"] = True
            keep = dict(kv)[K.app(app)].get("keep")
            if keep and (int(keep.get("last") or 1) > 1 or keep.get("every")):
                prepare["keep"] = keep
            key = K.round_(app, version)
            if election.held:
                made = etcd.txn_revision([], [(key, prepare)], absent=[key])
                if made is None:
                    raise CryoError(f"round {version} of {app} exists already")
                break
            made = election.open(key, prepare)
            if made is not None:
                break
            quick = False  # another coordinates, or was quicker: the election first
        # each vote as the watch brings it (from the round's revision on: none is
        # missed, and the agents prepare while it is made; polled too, less often)
        voted = Votes()
        end = etcd.watch(K.votes(app, version), voted.event, seen=voted.seen,
                         start=made or None)  # fmt: skip
        try:
            # (the commit deletes our election key with it: no request after it)
            version = _decide(etcd, app, key, prepare, sorted(parts), timeout, voted,
                              election.dropped())  # fmt: skip
            committed = True
            return version
        finally:
            end()
            # (the decided rounds but the last are forgotten after the round, not
            # before: the round waits for no delete)
            with contextlib.suppress(CryoError):
                prune(etcd, app, rounds)
    finally:
        election.close(deleted=committed)


class Votes:
    """A round's votes as etcd's watch of them brings them (the decision waits for no
    read once the last one lands), or as read when the watch did not (it is made some
    moments after it is asked for; a stream that breaks is not made again): of each
    part, the vote of the latest revision either gave."""

    def __init__(self) -> None:
        self.event = threading.Event()  # set at each vote
        self._lock = threading.Lock()
        self._got: dict[int, tuple[int, dict[str, Any] | None]] = {}

    def seen(self, key: str, revision: int, value: dict[str, Any] | None) -> None:
        n = int(key.rsplit("/", 1)[1])
        with self._lock:
            if revision >= self._got.get(n, (0, None))[0]:
                self._got[n] = (revision, value)

    def now(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return {n: v for n, (_, v) in self._got.items() if v is not None}

    def read(self, etcd: Etcd, app: str, version: int) -> dict[int, dict[str, Any]]:
        for key, revision, value in etcd.prefix_revisions(K.votes(app, version)):
            self.seen(key, revision, value)
        return self.now()


def _decide(etcd: Etcd, app: str, key: str, prepare: dict[str, Any], parts: list[int],
            timeout: float, voted: Votes, drop: tuple[str, bytes] | None = None,
            ) -> int:  # fmt: skip
    """Wait for the votes of ``parts`` in round ``prepare`` (written) and decide it."""
    version = int(prepare["version"])
    raw = K.encode(prepare).encode()  # (what was put: no need to read it back)
    current = prepare
    deadline = time.monotonic() + timeout
    failure = None
    woken = True  # (no vote can be there yet)
    while time.monotonic() < deadline:
        voted.event.clear()
        # the votes the watch brought; read from etcd when none came for a while
        got = voted.now() if woken else voted.read(etcd, app, version)
        no = [v for v in got.values() if not v["ok"]]
        if no:
            failure = f"part {no[0]['part']}: {no[0].get('reason')}"
            break
        if set(got) >= set(parts) and all(written(got[n]) for n in parts) and (
                current["state"] == K.PREPARE or all(
                got[n].get("replicated", True) for n in parts)):  # fmt: skip
            done = _next(etcd, app, key, raw, current, got, parts, drop)
            if done:
                return version
            if done is False:
                failure = "the round was decided by another (aborted after its deadline)"
                break
            now = etcd.get_raw(key)  # cut: the parts go on and send their replicas
            assert now is not None
            raw, current = now, K.decode(now) or current
            continue
        woken = voted.event.wait(0.25)
    else:
        failure = f"not every part voted within {timeout:g} s"
    etcd.swap(key, raw, {**current, "state": K.ABORTED})
    raise RoundFailed(f"global checkpoint {version} of {app} aborted: {failure}")


def restart(etcd: Etcd, app: str, version: int | None = None,
            timeout: float = 60.0, *, kv: dict[str, dict[str, Any]] | None = None,
            alive_hosts: dict[str, dict[str, Any]] | None = None,
            lost: Sequence[int] = ()) -> dict[int, dict[str, Any]]:  # fmt: skip
    """Restart every part of ``app`` from global version ``version`` (the last
    committed by default): in place where its host lives, elsewhere where it failed.
    ``kv`` (every key of the application) and ``alive_hosts`` (the live hosts) as
    just read, if they were; the parts of ``lost`` are marked so in the transaction
    that asks the restart."""
    if kv is None:
        kv = dict(app_keys(etcd, app))
    committed = kv.get(K.committed(app))
    if committed is None:
        raise CryoError(f"{app} has no committed global checkpoint")
    moved: list[tuple[str, dict[str, Any]]] = []
    if version is not None and version != committed["version"]:
        kept = dict(committed.get("kept") or {})
        if str(version) not in kept:
            have = ", ".join(sorted([*kept, str(committed["version"])], key=int))
            raise CryoError(f"version {version} of {app} is not a committed checkpoint it"
                            f" keeps (kept: {have})")
        # from now on the application's last checkpoint is that one (a host that fails
        # next is restarted from it, not from a version of the run it left); the others
        # stay kept, the one committed last among them
        others = {k: v for k, v in kept.items() if k != str(version)}
        others[str(committed["version"])] = _entry(committed)
        committed = {"version": version, **kept[str(version)], "kept": others}
        moved = [(K.committed(app), committed)]
    alive = sorted(live_hosts(etcd) if alive_hosts is None else alive_hosts)
    if not alive:
        raise CryoError("no grid agent is alive")
    parts = {int(k.rsplit("/", 1)[1]): v for k, v in kv.items() if k.startswith(K.parts(app))}
    shared = not int((kv.get(K.app(app)) or {}).get("replicas", 0))

    def holders(n: int) -> list[str]:
        """The live hosts that can read part ``n``'s committed image: every one if the
        store is shared (no replicas), else its own host's and its replicas'."""
        if shared:
            return list(load)
        have = {committed.get("hosts", {}).get(str(n)),
                *committed.get("replicas", {}).get(str(n), {})}
        return [h for h in load if h in have]

    load = dict.fromkeys(alive, 0)
    assign: dict[str, str] = {}
    for n, p in sorted(parts.items()):  # a part stays where its host lives
        if p["host"] in holders(n):
            assign[str(n)] = p["host"]
            load[p["host"]] += 1
    for n in sorted(parts):  # the others go to the least loaded live host with a copy
        if str(n) in assign:
            continue
        can = holders(n)
        if not can:
            raise CryoError(f"part {n} of {app}: its image and every replica of it are on"
                            " hosts that are gone")  # fmt: skip
        h = min(can, key=lambda x: (load[x], x))
        assign[str(n)] = h
        load[h] += 1
    previous = kv.get(K.restart(app)) or {"epoch": 0}
    epoch = int(previous["epoch"]) + 1
    # (one transaction: the restart asked, and the lost parts marked so)
    etcd.txn([], [(K.restart(app), {"epoch": epoch, "version": committed["version"],
                                    "asked": time.time(), "assign": assign,
                                    "images": committed["images"],
                                    "hosts": committed.get("hosts", {}),
                                    "replicas": committed.get("replicas", {})}),
                  *((K.part(app, n), {**parts[n], "state": "lost"}) for n in lost
                    if n in parts), *moved])  # fmt: skip
    return wait_running(etcd, app, len(parts), timeout, epoch=epoch, assign=assign)


def status(etcd: Etcd, app: str) -> dict[str, Any]:
    record = etcd.get(K.app(app))
    if record is None:
        raise CryoError(f"no grid application {app}")
    alive = live_hosts(etcd)
    rounds = [v for k, v in etcd.prefix(K.rounds(app)) if "/votes/" not in k]
    return {"app": record, "hosts": sorted(alive),
            "parts": {n: {**p, "host_alive": p["host"] in alive}
                      for n, p in parts_of(etcd, app).items()},
            "committed": etcd.get(K.committed(app)), "rounds": rounds}  # fmt: skip


def watch(etcd: Etcd, app: str, every: float | None, stop: Any = None,
          poll: float = 0.5, keep: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Periodic global checkpoints (``every`` seconds) and, when a host running a part
    loses its lease, a restart of the application from its last committed version.
    Woken by etcd's watch of the hosts (a lease that expires deletes its key), and
    every ``poll`` seconds in any case.  ``keep``: the versions kept from now on."""
    if keep:
        set_retention(etcd, app, keep)
    wake = threading.Event()
    end = etcd.watch(K.hosts(), wake)
    next_due = time.monotonic() + every if every else None
    try:
        while stop is None or not stop.is_set():
            wake.clear()
            # (two requests: the live hosts, every key of the application)
            alive = live_hosts(etcd)
            kv = dict(app_keys(etcd, app))
            parts = {int(k.rsplit("/", 1)[1]): v for k, v in kv.items()
                     if k.startswith(K.parts(app))}  # fmt: skip
            # (a part "fenced": its host lost its lease but lives, and killed it)
            lost = [n for n, p in parts.items() if p["host"] not in alive
                    or p.get("state") == "fenced"]  # fmt: skip
            if lost and kv.get(K.committed(app)) is not None:
                try:
                    restart(etcd, app, kv=kv, alive_hosts=alive,
                            lost=[n for n in lost if parts[n].get("state") != "fenced"])
                except CryoError as err:  # (a host that died meanwhile: planned again)
                    log.warning("%s", err)
                    time.sleep(poll)
                    continue
            if next_due is not None and time.monotonic() >= next_due:
                with contextlib.suppress(CryoError):  # reported in its round; next on time
                    checkpoint(etcd, app)
                next_due = time.monotonic() + (every or 0)
            left = poll if next_due is None else max(0.0, min(poll, next_due - time.monotonic()))
            wake.wait(left)
    finally:
        end()
