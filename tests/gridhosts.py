"""Three (or more) "hosts" on this machine for the grid tests and benchmark: network
namespaces on one bridge.  The bridge lives in a namespace of its own (the "switch",
10.201.0.254), where etcd listens and the operator's commands (cryo grid run,
checkpoint, status, restart) are run; host i is a network namespace with a veth to the
bridge (10.201.0.(i+1)/24), a UTS namespace whose hostname is its name (h0, h1, ...)
and a mount namespace of its own, held by a process of its own (``holder``), in which
/tmp is a tmpfs of that host alone: its agent's store is there (``STORE``), so that
what one host writes no other can read, and replicas must travel over the network.
Only the directories named ``shared`` (the test's own directory, for the parts'
output, and where the victims are built) are seen by every host, as an NFS home
would be.  Every address is inside these namespaces only (the
root namespace is untouched), so fixed addresses and ports are safe even when several
runs go on at once.  A host "fails" by losing its link, then its processes (the holder
with them: its /tmp and store are gone) and its namespace.  Teardown removes every
process, namespace, veth and directory made, whatever happened."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import cryo

NET = "10.201.0"
ETCD_PORT = 2379
REPLICA_PORT = 7400
STORE = "/tmp/cryo-grid-store"  # each host's, in its own /tmp
# run in a host's network namespace by ``unshare --mount --uts``: the host's name ($1)
# is its hostname (restart_info() tells a part that moved so), /tmp becomes the host's
# own tmpfs, the shared directories (the other arguments) bound back at their paths
HOLDER = """set -e
hostname "$1"; shift
mount -t tmpfs -o mode=700 cryo-grid-stage /mnt
i=0; for d in "$@"; do mkdir /mnt/$i; mount --rbind "$d" /mnt/$i; i=$((i+1)); done
mount -t tmpfs -o mode=1777 cryo-grid-tmp /tmp
i=0; for d in "$@"; do mkdir -p "$d"; mount --move /mnt/$i "$d"; i=$((i+1)); done
umount /mnt
for f in /run/netns/*; do umount "$f" 2>/dev/null || true; done
echo ready
exec sleep 100000
"""


class GridHosts:
    def __init__(self, base: Path, count: int = 3, shared: tuple[Path, ...] = ()) -> None:
        self.tag = f"{os.getpid() % 100000}"
        self.base = base
        self.names = [f"h{i}" for i in range(count)]
        self.switch = f"cryo-grs{self.tag}"
        self.ns = {h: f"cryo-gr{h}-{self.tag}" for h in self.names}
        self.addr = {h: f"{NET}.{i + 1}" for i, h in enumerate(self.names)}
        self.services = [f"{NET}.{101 + i}" for i in range(count)]
        self.etcd_url = f"http://{NET}.254:{ETCD_PORT}"
        self.made: list[str] = []
        self.alive = set(self.names)
        self.etcd: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        # (and cryo's own source, which every host's commands import: a checkout in
        # /tmp, as CI's may be, would be hidden by the host's own /tmp)
        src = Path(cryo.__file__).resolve().parents[1]
        self.shared = [base, *shared, *([src] if src.is_relative_to("/tmp") else [])]
        self.holders: dict[str, subprocess.Popen[bytes]] = {}
        self.secret = base / "grid.secret"

    def sh(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def setup(self) -> None:
        self.sh("ip", "netns", "add", self.switch)
        self.made.append(self.switch)
        sw = ["ip", "-n", self.switch]
        self.sh(*sw, "link", "add", "br0", "type", "bridge")
        self.sh(*sw, "addr", "add", f"{NET}.254/24", "dev", "br0")
        self.sh(*sw, "link", "set", "br0", "up")
        self.sh(*sw, "link", "set", "lo", "up")
        for i, h in enumerate(self.names):
            ns = self.ns[h]
            self.sh("ip", "netns", "add", ns)
            self.made.append(ns)
            # made inside the switch (names there are ours alone), one end moved out
            self.sh(*sw, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0")
            self.sh(*sw, "link", "set", "eth0", "netns", ns)
            self.sh(*sw, "link", "set", f"p{i}", "master", "br0", "up")
            self.sh("ip", "-n", ns, "addr", "add", f"{self.addr[h]}/24", "dev", "eth0")
            self.sh("ip", "-n", ns, "link", "set", "eth0", "up")
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
            holder = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", "--", "unshare", "--mount", "--uts",
                 "--propagation", "private", "--", "sh", "-c", HOLDER, "holder", h,
                 *map(str, self.shared)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, close_fds=True)  # fmt: skip
            self.holders[h] = holder
            assert holder.stdout is not None
            line = holder.stdout.readline()
            assert line == b"ready\n", (line, holder.stderr.read() if holder.stderr else b"")
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, os.urandom(24).hex().encode())
        os.close(fd)

    def root(self, h: str) -> Path:
        """Host ``h``'s view of the file system (its own /tmp), from here."""
        return Path(f"/proc/{self.holders[h].pid}/root")

    def store(self, h: str) -> Path:
        """Host ``h``'s store, seen from here."""
        return Path(f"{self.root(h)}{STORE}")

    def argv(self, where: str, *argv: str) -> list[str]:
        """``argv`` run in host ``where`` (or in the switch: ``"switch"``)."""
        if where == "switch":
            return ["nsenter", f"--net=/run/netns/{self.switch}", "--", *argv]
        ns = f"/proc/{self.holders[where].pid}/ns"
        return ["nsenter", f"--net=/run/netns/{self.ns[where]}", f"--mount={ns}/mnt",
                f"--uts={ns}/uts", f"--wd={os.getcwd()}", "--", *argv]  # fmt: skip

    def start_etcd(self) -> None:
        import sys

        log = open(self.base / "etcd.log", "wb")  # noqa: SIM115
        peer = f"http://{NET}.254:{ETCD_PORT + 1}"
        self.etcd = subprocess.Popen(self.argv(
            "switch", "etcd", "--name", "g", "--data-dir", str(self.base / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"g={peer}"), stdout=log, stderr=log, close_fds=True)
        log.close()
        deadline = time.monotonic() + 30
        probe = ("import sys; from cryo.grid.etcd import Etcd; Etcd(sys.argv[1])")
        while subprocess.run(self.argv("switch", sys.executable, "-c", probe, self.etcd_url),
                             capture_output=True, timeout=30).returncode:  # fmt: skip
            assert self.etcd.poll() is None, (self.base / "etcd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "etcd did not start"
            time.sleep(0.2)

    def start_agent(self, h: str, lease: int = 3, *extra: str) -> subprocess.Popen[bytes]:
        """Host ``h``'s agent: its store in its own /tmp, taking replicas on its address
        with the grid's secret."""
        import sys

        logf = self.base / f"agent-{h}.log"
        before = logf.read_text().count("registered") if logf.exists() else 0
        log = open(logf, "ab")  # noqa: SIM115
        p = subprocess.Popen(self.argv(h, sys.executable, "-m", "cryo", "grid", "agent",
                                       "--etcd", self.etcd_url, "--host", h, "--store", STORE,
                                       "--lease", str(lease), "--listen",
                                       f"{self.addr[h]}:{REPLICA_PORT}", "--secret-file",
                                       str(self.secret), *extra),
                             stdout=log, stderr=log, close_fds=True)  # fmt: skip
        log.close()
        self.agents[h] = p
        deadline = time.monotonic() + 30
        while logf.read_text().count("registered") <= before:
            assert p.poll() is None, logf.read_text()
            assert time.monotonic() < deadline, f"agent {h} did not register"
            time.sleep(0.05)
        return p

    def cryo(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``cryo grid ARGS`` as the operator, from the switch."""
        import sys

        return subprocess.run(self.argv("switch", sys.executable, "-m", "cryo", "grid",
                                        args[0], "--etcd", self.etcd_url, *args[1:]),
                              capture_output=True, text=True, timeout=timeout,
                              close_fds=True)  # fmt: skip

    def pids(self, where: str) -> list[int]:
        ns = self.switch if where == "switch" else self.ns[where]
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             check=False).stdout  # fmt: skip
        return [int(x) for x in out.split()]

    def fail(self, h: str) -> None:
        """Host ``h`` dies: its link first (nothing it does after reaches the others, as
        when a machine loses power), then its agent and every process in it, its store,
        its namespace."""
        subprocess.run(["ip", "-n", self.ns[h], "link", "set", "eth0", "down"], check=True,
                       timeout=30)  # fmt: skip
        _kill_all(self.pids(h))
        for p in (self.agents.get(h), self.holders.get(h)):
            if p is not None:
                p.wait()
        subprocess.run(["ip", "netns", "del", self.ns[h]], check=False, timeout=30)
        self.made.remove(self.ns[h])
        self.alive.discard(h)

    def partition(self, h: str, up: bool = False) -> None:
        """Host ``h`` cut from the others and from etcd (its link down), or back."""
        subprocess.run(["ip", "-n", self.ns[h], "link", "set", "eth0", "up" if up else "down"],
                       check=True, timeout=30)  # fmt: skip

    def teardown(self) -> None:
        for ns in self.made:  # nothing may be left in the namespaces
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                 check=False).stdout  # fmt: skip
            _kill_all([int(x) for x in out.split()])
        for p in [*self.agents.values(), *self.holders.values(),
                  *([self.etcd] if self.etcd else [])]:  # fmt: skip
            with contextlib.suppress(Exception):
                p.kill()
            p.wait()
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for ns in reversed(self.made):  # veths go with their namespaces
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self.made.clear()
        with contextlib.suppress(FileNotFoundError):
            self.secret.unlink()
        shutil.rmtree(self.base / "etcd", ignore_errors=True)


def _kill_all(pids: list[int]) -> None:
    """SIGKILL every pid (all ours: what runs in our namespaces) and reap those that are
    our children or come back to us (the caller is a child subreaper): until each is
    gone, its pid and its threads' ids free again for a restart that needs them (a
    leader that is a zombie is not reaped while another of its threads still exits),
    or is a zombie that is not ours."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
                ours = True
            except ChildProcessError:
                ours = False
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if not ours and f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.01)
