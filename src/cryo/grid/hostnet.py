"""What an agent does to its host's network for the parts it runs:

- **service addresses**: each part has an IPv4 address of its own (a secondary address
  on the host's interface in that address's subnet) that moves with it, so that the TCP
  connections between parts, restored on another host, are still the same 4-tuples.
  Put on a host, the address is announced with a gratuitous ARP (the other hosts'
  neighbour entries point at the new interface at once, not after they go stale).
- **the restart lock**: while an application's parts are rolled back and restored, one
  nftables table per host (``cryo-grid-APP``) drops every TCP packet from or to the
  application's service addresses, so that no packet passes between a part already
  restored and one not yet rolled back (a reset from a socket that is gone, or data of
  the abandoned future); it is removed once every part runs again.
- **a silent kill**: a part that is rolled back is killed with its TCP connections in
  repair mode, so that closing them sends nothing (no FIN, no reset) and leaves no
  socket behind on their 4-tuples for the restored ones to collide with.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time

from cryo.errors import CryoError

log = logging.getLogger(__name__)
MARK = 0xC114  # packets cryo makes up for a restored connection (engine/inet.py)
TCP_REPAIR = 19


def _run(*argv: str, input_: str | None = None) -> str:
    r = subprocess.run(argv, input=input_, capture_output=True, text=True, close_fds=True,
                       check=False, timeout=30)  # fmt: skip
    if r.returncode != 0:
        raise CryoError(f"{' '.join(argv[:4])}: {r.stderr.strip()}", resource="grid network")
    return r.stdout


def _addresses() -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(_run("ip", "-j", "-4", "addr", "show"))
    return out


def device_for(addr: str, dev: str | None = None) -> tuple[str, int]:
    """The interface (and prefix length) on which service address ``addr`` goes: ``dev``
    if given, else the one with an address of this host in the same subnet, else the
    one that has ``addr`` already (a part rolled back in place whose service address is
    its interface's only one)."""
    ip = ipaddress.IPv4Address(addr)
    holder = None
    for link in _addresses():
        for a in link.get("addr_info", []):  # type: ignore[attr-defined]
            net = ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
            if (dev is None and ip in net and a["local"] != addr) or link["ifname"] == dev:
                return str(link["ifname"]), int(a["prefixlen"])
            if dev is None and a["local"] == addr:
                holder = str(link["ifname"]), int(a["prefixlen"])
    if holder is not None:
        return holder
    raise CryoError(f"no interface of this host is in the subnet of service address {addr}"
                    + (f" (or is {dev})" if dev else ""), resource="grid network")  # fmt: skip


def has_address(addr: str) -> bool:
    return any(a.get("local") == addr for link in _addresses()
               for a in link.get("addr_info", []))  # type: ignore[attr-defined]  # fmt: skip


def add_service(addr: str, dev: str | None = None) -> None:
    """Put service address ``addr`` on this host and announce it."""
    ifname, plen = device_for(addr, dev)
    if not has_address(addr):
        _run("ip", "addr", "add", f"{addr}/{plen}", "dev", ifname)
        log.info("service address %s on %s", addr, ifname)
    with contextlib.suppress(OSError):
        gratuitous_arp(addr, ifname)


def remove_service(addr: str) -> None:
    for link in _addresses():
        for a in link.get("addr_info", []):  # type: ignore[attr-defined]
            if a["local"] == addr:
                _run("ip", "addr", "del", f"{addr}/{a['prefixlen']}", "dev", str(link["ifname"]))


def gratuitous_arp(addr: str, ifname: str) -> None:
    """An ARP request for ``addr`` from ``addr``, broadcast on ``ifname``: every neighbour
    that knows ``addr`` updates its entry to our hardware address (asked of the kernel,
    SIOCGIFHWADDR: this network namespace's interface; /sys may show another's, e.g.
    under nsenter --net, and the neighbours would be pointed at a wrong address)."""
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        mac = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", ifname.encode()))[18:24]
    ip = socket.inet_aton(addr)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip, b"\0" * 6, ip)
    frame = b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for _ in range(2):
            s.send(frame)


# -- the restart lock ------------------------------------------------------------------
def lock_name(app: str, kind: str = "grid") -> str:
    return f"cryo-{kind}-" + re.sub(r"[^A-Za-z0-9_]", "_", app)[:40]


def lock(app: str, addrs: list[str], kind: str = "grid") -> None:
    """Drop every TCP packet from or to ``addrs`` on this host (made again if there):
    the restart lock (``kind`` "grid"), or a fenced host's ("fence")."""
    if not addrs:
        return
    if shutil.which("nft") is None:
        raise CryoError("the grid's restart lock needs nftables: nft is not installed",
                        resource="grid network")  # fmt: skip
    name = lock_name(app, kind)
    elems = ", ".join(addrs)
    rules = [f"table inet {name}", f"delete table inet {name}", f"table inet {name} {{",
             f"  set svc {{ type ipv4_addr; elements = {{ {elems} }}; }}"]
    for chain, hook in (("in", "input"), ("out", "output")):
        rules += [f"  chain {chain} {{ type filter hook {hook} priority -310; policy accept;",
                  f"    meta mark {MARK:#x} accept",
                  "    ip saddr @svc meta l4proto tcp drop",
                  "    ip daddr @svc meta l4proto tcp drop", "  }"]
    rules.append("}")
    _run("nft", "-f", "-", input_="\n".join(rules) + "\n")
    log.info("restart lock %s on %s", name, elems)


def unlock(app: str, kind: str = "grid") -> None:
    """The lock goes, if it is there: asked of the kernel directly (one nfnetlink dump
    and one batch, no nft run: the fence and the restart lock are lifted at once)."""
    import errno

    from cryo.linux import net

    name = lock_name(app, kind)
    try:
        if name not in net.nft_tables():
            return
        net.nft_delete_tables([name])
    except OSError as err:
        if err.errno == errno.ENOENT:  # (gone meanwhile)
            return
        raise CryoError(f"the {kind} lock {name} could not be removed: {err}",
                        resource="grid network") from err  # fmt: skip
    log.info("restart lock %s removed", name)


# -- a silent kill ---------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return out


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, deadline: float) -> None:
    """Until killed process ``pid`` is reaped, if it is our child (its pid, and its
    threads' ids, are free again then: a restart in place needs them; a leader that is
    a zombie is not reaped while another of its threads is still exiting), or else
    until it is a zombie or gone (its parent reaps it); or the deadline."""
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid or not os.path.exists(f"/proc/{pid}"):
                return
        except ChildProcessError:  # (not ours)
            if _gone(pid):
                return
        time.sleep(0.01)


def kill_silently(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL the process tree of ``pid`` with its TCP sockets in repair mode first
    (closed, they send nothing and vanish at once), and wait until it is gone."""
    from cryo.linux import libc

    procs = tree(pid)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    held = []
    for p in procs:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    if not os.readlink(f"/proc/{p}/fd/{fd}").startswith("socket:"):
                        continue
                    s = socket.socket(fileno=libc.fd_of(p, int(fd)))
                    held.append(s)
                    if s.family in (socket.AF_INET, socket.AF_INET6) and \
                            s.type == socket.SOCK_STREAM:  # fmt: skip
                        with contextlib.suppress(OSError):
                            s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    for p in procs:
        _wait_gone(p, deadline)
    for s in held:
        s.close()
