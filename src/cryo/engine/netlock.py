"""The network lock: while established TCP connections are checkpointed, and until a
restart has put them back, every packet of theirs is dropped by nftables, so that the
peer sees a silent connection (it retransmits) and never a reset.

One nftables table per holder, of our own, in family ``inet``:

    cryo-<pid>            held by the live cryo process <pid> during a checkpoint or a
                          restart; a table whose process is gone is a leftover of a cryo
                          killed with SIGKILL, removed by the next run (:func:`sweep`)
    cryo-image-<pid>-<t>  the connections of an image whose processes were killed after
                          the checkpoint (<pid> its root, <t> when it was made): kept
                          until ``cryo restart`` of that image puts them back and removes
                          it (its name is in the image); ``nft delete table inet NAME``
                          gives the connections up

Each table has two sets of connections (``conn4``, ``conn6``: local address . local
port . remote address . remote port) and drops, in the input and output hooks, every
packet that belongs to one of them in either direction.  IPv4-mapped IPv6 connections
travel as IPv4 and go in ``conn4``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable

from cryo.errors import CryoError
from cryo.linux import net as N

log = logging.getLogger(__name__)
PREFIX = "cryo-"
IMAGE_PREFIX = "cryo-image-"
Conn = tuple[str, int, str, int]  # local address, local port, remote address, remote port
MARK = 0xC114  # packets cryo itself sends to a restored connection (engine/inet.py)


def _nft(script: str | None = None, *args: str) -> str:
    exe = shutil.which("nft")
    if exe is None:
        raise CryoError("established TCP connections need nftables to hold their traffic"
                        " while they are saved: nft is not installed (apt-get install"
                        " nftables)", resource="network lock")  # fmt: skip
    r = subprocess.run([exe, *args] if script is None else [exe, "-f", "-"], input=script,
                       capture_output=True, text=True, close_fds=True, check=False)  # fmt: skip
    if r.returncode != 0:
        raise CryoError(f"nft failed: {r.stderr.strip()}", resource="network lock")
    return r.stdout


def tables() -> list[str]:
    """The names of cryo's inet tables (asked of the kernel over nfnetlink: no nft run;
    by ``nft list tables`` if that fails, e.g. nf_tables not loaded yet)."""
    try:
        names = N.nft_tables() if shutil.which("nft") is not None else None
    except OSError:
        names = None
    if names is None:
        out = _nft(None, "list", "tables", "inet")
        names = [m.group(1) for m in re.finditer(r"^table inet (\S+)$", out, re.M)]
    return [n for n in names if n.startswith(PREFIX)]


def _delete(name: str) -> None:
    """Remove table ``name`` if it is there: one nfnetlink batch (no nft run; the time
    is the kernel's commit), by nft if that fails."""
    try:
        N.nft_delete_table(name)
    except OSError as err:
        log.debug("nfnetlink delete table %s: %s; by nft", name, err)
        # made (empty) if it is not there, then removed: one nft run, no listing first
        _nft(f"table inet {name}\ndelete table inet {name}\n")


def sweep() -> list[str]:
    """Remove the tables of cryo processes that are gone (killed with SIGKILL)."""
    removed = []
    for name in tables():
        m = re.fullmatch(r"cryo-(\d+)", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _delete(name)
            removed.append(name)
            log.info("removed the network lock %s of a cryo that is gone", name)
    return removed


def _elements(conns: Iterable[Conn]) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for la, lp, ra, rp in conns:
        a, b = _unmapped(la), _unmapped(ra)
        (v6 if ":" in a else v4).append(f"{a} . {lp} . {b} . {rp}")
    return v4, v6


def _unmapped(addr: str) -> str:
    """An IPv4-mapped IPv6 address as the IPv4 address it travels as."""
    if addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    if ":" in addr:
        mapped = ipaddress.IPv6Address(addr).ipv4_mapped
        return str(mapped) if mapped is not None else addr
    return addr


def _table(name: str) -> str:
    """The script that makes table ``name`` with its empty sets and rules."""
    rules = []
    for key, typ in (("conn4", "ipv4_addr"), ("conn6", "ipv6_addr")):
        rules.append(f"  set {key} {{ type {typ} . inet_service . {typ} . inet_service; }}")
    for chain, hook in (("in", "input"), ("out", "output")):
        rules.append(f"  chain {chain} {{ type filter hook {hook} priority -300; policy accept;")
        rules.append(f"    meta mark {MARK:#x} accept")  # made up by cryo for a connection
        for fam, key in (("ip", "conn4"), ("ip6", "conn6")):
            rules.append(f"    {fam} saddr . tcp sport . {fam} daddr . tcp dport @{key} drop")
            rules.append(f"    {fam} daddr . tcp dport . {fam} saddr . tcp sport @{key} drop")
        rules.append("  }")
    return f"table inet {name} {{\n" + "\n".join(rules) + "\n}\n"


class Lock:
    """One table of ours: made on the first connection added, removed by :meth:`drop`."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{PREFIX}{os.getpid()}"
        self.conns: list[Conn] = []
        self.made = False

    def add(self, conns: list[Conn]) -> None:
        if not conns:
            return
        script = ""
        if not self.made:
            sweep()
            script = _table(self.name)
        v4, v6 = _elements(conns)
        for key, elems in (("conn4", v4), ("conn6", v6)):
            if elems:
                script += f"add element inet {self.name} {key} {{ {', '.join(elems)} }}\n"
        _nft(script)
        self.made = True
        self.conns.extend(conns)
        log.debug("network lock %s: %d connections", self.name, len(self.conns))

    def keep_as(self, name: str) -> Lock:
        """The same connections locked by a new table ``name`` (made before this one is
        removed, so that no packet passes between the two)."""
        other = Lock(name)
        if self.conns:
            other.made = True
            script = f"table inet {name}\ndelete table inet {name}\n" + _table(name)
            v4, v6 = _elements(self.conns)
            for key, elems in (("conn4", v4), ("conn6", v6)):
                if elems:
                    script += f"add element inet {name} {key} {{ {', '.join(elems)} }}\n"
            if self.made:  # in the same transaction: one nft run, no gap between the two
                script += f"delete table inet {self.name}\n"
            _nft(script)
            self.made = False
            other.conns = list(self.conns)
        self.drop()
        return other

    def drop(self) -> None:
        if self.made:
            _delete(self.name)
            self.made = False
            log.debug("network lock %s removed", self.name)


def image_lock_name(root_pid: int) -> str:
    return f"{IMAGE_PREFIX}{root_pid}-{int(time.time() * 1000):x}"


def drop_table(name: str) -> None:
    """Remove table ``name`` if it is there (without nft there is none)."""
    if shutil.which("nft") is None:
        return
    _delete(name)
