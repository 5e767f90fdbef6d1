"""The network lock: while established TCP connections are checkpointed, and until a
restart has put them back, every packet of theirs is dropped by nftables, so that the
peer sees a silent connection (it retransmits) and never a reset.

Tables of our own, in family ``inet``:

    cryo-image-<pid>-<t>  the connections of a checkpoint (<pid> its root, <t> when it
                          was made; the name is in the image): while the checkpoint runs,
                          held by its cryo (below); when the processes were killed after
                          the checkpoint, kept until ``cryo restart`` of that image puts
                          them back and removes it; ``nft delete table inet NAME`` gives
                          the connections up
    cryo-<pid>-holds-<image table>
                          empty, made in the same transaction as the image table: the
                          live cryo process <pid> holds it; removed with it when the
                          checkpoint ends (the processes go on), alone when they were
                          killed (the connections stay locked for the restart).  Whose
                          process is gone (a cryo killed with SIGKILL), it and the table
                          it holds are leftovers, removed by the next run (:func:`sweep`)
    cryo-<pid>            the same for a table without connections of an image

Each table of connections has two sets (``conn4``, ``conn6``: local address . local
port . remote address . remote port) and drops, in the input and output hooks, every
packet that belongs to one of them in either direction.  IPv4-mapped IPv6 connections
travel as IPv4 and go in ``conn4``.  Keeping the connections of a killed checkpoint is
the removal of one empty table (no copy of the connections into a table of another
name).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import shutil
import socket
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


def _delete(*names: str) -> None:
    """Remove tables ``names`` (each there) in one transaction: one nfnetlink batch (no
    nft run; the time is the kernel's commit), by nft if that fails."""
    try:
        N.nft_delete_tables(names)
    except OSError as err:
        log.debug("nfnetlink delete tables %s: %s; by nft", names, err)
        # made (empty) if one is not there, then removed: one nft run, no listing first
        _nft("".join(f"table inet {n}\ndelete table inet {n}\n" for n in names))


_OWNER = re.compile(r"cryo-(\d+)(?:-holds-(cryo-image-\S+))?")


def sweep() -> list[str]:
    """Remove the tables of cryo processes that are gone (killed with SIGKILL), and the
    tables of connections they held."""
    removed = []
    names = tables()
    for name in names:
        m = _OWNER.fullmatch(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            gone = [name] + ([m.group(2)] if m.group(2) in names else [])
            _delete(*gone)
            removed += gone
            log.info("removed the network lock %s of a cryo that is gone", ", ".join(gone))
    return removed


def _elements(conns: Iterable[Conn]) -> tuple[list[str], list[str]]:
    v4: list[str] = []
    v6: list[str] = []
    for la, lp, ra, rp in conns:
        a, b = _unmapped(la), _unmapped(ra)
        (v6 if ":" in a else v4).append(f"{a} . {lp} . {b} . {rp}")
    return v4, v6


def _keys(conns: Iterable[Conn]) -> dict[int, list[bytes]]:
    """The connections as the elements of sets conn4 and conn6 (linux/net.lock_key)."""
    out: dict[int, list[bytes]] = {4: [], 6: []}
    pton, key = socket.inet_pton, N.lock_key
    for la, lp, ra, rp in conns:
        a, b = _unmapped(la), _unmapped(ra)
        family, version = (socket.AF_INET6, 6) if ":" in a else (socket.AF_INET, 4)
        out[version].append(key(pton(family, a), lp, pton(family, b), rp))
    return out


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
    """The table ``name`` of connections, held by this process (its owner table beside
    it): made on the first connection added; :meth:`drop` removes both, :meth:`keep`
    only the owner's, leaving the connections locked for a restart."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{PREFIX}{os.getpid()}"
        self.owner = f"{PREFIX}{os.getpid()}-holds-{self.name}" if name else None
        self.conns: list[Conn] = []
        self.made = False

    def add(self, conns: list[Conn]) -> None:
        if not conns:
            return
        if not self.made:
            sweep()
        try:  # one nfnetlink batch (no nft run: 10-15 ms for 1,000 connections)
            N.nft_lock(self.name, _keys(conns), make=not self.made, owner=self.owner or "",
                       mark=MARK)  # fmt: skip
        except OSError as err:
            log.debug("nfnetlink network lock %s: %s; by nft", self.name, err)
            script = ""
            if not self.made:
                script = (f"table inet {self.owner}\n" if self.owner else "") + _table(self.name)
            v4, v6 = _elements(conns)
            for key, elems in (("conn4", v4), ("conn6", v6)):
                if elems:
                    script += f"add element inet {self.name} {key} {{ {', '.join(elems)} }}\n"
            _nft(script)
        self.made = True
        self.conns.extend(conns)
        log.debug("network lock %s: %d connections", self.name, len(self.conns))

    def keep(self) -> None:
        """The connections stay locked once this process is gone (until a restart
        removes the table, or ``nft delete table``): the owner's table is removed."""
        if self.made and self.owner:
            _delete(self.owner)
            log.debug("network lock %s kept", self.name)
        self.made = False

    def drop(self) -> None:
        if self.made:
            _delete(*([self.owner] if self.owner else []), self.name)
            self.made = False
            log.debug("network lock %s removed", self.name)


def image_lock_name(root_pid: int) -> str:
    return f"{IMAGE_PREFIX}{root_pid}-{int(time.time() * 1000):x}"


def drop_table(name: str) -> None:
    """Remove table ``name`` if it is there (without nft there is none)."""
    if shutil.which("nft") is None:
        return
    try:  # (one batch; a table that is not there fails it, ENOENT, and nothing changes)
        N.nft_delete_tables([name])
    except OSError as err:
        if err.errno == errno.ENOENT:
            return
        if name in tables():
            _delete(name)
