"""Every /proc file of a process, before the checkpoint and after the restart (issue 9,
session 11 h3).  :func:`snapshot` reads, for the process and each of its threads, every
file the kernel shows under /proc/PID and /proc/PID/task/TID (status, stat, statm,
limits, sched, personality, timerslack_ns, coredump_filter, oom_score_adj, loginuid,
sessionid, attr/*, cgroup, mountinfo, environ, cmdline, auxv, maps, smaps, numa_maps,
the pagemap flags of every page, the contents of the pages present, fdinfo of every fd,
ns/*, arch_status, wchan, syscall, timers, ...), takes out what must differ (each
exception below with its reason), and :func:`diff` names every other difference.  The
targets sit still while they are read (a C victim in sigsuspend, runtimes as idle as they
get), so the two snapshots of a restart that restored everything are equal."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VICTIMS, Procs, Victim, reap, run_cryo

pytestmark = pytest.mark.timeout(240)

# --- what must differ, and why -------------------------------------------------------

# /proc/PID/status: counters and residency that are the kernel's business
STATUS_SKIP = {
    "SigQ": "signals queued for the user: every process of the uid counts",
    "voluntary_ctxt_switches": "a counter: context switches since the task began",
    "nonvoluntary_ctxt_switches": "a counter",
    "VmHWM": "a high-water mark: the restore's own mappings and faults count",
    "VmPeak": "a high-water mark: the restore maps its restorer and scratch",
    "VmPTE": "page tables: their count follows the faults, not the program",
    "AVX512_elapsed_ms": "time since the task last used AVX-512",
    "VmRSS": "resident pages: file pages are faulted by whoever reads them (RssAnon kept)",
    "RssFile": "as VmRSS", "RssShmem": "as VmRSS: shared memory's pages",
    "FDSize": "the fd table's allocated slots: a fork sizes a child's by its parent's open"
              " fds, the kernel grows it to the highest fd opened and never shrinks it; the"
              " fds themselves are compared (fd/N, fdinfo/N)",
}
# /proc/PID/stat fields (1-based as proc(5) numbers them)
STAT_NAMES = ("pid", "comm", "state", "ppid", "pgrp", "session", "tty_nr", "tpgid", "flags",
              "minflt", "cminflt", "majflt", "cmajflt", "utime", "stime", "cutime", "cstime",
              "priority", "nice", "num_threads", "itrealvalue", "starttime", "vsize", "rss",
              "rsslim", "startcode", "endcode", "startstack", "kstkesp", "kstkeip", "signal",
              "blocked", "sigignore", "sigcatch", "wchan", "nswap", "cnswap", "exit_signal",
              "processor", "rt_priority", "policy", "delayacct_blkio_ticks", "guest_time",
              "cguest_time", "start_data", "end_data", "start_brk", "arg_start", "arg_end",
              "env_start", "env_end", "exit_code")  # fmt: skip
STAT_SKIP = {
    "minflt": "fault counters (docs/design.md: CPU-time clocks and counters start at 0)",
    "cminflt": "a counter", "majflt": "a counter", "cmajflt": "a counter",
    "utime": "CPU time starts again from 0 (design.md, signals and timers: a known limit)",
    "stime": "CPU time", "cutime": "children's CPU time", "cstime": "children's CPU time",
    "starttime": "the task's start time is the restart's",
    "rss": "resident pages: as statm, the faults of whoever touched them",
    "kstkesp": "0 unless the task is dumping core", "kstkeip": "0 unless dumping core",
    "processor": "the CPU it last ran on", "delayacct_blkio_ticks": "a counter",
    "guest_time": "a counter", "cguest_time": "a counter",
}
STATM_KEEP = (0, 3, 5)  # size, text, data: resident and shared are the faults'
SCHED_KEEP = ("policy", "prio", "se.load.weight", "se.slice", "uclamp.min", "uclamp.max",
              "effective uclamp.min", "effective uclamp.max", "numa_preferred_nid")
# the rest: counters and averages; dl.runtime and dl.deadline are a deadline task's
# budget left and its current absolute deadline (sched_getattr's are compared)
SMAPS_SKIP = {
    "Rss": "pages mapped in: file pages are faulted by whoever reads them",
    "Pss": "as Rss, shared with others", "Pss_Dirty": "as Rss", "Pss_Anon": "as Rss",
    "Pss_File": "as Rss", "Pss_Shmem": "as Rss",
    "Shared_Clean": "who else maps a page", "Shared_Dirty": "who else maps a page",
    "Private_Clean": "a file page not yet written", "Private_Dirty": "written pages",
    "Referenced": "the accessed bits: reclaim's", "SwapPss": "as Swap",
}
# files read whole per process and per thread; the others are parsed below
PROC_RAW = ("limits", "personality", "timerslack_ns", "coredump_filter", "oom_score_adj",
            "oom_adj", "loginuid", "sessionid", "cgroup", "cpuset", "mountinfo", "environ",
            "cmdline", "comm", "auxv", "timers", "timens_offsets", "uid_map", "gid_map",
            "setgroups", "projid_map", "arch_status", "wchan", "syscall", "autogroup",
            "numa_maps", "ksm_merging_pages", "children")  # fmt: skip
LINKS = ("cwd", "root", "exe")


def _read(path: str) -> bytes | str:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        return f"<{err.__class__.__name__} {err.errno}>"


def _text(x: bytes | str) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else x


def _kv(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = " ".join(v.split())
    return out


PF_FORKNOEXEC, PF_SUPERPRIV = 0x40, 0x100
PF_SKIP = PF_FORKNOEXEC | PF_SUPERPRIV  # stat's flags: process accounting's AFORK and ASU
# (a restored task is forked and never exec'd again, and cryo uses privileges in it; no
# call clears either; acct(2) alone shows them)
NUMA_COUNTS = re.compile(r" (?:anon|dirty|mapped|mapmax|active|writeback|swapcache|N\d+"
                         r"|kernelpagesize_kB)=\d+")


def _numa_maps(text: str) -> str:
    """The policy and what each mapping is; how many of its pages are where (and dirty,
    active, mapped) are the faults'."""
    return NUMA_COUNTS.sub("", text)


def _autogroup(text: str) -> str:
    return re.sub(r"/autogroup-\d+", "/autogroup-N", text)  # the id is the kernel's


SLEEPS = {"7", "35", "202", "230"}  # poll, nanosleep, futex, clock_nanosleep
EPOLL_WAITS = {"232", "281"}  # epoll_wait, epoll_pwait


def _syscall(text: str) -> str:
    """Number and arguments; "running" and the sp/pc of a task between calls alike.  A
    sleep the checkpoint interrupted goes on in restart_syscall (219), as after any
    signal: taken for the call it continues (its arguments are compared)."""
    parts = text.split()
    if parts and parts[0] in EPOLL_WAITS:  # its timeout: what was left of it, at a restart
        parts[4] = "timeout"
    if parts and parts[0] not in ("running", "-1"):
        return " ".join(["sleep" if parts[0] in SLEEPS | {"219"} else parts[0], *parts[1:7]])
    return parts[0] if parts else text


def _task(base: str, out: Snap, prefix: str) -> None:
    status = _kv(_text(_read(f"{base}/status")))
    for k, v in status.items():
        if k not in STATUS_SKIP:
            out[f"{prefix}status:{k}"] = v
    stat = _text(_read(f"{base}/stat"))
    if ")" in stat:
        head, _, tail = stat.rpartition(")")
        fields = [head.split(" (", 1)[0], head.split(" (", 1)[-1], *tail.split()]
        for name, v in zip(STAT_NAMES, fields, strict=False):
            if name not in STAT_SKIP:
                out[f"{prefix}stat:{name}"] = f"{int(v) & ~PF_SKIP:#x}" if name == "flags" \
                    else v  # fmt: skip
    sched = _kv(_text(_read(f"{base}/sched")).split("\n", 2)[-1])
    for k in SCHED_KEEP:
        if k in sched:
            out[f"{prefix}sched:{k}"] = sched[k]
    for name in PROC_RAW:
        raw = _read(f"{base}/{name}")
        if name == "autogroup":
            raw = _autogroup(_text(raw))
        elif name == "syscall":
            raw = _syscall(_text(raw))
        elif name == "mountinfo":  # the namespace's, compared as ns/mnt: others mount
            continue  # and unmount in it, bind namespaces' files (ip netns add) to it
        elif name == "numa_maps":
            for line in _numa_maps(_text(raw)).splitlines():
                out[f"{prefix}numa_maps {line.split()[0]}"] = line
            continue
        elif name == "arch_status":  # (the time since AVX-512 was last used)
            raw = re.sub(r"AVX512_elapsed_ms:\s*-?\d+\n?", "", _text(raw))
        out[f"{prefix}{name}"] = _text(raw) if not isinstance(raw, bytes) or name not in (
            "auxv", "environ", "cmdline") else raw.hex()  # fmt: skip
    for name in LINKS:
        with contextlib.suppress(OSError):
            out[f"{prefix}{name}"] = os.readlink(f"{base}/{name}")
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(f"{base}/attr")):
            out[f"{prefix}attr/{name}"] = _text(_read(f"{base}/attr/{name}"))
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(f"{base}/ns")):
            out[f"{prefix}ns/{name}"] = os.readlink(f"{base}/ns/{name}")


OBJECT = re.compile(r"^(pipe|socket):\[(\d+)\]$")
MADE_AGAIN = ("/memfd:", "/dev/zero (deleted)")  # objects made again: a new inode


def _fds(pid: int, out: Snap) -> None:
    """Each fd's link and fdinfo.  A pipe or socket made again has a new inode number:
    each is named by the first fd that holds it (both ends of one pipe stay one pipe),
    in its fdinfo and in an epoll's (hex) too."""
    names: dict[int, str] = {}
    fds = sorted(os.listdir(f"/proc/{pid}/fd"), key=int)
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            m = OBJECT.match(link)
            if m:
                link = names.setdefault(int(m[2]), f"{m[1]}:[as fd {fd}]")
            elif link.startswith(MADE_AGAIN) or link.endswith(" (deleted)"):
                names.setdefault(os.stat(f"/proc/{pid}/fd/{fd}").st_ino, f"inode of fd {fd}")
            out[f"fd/{fd}"] = link
    for fd in fds:
        info = _text(_read(f"/proc/{pid}/fdinfo/{fd}"))
        for ino, name in names.items():
            info = re.sub(rf"\bino:(\s*){ino}\n", rf"ino:\g<1>{name}\n", info)
            info = info.replace(f" ino:{ino:x} ", f" ino:{name} ")
        if "\ntfd:" in info:  # an epoll's watches: in its tree's order, by the kernel
            # addresses of their files: sorted (each with its events, data, file)
            head, *tfds = re.split(r"\n(?=tfd:)", info.rstrip("\n"))
            info = "\n".join([head, *sorted(tfds, key=lambda t: (int(t.split()[1]), t))]) + "\n"
        out[f"fdinfo/{fd}"] = info
    out.objects = names


PM_PRESENT, PM_SWAP, PM_FILE, PM_EXCL, PM_WP, PM_SOFT, PM_GUARD = (
    1 << 63, 1 << 62, 1 << 61, 1 << 56, 1 << 57, 1 << 55, 1 << 58)
PM_BIG = 1 << 32  # mappings larger than this: their pagemap is not read (a JVM's reserve)
PAGE = os.sysconf("SC_PAGE_SIZE")


class Snap(dict[str, str]):
    """The snapshot's keys and values, and the contents of the private pages present."""

    pages: dict[int, tuple[str, bytes]]
    objects: dict[int, str]  # inode -> its name in the snapshot (made again: a new inode)


def _mappings(pid: int, out: Snap, contents: bool) -> None:
    """maps, smaps (every field but the residency counts), and per mapping the pagemap
    flags of its private pages (present, swapped, exclusive, soft-dirty, uffd-wp, guard)
    as the page offsets that have each; with ``contents`` the bytes of those present.
    Pages of the page cache and of shared memory (PM_FILE) are left out: which of them
    are mapped in is the faults' business (a restart maps none it need not), and their
    contents are the file's."""
    smaps = _text(_read(f"/proc/{pid}/smaps"))
    cur = ""
    regions: list[tuple[int, int, str]] = []
    for line in smaps.splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            ino = parts[4]
            if path.startswith(MADE_AGAIN) or path.endswith(" (deleted)"):  # named as the
                # fd that holds it, or in order (a deleted file is made again: a new inode)
                ino = out.objects.setdefault(int(ino), f"object {len(out.objects)}")
            cur = f"map {parts[0]} {parts[1]} {parts[2]} {ino} {path}"
            out[cur] = ""
            regions.append((lo, hi, cur))
            continue
        k, _, v = line.partition(":")
        if k not in SMAPS_SKIP:
            out[f"{cur}:{k}"] = " ".join(v.split())
    out.pages = {}
    if not regions:  # (a zombie: no memory, its pagemap not to be opened)
        return
    with open(f"/proc/{pid}/pagemap", "rb") as pm, open(f"/proc/{pid}/mem", "rb") as mem:
        for lo, hi, key in regions:
            if hi - lo > PM_BIG or key.endswith(("[vsyscall]", "[vvar]", "[vvar_vclock]",
                                                 "[vdso]")):  # fmt: skip
                continue  # (the vDSO's pages are the kernel's: faulted by whoever calls)
            pm.seek(lo // PAGE * 8)
            raw = pm.read((hi - lo) // PAGE * 8)
            ents = [e for (e,) in struct.iter_unpack("<Q", raw)]
            priv = [i for i, e in enumerate(ents) if not e & PM_FILE]
            for name, bit in (("present", PM_PRESENT), ("swap", PM_SWAP),
                              ("exclusive", PM_EXCL), ("soft_dirty", PM_SOFT),
                              ("uffd_wp", PM_WP), ("guard", PM_GUARD)):  # fmt: skip
                out[f"{key}:pm.{name}"] = _runs([i for i in priv if ents[i] & bit])
            if not contents or "r" not in key.split()[2]:
                continue
            for i in priv:
                if ents[i] & PM_PRESENT:
                    with contextlib.suppress(OSError):
                        mem.seek(lo + i * PAGE)
                        out.pages[lo + i * PAGE] = (key, mem.read(PAGE))


def _runs(idx: list[int]) -> str:
    """Page offsets as runs ("0-3,7"): short enough to read in a diff."""
    runs: list[str] = []
    start = prev = -2
    for i in [*idx, -5]:
        if i != prev + 1:
            if start >= 0:
                runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = i
        prev = i
    return ",".join(runs)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, parents first."""
    out = [pid]
    for p in out:
        for t in os.listdir(f"/proc/{p}/task"):
            out += [int(c) for c in _text(_read(f"/proc/{p}/task/{t}/children")).split()
                    if c.isdigit()]  # fmt: skip
    return out


PID_FIELDS = ("status:Pid", "status:Tgid", "status:PPid", "status:TracerPid", "stat:pid",
              "stat:ppid", "stat:pgrp", "stat:session", "stat:tpgid")  # fmt: skip
NS_FIELDS = ("status:NStgid", "status:NSpid", "status:NSpgid", "status:NSsid")


def _nspids(pids: list[int]) -> dict[str, str]:
    """Each task's pid as cryo sees it -> as its own (innermost) pid namespace does: a
    `cryo run --pid-ns` job restarted keeps those, not the host's."""
    out = {}
    for p in pids:
        for t in os.listdir(f"/proc/{p}/task"):
            ns = _kv(_text(_read(f"/proc/{p}/task/{t}/status"))).get("NSpid", t).split()
            out[t] = ns[-1] if ns else t
    return out


def snapshot_tree(pid: int, contents: bool = True) -> Snap:
    """:func:`snapshot` of ``pid`` and of each of its descendants (keys "pid N/...",
    every pid as its own namespace sees it)."""
    out = Snap()
    out.pages, out.objects = {}, {}
    pids = tree(pid)
    ns = _nspids(pids)
    for p in pids:
        one = snapshot(p, contents)
        for key, value in one.items():
            k = re.sub(r"^task/(\d+)/", lambda m: f"task/{ns.get(m[1], m[1])}/", key)
            v = ns.get(value, value) if k.endswith(PID_FIELDS) else value
            if k.endswith(NS_FIELDS):  # (the innermost: the outer ones are the host's)
                v = v.split()[-1] if v.split() else v
            if k.endswith("children"):
                v = " ".join(ns.get(c, c) for c in v.split())
            out[f"pid {ns[str(p)]}/{k}"] = v
        out.pages.update({(p << 48) | at: (f"pid {ns[str(p)]}/{key}", data)
                          for at, (key, data) in one.pages.items()})  # fmt: skip
    return out


def snapshot(pid: int, contents: bool = True) -> Snap:
    """Every /proc file of ``pid`` and its threads, what must differ taken out."""
    out = Snap()
    _task(f"/proc/{pid}", out, "")
    fields = _text(_read(f"/proc/{pid}/statm")).split()
    out["statm"] = " ".join(fields[i] for i in STATM_KEEP if i < len(fields))
    _fds(pid, out)
    _mappings(pid, out, contents)
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        _task(f"/proc/{pid}/task/{tid}", out, f"task/{tid}/")
    return out


NCPU = os.cpu_count() or 1


def _rseq_only(x: bytes, y: bytes) -> bool:
    """Every byte that differs lies in the CPU fields of what looks like a struct rseq
    (32-byte aligned: cpu_id_start, cpu_id, node_id, mm_cid; rseq_cs and flags equal):
    the kernel writes there, at each return to user space, which CPU the thread is on
    (glibc registers one for every thread), so a restored thread that runs on another
    CPU shows another."""
    for o in {i & ~31 for i in range(len(x)) if x[i] != y[i]}:
        a, b = struct.unpack_from("<IIQIIi", x, o), struct.unpack_from("<IIQIIi", y, o)
        if a[2:4] != b[2:4] or any(not 0 <= v < max(NCPU, 64) for v in (*a[:2], *b[:2])):
            return False
        if any(x[o + i] != y[o + i] for i in range(28, 32)):
            return False
    return True


def diff(before: Snap, after: Snap, allowed: dict[str, str] | None = None) -> list[str]:
    """Each key whose value differs, or is there on one side only, and each private page
    whose bytes differ (but for the CPU fields of an rseq area); ``allowed``: regular
    expressions of keys a target may change on its own, with the reason."""
    pats = [re.compile(p) for p in (allowed or {})]
    out = []
    for k in sorted(before.keys() | after.keys()):
        if before.get(k) != after.get(k) and not any(p.search(k) for p in pats):
            out.append(f"{k}: {before.get(k, '<none>')!r} -> {after.get(k, '<none>')!r}")
    for at in sorted(before.pages.keys() & after.pages.keys()):
        (key, x), (_, y) = before.pages[at], after.pages[at]
        if x != y and not _rseq_only(x, y) and not any(p.search(key) for p in pats):
            offs = [i for i in range(len(x)) if x[i] != y[i]]
            out.append(f"page {at:#x} of {key}: {len(offs)} bytes differ, first at"
                       f" {offs[0]:#x}: {x[offs[0]:offs[0] + 16].hex()} ->"
                       f" {y[offs[0]:offs[0] + 16].hex()}")  # fmt: skip
    return out


# --- the cycle -----------------------------------------------------------------------


def cycle(procs: Procs, pid: int, img: Path, settle: float = 0.3, contents: bool = True,
          *checkpoint_args: str) -> tuple[Snap, Snap, int]:
    """Snapshot, ``cryo checkpoint --kill``, reap, ``cryo restart --detach``, let it
    settle, snapshot: both snapshots and the restored pid."""
    pids = tree(pid)
    before = snapshot_tree(pid, contents)
    r = run_cryo("checkpoint", str(pid), "-D", str(img), "--kill", *checkpoint_args)
    assert r.returncode == 0, r.stderr
    for p in reversed(pids):
        reap(p)
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    new = procs.track(int(r.stdout))
    time.sleep(settle)
    for p in tree(new)[1:]:
        procs.track(p)
    return before, snapshot_tree(new, contents), new


def _exe(name: str, tmp: Path, *libs: str) -> str:
    out = tmp / name
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-pthread", "-o", str(out),
                    str(VICTIMS / f"{name}.c"), *libs], check=True)  # fmt: skip
    return str(out)


@pytest.fixture(scope="module")
def victim(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _exe("procstate_s11_h3", tmp_path_factory.mktemp("procstate_s11_h3"))


def _start(procs: Procs, exe: str, tmp: Path, modes: str) -> Victim:
    out = tmp / "out.txt"
    v = procs.spawn([exe, str(out), modes, str(tmp)], out)
    v.wait_line("ready")
    time.sleep(0.2)  # (every thread in its sigsuspend)
    return v


def _check(v: Victim, pid: int) -> None:
    """The victim checks itself (SIGUSR1: "ok N" or "FAIL what")."""
    n = len(v.oks())
    os.kill(pid, signal.SIGUSR1)
    v.wait_for(lambda ls: len(Victim(pid, v.out).oks()) > n or bool(v.fails()))
    assert not v.fails(), v.fails()


def _diff_after_cycle(procs: Procs, v: Victim, tmp: Path, *args: str,
                      allowed: dict[str, str] | None = None) -> list[str]:
    before, after, new = cycle(procs, v.pid, tmp / "img", 0.3, True, *args)
    d = diff(before, after, allowed)
    (tmp / "diff.txt").write_text("\n".join(d))
    _check(Victim(new, v.out), new)
    return d


@pytest.mark.parametrize("modes", ["plain", "prctl", "rlimit", "persona", "sched", "misc",
                                   "madvise", "pipe", "zeropage", "vmasplit", "signals",
                                   "timers", "creds", "shared", "ksm", "affinity", "child",
                                   "creds,child", "thp", "softdirty", "account",
                                   "fanotify", "oneshot", "inotify"])
def test_c_victim(procs: Procs, victim: str, tmp_path: Path, modes: str) -> None:
    v = _start(procs, victim, tmp_path, modes)
    d = _diff_after_cycle(procs, v, tmp_path, *(["--tree"] if "child" in modes else []))
    assert not d, "\n".join(d)


def _runtime(procs: Procs, tmp: Path, argv: list[str], poke: Path | None = None,
             allowed: dict[str, str] | None = None) -> list[str]:
    """A runtime's idle program: its /proc files (not its memory's bytes: its runtime's
    own threads write there) before and after, and "ok" from it afterwards."""
    out = tmp / "out.txt"
    v = procs.spawn([*argv, str(out), *([str(poke)] if poke else [])], out)
    v.wait_line("ready", timeout=60)
    time.sleep(0.5)
    before, after, new = cycle(procs, v.pid, tmp / "img", 0.5, False)
    d = diff(before, after, allowed)
    (tmp / "diff.txt").write_text("\n".join(d))
    w = Victim(new, out)
    if poke:
        poke.write_text("x")
    else:
        os.kill(new, signal.SIGUSR1)
    w.wait_for(lambda ls: any(x.startswith("ok ") for x in ls), timeout=30)
    return d


def test_python(procs: Procs, tmp_path: Path) -> None:
    import sys

    d = _runtime(procs, tmp_path, [sys.executable, str(VICTIMS / "idle_s11_h3.py")])
    assert not d, "\n".join(d)


def test_go(procs: Procs, tmp_path: Path) -> None:
    import shutil

    if shutil.which("go") is None:
        pytest.skip("needs go")
    exe = tmp_path / "idle"
    subprocess.run(["go", "build", "-o", str(exe), str(VICTIMS / "idle_s11_h3.go")],
                   check=True, cwd=tmp_path, env={**os.environ, "GOCACHE": str(tmp_path / "gc"),
                                                  "GOFLAGS": "-mod=mod"})  # fmt: skip
    d = _runtime(procs, tmp_path, [str(exe)])
    assert not d, "\n".join(d)


@pytest.mark.parametrize("opts", [[], ["-XX:+UseTransparentHugePages", "-Xms64m",
                                        "-XX:+AlwaysPreTouch", "-XX:+UseParallelGC"]],
                         ids=["default", "thp"])  # fmt: skip
def test_java(procs: Procs, tmp_path: Path, opts: list[str]) -> None:
    import shutil

    if shutil.which("javac") is None:
        pytest.skip("needs a JDK")
    subprocess.run(["javac", "-d", str(tmp_path), str(VICTIMS / "JvmIdle_s11_h3.java")],
                   check=True)  # fmt: skip
    d = _runtime(procs, tmp_path, ["java", "-Xmx64m", "-XX:-UsePerfData", *opts, "-cp",
                                   str(tmp_path), "JvmIdle_s11_h3"], tmp_path / "poke")
    assert not d, "\n".join(d)


def test_stopped(procs: Procs, victim: str, tmp_path: Path) -> None:
    """A process stopped by SIGSTOP (its threads in the group stop): the same /proc
    files, its state T, and it goes on once continued."""
    v = _start(procs, victim, tmp_path, "prctl")
    os.kill(v.pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while any(_text(_read(f"/proc/{v.pid}/task/{t}/stat")).rpartition(")")[2].split()[0] != "T"
              for t in os.listdir(f"/proc/{v.pid}/task")):  # (every thread: the stop done)
        assert time.monotonic() < deadline, "not stopped"
        time.sleep(0.01)
    before, after, new = cycle(procs, v.pid, tmp_path / "img")
    d = diff(before, after)
    assert not d, "\n".join(d)
    assert after[f"pid {new}/stat:state"] == "T"  # (the same pid: not a --pid-ns job)
    os.kill(new, signal.SIGCONT)
    _check(Victim(new, v.out), new)


def test_pid_namespace_job(procs: Procs, victim: str, tmp_path: Path) -> None:
    """A `cryo run --pid-ns` job (pid 1 of its namespace, its children in it): every
    /proc file of its processes as before."""
    out = tmp_path / "out.txt"
    r = run_cryo("run", "--pid-ns", "--output", str(tmp_path / "log"), "--", victim,
                 str(out), "prctl,sched,child", str(tmp_path))  # fmt: skip
    assert r.returncode == 0, r.stderr
    root = procs.track(int(r.stdout))
    v = Victim(root, out)
    v.wait_line("ready")
    time.sleep(0.3)
    for p in tree(root)[1:]:
        procs.track(p)
    before, after, new = cycle(procs, root, tmp_path / "img")
    d = diff(before, after)
    assert not d, "\n".join(d)
    _check(Victim(new, out), new)


def test_disarmed_watch_of_a_file_ready_for_nothing_refused(procs: Procs, victim: str,
                                                            tmp_path: Path) -> None:
    """A one-shot watch that fired, on a pipe now empty: the restart could not disarm it
    again (an epoll arms every watch it is given for EPOLLERR and EPOLLHUP, and only an
    event taken disarms one), so the checkpoint is refused, exit 9, naming it; the
    target goes on as before."""
    v = _start(procs, victim, tmp_path, "oneshot,idle")
    r = run_cryo("checkpoint", str(v.pid), "-D", str(tmp_path / "img"), "--kill")
    assert r.returncode == 9, r.stderr
    assert "one-shot watch" in r.stderr and "disarm" in r.stderr, r.stderr
    assert not (tmp_path / "img").exists() or not any((tmp_path / "img").iterdir())
    _check(v, v.pid)


RUNNING = {"syscall$": "a running target: where each thread is now",
           "wchan$": "as syscall", "stat:state$|status:State$": "running or sleeping",
           "sched:": "a running target's load figures",
           "fdinfo/3$": "the offset of the report it appends to"}  # fmt: skip


def test_cow_tree(procs: Procs, build: Any, tmp_path: Path) -> None:
    """victims/cowtree.c: a parent and three children sharing 32 MiB copy-on-write, each
    child with 1 MiB of its own and the parent with 1 MiB rewritten after the forks: the
    pagemap's exclusive bits (which pages are mapped once) as before, in every process."""
    out = tmp_path / "out.txt"
    v = procs.spawn([build("cowtree"), str(out)], out)
    v.wait_line("ready")
    for k in (1, 2, 3):
        v.wait_line(f"child {k} ready")
    time.sleep(0.3)
    for p in tree(v.pid)[1:]:
        procs.track(p)
    before, after, _new = cycle(procs, v.pid, tmp_path / "img", 0.5, False, "--tree")
    d = diff(before, after, RUNNING)
    assert not d, "\n".join(d)
