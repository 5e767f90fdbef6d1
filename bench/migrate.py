"""Migration between two "hosts" on this machine (network namespaces joined by a veth
pair, each with its own mount namespace and /tmp: tests/hosts.py), root only.

For a target of MIB MiB (tests/victims/migr.c), idle and with a writer giving 1% of its
pages a new version every second:

- ``cryo migrate`` with pre-copy: the rounds, the downtime (from the final freeze on A
  to the answer that the process runs on B), the total time, the bytes sent;
- ``cryo migrate --lazy`` (post-copy: it runs on B at once, its pages following): the
  downtime, the time until every page is there, the faults served;
- ``cryo migrate --no-pre-copy`` (stop and copy, streamed);
- stop and copy through a directory: ``cryo checkpoint --kill`` on A into A's /tmp,
  the directory copied to B's /tmp over TCP (tar), ``cryo restart --detach`` there:
  frozen (and so down) the whole time;
- ``cryo checkpoint --pre-copy`` on A of the same process: the final freeze, against a
  plain ``cryo checkpoint``'s.

    python bench/migrate.py [--mib 1024] [--runs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hosts import Hosts

from benchlib import build, reap
from cryo.engine.dump import checkpoint
from cryo.linux import libc
from cryo.linux.consts import PR
from cryo.migrate import checkpoint_pre_copy

PORT, COPY_PORT = 7717, 7718
CRYO = [sys.executable, "-m", "cryo"]


class Bench:
    def __init__(self, hosts: Hosts, mib: int) -> None:
        self.h, self.mib = hosts, mib
        self.exe = shutil.copy(build("migr", hosts.shared), hosts.shared / "migr-bin")
        self.secret = hosts.shared / "secret"
        self.secret.write_text(os.urandom(24).hex())
        self.secret.chmod(0o600)
        self.n = 0

    def target(self, rate: int, on_a: bool = True) -> tuple[int, Path]:
        """The victim on host A (else in this process's namespaces), filled and
        checking itself."""
        self.n += 1
        out = self.h.shared / f"out-{self.n}.txt"
        argv = [str(self.exe), str(out), str(self.mib), str(rate), "2000"]
        with open(self.h.shared / f"stdio-{self.n}.log", "ab") as f:
            p = subprocess.Popen(self.h.argv("A", *argv) if on_a else argv,
                                 stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                 close_fds=True, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while not (out.exists() and "ready" in out.read_text()):
            if time.monotonic() > deadline:
                raise RuntimeError("the target did not start")
            time.sleep(0.05)
        time.sleep(1.0)  # the writer at its pace
        return p.pid, out

    def receiver(self, *extra: str) -> subprocess.Popen[bytes]:
        err = self.h.shared / f"recv-{self.n}.err"
        with open(err, "wb") as fe:
            p = subprocess.Popen(self.h.argv("B", *CRYO, "receive", "--listen",
                                             f"{self.h.addr['B']}:{PORT}", "--secret-file",
                                             str(self.secret), "--once", *extra),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=fe,
                                 close_fds=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while "listening" not in err.read_text():
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)
        return p

    def migrate(self, rate: int, *extra: str, staging: bool = True) -> dict[str, Any]:
        pid, out = self.target(rate)
        recv = self.receiver(*(() if staging else ("--no-staging",)))
        try:
            res = self.h.run("A", *CRYO, "migrate", str(pid), "--to",
                             f"{self.h.addr['B']}:{PORT}", "--secret-file", str(self.secret),
                             "--json", *extra, timeout=600)  # fmt: skip
            if res.returncode:
                raise RuntimeError(f"migrate failed: {res.stderr}")
            r: dict[str, Any] = json.loads(res.stdout)
            recv.communicate(timeout=60)
            self.check(r["pid"], out)
            return r
        finally:
            reap(pid)
            if recv.poll() is None:
                recv.kill()
                recv.wait()
            self.cleanup()

    def check(self, pid: int, out: Path) -> None:
        """The process on B goes on and every page holds its version."""
        n = len(out.read_text().splitlines())
        deadline = time.monotonic() + 60
        while len(out.read_text().splitlines()) <= n:
            if time.monotonic() > deadline:
                raise RuntimeError("the migrated process does not go on")
            time.sleep(0.05)
        if "FAIL" in out.read_text():
            raise RuntimeError("the migrated process finds bad pages")
        reap(pid)

    def stop_and_copy(self, rate: int) -> dict[str, Any]:
        """checkpoint --kill into A's /tmp, tar over TCP into B's /tmp, restart there."""
        pid, out = self.target(rate)
        t0 = time.perf_counter()
        try:
            r = self.h.run("A", *CRYO, "checkpoint", str(pid), "-D", "/tmp/img", "--kill")
            if r.returncode:
                raise RuntimeError(r.stderr)
            t1 = time.perf_counter()
            sink = subprocess.Popen(self.h.argv("B", "sh", "-c", (
                f"{sys.executable} -c 'import socket,shutil,sys; s=socket.create_server("
                f"(\"{self.h.addr['B']}\", {COPY_PORT})); c,_=s.accept(); shutil.copyfileobj("
                "c.makefile(\"rb\"), sys.stdout.buffer, 1<<20)' | tar xf - -C /tmp")),
                close_fds=True)  # fmt: skip
            time.sleep(0.3)
            src = self.h.run("A", "sh", "-c", (
                f"tar cf - -C /tmp img | {sys.executable} -c 'import socket,shutil,sys;"
                f" c=socket.create_connection((\"{self.h.addr['B']}\", {COPY_PORT}));"
                " shutil.copyfileobj(sys.stdin.buffer, c.makefile(\"wb\"), 1<<20)'"))
            sink.wait(300)
            if src.returncode or sink.returncode:
                raise RuntimeError(f"copy failed: {src.stderr}")
            t2 = time.perf_counter()
            du = self.h.run("A", "du", "-sb", "/tmp/img").stdout.split()
            size = int(du[0]) if du else 0
            rr = self.h.run("B", *CRYO, "restart", "-D", "/tmp/img", "--detach")
            if rr.returncode:
                raise RuntimeError(rr.stderr)
            t3 = time.perf_counter()
            new = int(rr.stdout.split()[-1]) if rr.stdout.split() else _pid_of(out)
            self.check(new, out)
            return {"checkpoint": t1 - t0, "copy": t2 - t1, "restart": t3 - t2,
                    "total_seconds": t3 - t0, "downtime": t3 - t0, "bytes_sent": size}
        finally:
            reap(pid)
            self.cleanup()

    def local(self, rate: int) -> dict[str, float]:
        """The final freeze of checkpoint --pre-copy, and of a plain checkpoint (of a
        target in cryo's own network namespace: another one is refused)."""
        pid, _out = self.target(rate, on_a=False)
        d = Path(tempfile.mkdtemp(prefix="cryo-bench-pc."))
        try:
            r, rounds, arm = checkpoint_pre_copy(pid, str(d / "pc"))
            plain = checkpoint(pid, str(d / "plain"))
            return {"pre_copy_frozen": r.freeze_seconds, "arm_frozen": arm,
                    "rounds": len(rounds), "pre_copy_total": r.total_seconds,
                    "plain_frozen": plain.freeze_seconds, "plain_total": plain.total_seconds}
        finally:
            reap(pid)
            shutil.rmtree(d, ignore_errors=True)

    def cleanup(self) -> None:
        for h in "AB":
            self.h.run(h, "rm", "-rf", "/tmp/img")
            for p in self.h.pids(h):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, 9)


def report_pre_copy(what: str, pc: dict[str, Any]) -> None:
    mem = pc["memory_bytes"]
    rounds = ", ".join(f"{r['pages']} p/{r['seconds']:.2f} s" for r in pc["rounds"])
    written = sum(r["bytes"] for r in pc["rounds"][1:]) + pc["final_bytes"]
    print(f"{what}: rounds [{rounds}], arming froze {pc['arm_seconds']:.3f}"
          f" s, final {pc['final_bytes'] >> 10} KiB; downtime {pc['downtime']:.3f} s"
          f" (frozen write {pc['frozen_write']:.3f} s), total"
          f" {pc['total_seconds']:.2f} s, sent {pc['bytes_sent'] / 2**20:.1f} MiB ="
          f" {pc['bytes_sent'] / (mem + written):.3f} x (memory + written"
          f" {written / 2**20:.1f} MiB), staged on B {pc.get('staged_bytes', 0) / 2**20:.1f}"
          " MiB")  # fmt: skip
    print("  downtime breakdown: " + downtime_breakdown(pc))


def report_lazy(lz: dict[str, Any]) -> None:
    st = lz.get("lazy_stats", {})
    print(f"post-copy migrate --lazy: downtime {lz['downtime']:.3f} s (frozen write"
          f" {lz['frozen_write']:.3f} s, {lz['final_bytes'] >> 10} KiB in the freeze), every"
          f" page there after {lz['all_pages_seconds']:.2f} s ({lz['lazy_bytes'] / 2**20:.1f}"
          f" MiB after it ran, {int(st.get('faults', 0))} faults, {int(st.get('requests', 0))}"
          f" page requests), total {lz['total_seconds']:.2f} s, sent"
          f" {lz['bytes_sent'] / 2**20:.1f} MiB")  # fmt: skip


def downtime_breakdown(pc: dict[str, Any]) -> str:
    """Where the downtime went: on A the freeze and collect, the final write; on B each
    step from the final checkpoint's first frame (cryo.migrate.receiver); the rest is
    the answer's way back and what neither side counts (the frames in flight)."""
    src = {"A freeze+collect": pc["frozen_collect"],
           "A write": pc["frozen_write"] - pc["frozen_collect"]}  # fmt: skip
    dst = {f"B {k}": float(v) for k, v in pc.get("destination", {}).items()}
    rest = pc["downtime"] - pc["frozen_collect"] - sum(dst.values())
    parts = {**src, **dst, "other": rest}
    return ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items())


def _pid_of(out: Path) -> int:
    raise RuntimeError(f"no pid from the restart ({out})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="only the pre-copy migrations, staged and not (receive --no-staging)")
    args = ap.parse_args()
    libc.prctl(PR.SET_CHILD_SUBREAPER, 1)
    hosts = Hosts()
    try:
        hosts.setup()
        b = Bench(hosts, args.mib)
        pages = args.mib * 256
        for name, rate in (("idle", 0), ("writer 1%/s", max(1, pages // 100))):
            for run in range(args.runs):
                print(f"\n== {args.mib} MiB, {name}, run {run + 1}")
                pc = b.migrate(rate)
                report_pre_copy("pre-copy migrate", pc)
                unstaged = b.migrate(rate, staging=False)
                report_pre_copy("the same, receive --no-staging", unstaged)
                lz = b.migrate(rate, "--lazy")
                report_lazy(lz)
                if args.quick:
                    sys.stdout.flush()
                    continue
                nopc = b.migrate(rate, "--no-pre-copy")
                sc = b.stop_and_copy(rate)
                lo = b.local(rate)
                print(f"streamed stop-and-copy (--no-pre-copy): downtime {nopc['downtime']:.3f}"
                      f" s, total {nopc['total_seconds']:.2f} s, sent"
                      f" {nopc['bytes_sent'] / 2**20:.1f} MiB")  # fmt: skip
                print(f"directory stop-and-copy: checkpoint {sc['checkpoint']:.2f} s + copy"
                      f" {sc['copy']:.2f} s + restart {sc['restart']:.2f} s = downtime"
                      f" {sc['total_seconds']:.2f} s, {sc['bytes_sent'] / 2**20:.1f} MiB")
                print(f"pre-copy total / stop-and-copy: {pc['total_seconds'] / sc['total_seconds']:.2f}")  # noqa: E501
                print(f"local checkpoint --pre-copy: final freeze {lo['pre_copy_frozen']:.3f} s"
                      f" (arming {lo['arm_frozen']:.3f} s, {lo['rounds']} rounds, total"
                      f" {lo['pre_copy_total']:.2f} s); plain checkpoint frozen"
                      f" {lo['plain_frozen']:.3f} s (total {lo['plain_total']:.2f} s)")
                sys.stdout.flush()
    finally:
        hosts.teardown()


if __name__ == "__main__":
    main()
