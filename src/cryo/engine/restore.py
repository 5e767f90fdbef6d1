"""Restart: ``validate()`` (everything an image holds read and checked before anything
is created), ``restart()`` (a whole restart session in one call) and ``wait()``.

The stages of a restart, their order and the drivers that act in each are in
engine/session.py (:class:`~cryo.engine.session.Restart`) and engine/drivers.py;
docs/design.md describes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryo.engine import memory, registers, sysvshm, tree
from cryo.engine.drivers import DRIVERS
from cryo.engine.ptrace import Tracee
from cryo.engine.session import Restart, RestoreResult
from cryo.errors import CryoError, ImageCorrupt
from cryo.image import records as R
from cryo.image import trust
from cryo.image.reader import Image, ImageSource

log = logging.getLogger(__name__)
# the records every live process of an image must have: the drivers' own kinds
_PER_PROCESS = tuple(k for d in DRIVERS if not d.optional for k in d.kinds)


@dataclass
class Plan:
    """What an image holds, read and checked."""

    tree: dict[str, Any]
    procs: dict[int, dict[bytes, dict[str, Any]]]  # live processes' records by old pid
    threads: dict[int, list[dict[str, Any]]]  # THRD records by old pid, leader first
    descs: list[dict[str, Any]]
    blobs: list[bytes]
    objects: dict[str, Any]
    segments: dict[int, Any]


_xstate_size: int | None = None


_XSTATE_CACHE = "/run/cryo/xstate-size"


def xstate_size_here() -> int:
    """Size of this CPU's xsave area as ptrace reports it: probed on a child once per boot
    (the answer is kept in /run, keyed by the boot id) and once per process."""
    global _xstate_size
    if _xstate_size is None:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        try:
            with open(_XSTATE_CACHE) as f:
                cached_boot, size = f.read().split()
            if cached_boot == boot:
                _xstate_size = int(size)
                return _xstate_size
        except (OSError, ValueError):
            pass
        child = tree.spawn_helper(None)
        try:
            t = Tracee.adopt_traceme_child(child)
            _xstate_size = len(t.get_xstate())
        finally:
            tree.kill(child)
        try:
            os.makedirs(os.path.dirname(_XSTATE_CACHE), exist_ok=True)
            tmp = f"{_XSTATE_CACHE}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(f"{boot} {_xstate_size}\n")
            os.replace(tmp, _XSTATE_CACHE)
        except OSError:  # a cache only
            pass
    return _xstate_size


def validate(src: str | ImageSource, *, trust_image: bool = False,
             allow_duplicate: bool = False,
             translate: Callable[[str], str] | None = None) -> tuple[ImageSource, Plan]:
    """Read and check everything before anything is created (the privilege rule on the
    paths as ``translate``, the restart's --translate, makes them)."""
    image = Image(src) if isinstance(src, str) else src
    trust.admit(image, trust_image=trust_image, allow_duplicate=allow_duplicate,
                translate=translate)
    trees = image.raw(R.TREE)
    if not trees:
        raise ImageCorrupt(f"image {image.path} is corrupt: no TREE record", path=image.path)
    tree_rec = trees[0]
    procs: dict[int, dict[bytes, dict[str, Any]]] = {}
    thread_recs: dict[int, list[dict[str, Any]]] = {}
    all_threads = image.raw(R.THRD)
    xstate = xstate_size_here()
    segments: dict[int, Any] = {}
    for p in tree_rec["procs"]:
        if p["zombie"]:
            continue
        pid = p["pid"]
        procs[pid] = {kind: image.one(kind, pid) for kind in _PER_PROCESS}
        trecs = sorted((t for t in all_threads if t["pid"] == pid),
                       key=lambda t: (t["tid"] != pid, t["tid"]))  # fmt: skip
        if not trecs or trecs[0]["tid"] != pid:
            raise ImageCorrupt(f"image {image.path} is corrupt: no thread record for {pid}",
                               path=image.path)  # fmt: skip
        thread_recs[pid] = trecs
        memory.check(procs[pid][R.MM])
        for t in trecs:
            registers.check(t, xstate)
        segments.update(sysvshm.check(image, procs[pid][R.MM]["vmas"]))
    image.verify()
    fdsc = image.raw(R.FDSC)
    shmo = image.raw(R.SHMO)
    return image, Plan(tree_rec, procs, thread_recs, fdsc[0]["descs"] if fdsc else [],
                       image.raw(R.FDAT), shmo[0] if shmo else {"objs": []},
                       segments)  # fmt: skip


def restart(
    path: str | ImageSource,
    *,
    must_reuse_pid: bool = False,
    shell_job: bool = False,
    translate: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    trust_image: bool = False,
    allow_duplicate: bool = False,
    net: dict[str, bool] | None = None,
    ignore_changed_files: bool = False,
    ignore_cpu: bool = False,
    new_pids: bool | None = False,
) -> RestoreResult:
    """Recreate the processes saved in ``path`` (a directory image, or any ImageSource
    such as a version of a store); they run, the first one as our child, when this
    returns.  ``trust_image`` restores an image whose seal does not verify (the owner's
    privileges still bound it); ``allow_duplicate`` a second copy of a running image;
    ``ignore_changed_files`` reopens files that changed since the checkpoint anyway;
    ``ignore_cpu`` restarts an image of a CPU with extensions this one lacks (engine/cpu.py).
    Every process gets its old pid back, or the restart fails (RestoreConflict, exit
    10) before anything is made: a program keeps pids (its children's, its threads', its
    own); ``new_pids`` takes new ones where the old are taken (None: for a process of
    one thread only).  The phases are engine/session.py's :class:`Restart`."""
    return Restart(path, must_reuse_pid=must_reuse_pid, shell_job=shell_job,
                   translate=translate, progress=progress, trust_image=trust_image,
                   allow_duplicate=allow_duplicate, net=net,
                   ignore_changed_files=ignore_changed_files, ignore_cpu=ignore_cpu,
                   new_pids=new_pids).run()


@contextlib.contextmanager
def forwarding(pid: int, forward: tuple[int, ...]) -> Iterator[None]:
    """While inside: the ``forward`` signals we get are passed on to ``pid``."""
    def fwd(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    old = {s: signal.signal(s, fwd) for s in forward}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def waitpid_child(pid: int, options: int = 0) -> int:
    """os.waitpid of our restored child ``pid``; its status."""
    try:
        return os.waitpid(pid, options)[1]
    except ChildProcessError as err:
        raise CryoError(f"process {pid} is not our child") from err


def shell_status(status: int) -> int:
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else \
        128 + os.WTERMSIG(status)  # fmt: skip


def wait(pid: int, forward: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
         ) -> int:  # fmt: skip
    """Wait for a restored child, forwarding ``forward`` signals to it; shell-style status.
    A shell job given the terminal is waited for as its shell would (engine/tty.py)."""
    from cryo.engine import tty

    if tty.handed_over(pid):
        return tty.wait_job(pid, forward)
    with forwarding(pid, forward):
        return shell_status(waitpid_child(pid))


__all__ = ["RestoreResult", "restart", "validate", "wait"]
