"""Two "hosts" on this machine, for migration tests and benchmarks: network namespaces
joined by a veth pair, each with its own mount namespace whose /tmp is its own tmpfs.
Only addresses inside the namespaces (10.213.N.1 and .2) are used; teardown removes every
namespace, veth and mount made, whatever happened."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path


class Hosts:
    """Two "hosts": network namespaces A and B joined by a veth pair (10.213.N.1 and .2),
    each with its own mount namespace in which /tmp is a tmpfs of its own.  ``shared``
    (under /var/tmp) is seen by both, as a shared home directory would be."""

    def __init__(self) -> None:
        n = os.getpid() % 200 + 20
        self.tag = f"{os.getpid()}"
        self.ns = {"A": f"cryo-mig-a{self.tag}", "B": f"cryo-mig-b{self.tag}"}
        self.addr = {"A": f"10.213.{n}.1", "B": f"10.213.{n}.2"}
        self.veth = {"A": f"cmga{self.tag[-6:]}", "B": f"cmgb{self.tag[-6:]}"}
        self.mntdir = Path(f"/run/cryo-mig-{self.tag}")
        self.shared = Path(f"/var/tmp/cryo-mig-{self.tag}")
        self.made: list[str] = []

    def sh(self, *argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)

    def setup(self) -> None:
        self.shared.mkdir(mode=0o755)
        self.made.append("shared")
        for h in "AB":
            self.sh("ip", "netns", "add", self.ns[h])
            self.made.append(f"ns{h}")
        self.sh("ip", "link", "add", self.veth["A"], "type", "veth", "peer", "name",
                self.veth["B"])  # fmt: skip
        self.made.append("veth")
        for h in "AB":
            self.sh("ip", "link", "set", self.veth[h], "netns", self.ns[h])
            self.sh("ip", "-n", self.ns[h], "addr", "add", f"{self.addr[h]}/24", "dev",
                    self.veth[h])  # fmt: skip
            self.sh("ip", "-n", self.ns[h], "link", "set", self.veth[h], "up")
            self.sh("ip", "-n", self.ns[h], "link", "set", "lo", "up")
        self.mntdir.mkdir(mode=0o700)
        self.made.append("mntdir")
        self.sh("mount", "--bind", str(self.mntdir), str(self.mntdir))
        self.made.append("mntbind")
        self.sh("mount", "--make-private", str(self.mntdir))
        for h in "AB":
            (self.mntdir / h).touch()
            self.sh("unshare", f"--mount={self.mntdir / h}", "--propagation", "private",
                    "mount", "-t", "tmpfs", "-o", "mode=1777", f"cryo-host{h}", "/tmp")
            self.made.append(f"mnt{h}")

    def argv(self, h: str, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns[h]}", f"--mount={self.mntdir / h}",
                "--", *argv]  # fmt: skip

    def run(self, h: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(h, *argv), capture_output=True, text=True,
                              timeout=timeout, close_fds=True)  # fmt: skip

    def pids(self, h: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.ns[h]], capture_output=True,
                             text=True, check=False).stdout  # fmt: skip
        return [int(x) for x in out.split()]

    def ns_inode(self, h: str, kind: str) -> int:
        path = f"/run/netns/{self.ns[h]}" if kind == "net" else str(self.mntdir / h)
        return os.stat(path).st_ino

    def teardown(self) -> None:
        for h in "AB":  # nothing may be left in the namespaces
            for pid in self.pids(h) if f"ns{h}" in self.made else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for h in "BA":
            if f"mnt{h}" in self.made:
                subprocess.run(["umount", "-l", str(self.mntdir / h)], check=False)
        if "mntbind" in self.made:
            subprocess.run(["umount", "-l", str(self.mntdir)], check=False)
        if "mntdir" in self.made:
            shutil.rmtree(self.mntdir, ignore_errors=True)
        if "veth" in self.made:  # (gone with its namespace, unless it never moved)
            subprocess.run(["ip", "link", "del", self.veth["A"]], check=False,
                           capture_output=True)  # fmt: skip
        for h in "AB":
            if f"ns{h}" in self.made:
                subprocess.run(["ip", "netns", "del", self.ns[h]], check=False)
        if "shared" in self.made:
            shutil.rmtree(self.shared, ignore_errors=True)
