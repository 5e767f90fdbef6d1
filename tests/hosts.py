"""Two "hosts" on this machine, for migration tests and benchmarks: network namespaces
joined by a veth pair, each with its own mount namespace whose /tmp is its own tmpfs.
Only addresses inside the namespaces (10.213.N.1 and .2) are used; teardown removes every
namespace, veth and mount made, whatever happened.  :meth:`Hosts.add_client` adds a third
"host", C, on a network of its own with A and B (a bridge in C: 10.214.N.1, .2 and .3),
for a peer that talks to a process while it moves from A to B."""

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
        self.net = n
        self.client: dict[str, str] = {}  # with add_client: addresses on the bridge
        self.cdev: dict[str, str] = {}  # A's and B's interfaces on it
        repo = Path(__file__).resolve().parent.parent
        # what of the repository shows in the hosts' own /tmp (when it lives there)
        self.repo_top = repo.parts[2] if repo.parts[1:2] == ("tmp",) and len(repo.parts) > 2 \
            else ""  # fmt: skip

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
        # the repository itself stays visible on both hosts even when it lives under
        # /tmp (a CI clone may): bound aside, /tmp replaced, bound back
        repo = str(Path(__file__).resolve().parent.parent)
        keep = self.mntdir / "keep"
        keep.mkdir()
        script = ('if [ "${1#/tmp/}" != "$1" ]; then mount --bind "$1" "$2"; fi; '
                  'mount -t tmpfs -o mode=1777 "$3" /tmp; '
                  'if [ "${1#/tmp/}" != "$1" ]; then mkdir -p "$1"; '
                  'mount --bind "$2" "$1"; umount "$2"; fi')
        for h in "AB":
            (self.mntdir / h).touch()
            self.sh("unshare", f"--mount={self.mntdir / h}", "--propagation", "private",
                    "sh", "-c", script, "sh", repo, str(keep), f"cryo-host{h}")
            self.made.append(f"mnt{h}")

    def add_client(self) -> None:
        """Host C: a network namespace with a bridge (10.214.N.3/24) on which A and B
        each have an interface (10.214.N.1 and .2): one layer-2 segment, as a LAN."""
        n, t = self.net, self.tag[-6:]
        self.ns["C"] = f"cryo-mig-c{self.tag}"
        self.sh("ip", "netns", "add", self.ns["C"])
        self.made.append("nsC")
        c = ["ip", "-n", self.ns["C"]]
        self.sh(*c, "link", "add", f"cmbr{t}", "type", "bridge")
        self.sh(*c, "addr", "add", f"10.214.{n}.3/24", "dev", f"cmbr{t}")
        self.sh(*c, "link", "set", f"cmbr{t}", "up")
        self.sh(*c, "link", "set", "lo", "up")
        self.client = {"A": f"10.214.{n}.1", "B": f"10.214.{n}.2", "C": f"10.214.{n}.3"}
        for h in "AB":
            dev, peer = f"cmc{h.lower()}{t}", f"cmp{h.lower()}{t}"
            self.sh("ip", "link", "add", dev, "type", "veth", "peer", "name", peer)
            self.made.append(f"cveth{h}")
            self.sh("ip", "link", "set", dev, "netns", self.ns[h])
            self.sh("ip", "link", "set", peer, "netns", self.ns["C"])
            self.sh(*c, "link", "set", peer, "master", f"cmbr{t}")
            self.sh(*c, "link", "set", peer, "up")
            self.sh("ip", "-n", self.ns[h], "addr", "add", f"{self.client[h]}/24", "dev", dev)
            self.sh("ip", "-n", self.ns[h], "link", "set", dev, "up")
            self.cdev[h] = dev

    def argv(self, h: str, *argv: str) -> list[str]:
        if h == "C":  # (no mount namespace of its own)
            return ["nsenter", f"--net=/run/netns/{self.ns[h]}", "--", *argv]
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
        for h in "ABC":  # nothing may be left in the namespaces
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
            if f"cveth{h}" in self.made:
                subprocess.run(["ip", "link", "del", f"cmc{h.lower()}{self.tag[-6:]}"],
                               check=False, capture_output=True)  # fmt: skip
        for h in "ABC":
            if f"ns{h}" in self.made:
                subprocess.run(["ip", "netns", "del", self.ns[h]], check=False)
        if "shared" in self.made:
            shutil.rmtree(self.shared, ignore_errors=True)
