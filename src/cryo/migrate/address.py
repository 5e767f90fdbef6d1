"""``cryo migrate --move-address ADDR[/PREFIX]``: the process's IPv4 address goes with it
(docs/design.md, "Migration", "What moves with the process").

Established TCP connections are 4-tuples: restored on the destination they are the same
connections only if their local address is there.  The order, both sides:

1. the handshake: the source finds the address on one of its interfaces (the prefix it
   has there, unless one is given) and the destination checks that it can take it (nft
   is there, the address is not on one of its interfaces yet, one of them is in its
   subnet) and answers ``ADOK`` (or ``FAIL``) before anything is frozen;
2. frozen, with the connections locked and in repair mode (engine/netlock.py), the
   source takes the address off its interface: a packet for it that still comes here is
   dropped (not a local address, no forwarding), never answered with a reset;
3. the destination, once the whole stream is in, drops every TCP packet from or to the
   address in an nftables table of its own (:class:`Arrival`), puts the address on its
   interface and announces it with a gratuitous ARP (the peers' neighbour entries point
   at it at once), restores the connections in repair mode, lets the process go and
   removes its table: the peer's retransmissions get through;
4. the source, told ``OKAY``, kills its copy (the connections in repair mode: nothing is
   sent) and removes its own lock.

On any failure the destination kills what it built, removes the address and its table
(before it answers ``FAIL``), and the source puts the address back on its interface
(announced) before its process is let go, its connections leaving repair mode.

The destination's table is ``cryo-image-mv-<address>`` with an empty owner table
``cryo-<pid>-holds-cryo-image-mv-<address>``: should the receiver be killed, the next
cryo run that sweeps (netlock.sweep) removes both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from cryo.engine import netlock
from cryo.errors import CryoError, Unsupported, Usage
from cryo.grid import hostnet

log = logging.getLogger(__name__)


def parse(spec: str) -> tuple[str, int | None]:
    """``ADDR[/PREFIX]`` -> (address, prefix or None)."""
    addr, sep, plen = spec.partition("/")
    try:
        ip = ipaddress.IPv4Address(addr)
        prefix = int(plen) if sep else None
    except ValueError as err:
        raise Usage(f"--move-address {spec!r}: give an IPv4 ADDR[/PREFIX]") from err
    if prefix is not None and not 0 < prefix <= 32:
        raise Usage(f"--move-address {spec!r}: the prefix length is 1 to 32")
    if ip.is_loopback or ip.is_multicast or ip.is_unspecified:
        raise Usage(f"--move-address {spec!r}: not a unicast address of an interface")
    return str(ip), prefix


def _where(addr: str) -> tuple[str, int] | None:
    """The interface that has ``addr`` and its prefix length there, or None."""
    for link in hostnet._addresses():
        for a in link.get("addr_info", []):  # type: ignore[attr-defined]
            if a.get("local") == addr:
                return str(link["ifname"]), int(a["prefixlen"])
    return None


def announce(addr: str, ifname: str) -> None:
    """A gratuitous ARP for ``addr`` on ``ifname``; if it cannot be sent, a warning: the
    peers learn the address's new place when their entries go stale."""
    try:
        hostnet.gratuitous_arp(addr, ifname)
    except OSError as err:
        log.warning("no gratuitous ARP for %s on %s: %s", addr, ifname, err)


def _need_nft() -> None:
    if shutil.which("nft") is None:
        raise Unsupported("--move-address needs nftables to hold the address's traffic while"
                          " it moves: nft is not installed (apt-get install nftables)",
                          resource="network lock")  # fmt: skip


@dataclass
class Departure:
    """The source's side: where the address is, taken off and put back."""

    addr: str
    prefix: int  # for the destination
    ifname: str
    here: int  # its prefix length here
    off: bool = False

    @classmethod
    def find(cls, spec: str) -> Departure:
        addr, prefix = parse(spec)
        _need_nft()
        where = _where(addr)
        if where is None:
            raise Usage(f"--move-address {addr}: no interface of this host has that address")
        return cls(addr, prefix if prefix is not None else where[1], where[0], where[1])

    @property
    def spec(self) -> str:
        return f"{self.addr}/{self.prefix}"

    def take_off(self) -> None:
        self.off = True  # (before: put_back also after a half-done removal)
        hostnet._run("ip", "addr", "del", f"{self.addr}/{self.here}", "dev", self.ifname)
        log.info("address %s taken off %s", self.addr, self.ifname)

    def put_back(self) -> None:
        """The address on its interface again (if taken off), announced."""
        if not self.off:
            return
        if _where(self.addr) is None:
            hostnet._run("ip", "addr", "add", f"{self.addr}/{self.here}", "dev", self.ifname)
        self.off = False
        announce(self.addr, self.ifname)
        log.info("address %s back on %s", self.addr, self.ifname)


class Arrival:
    """The destination's side: checked at the handshake; the lock, the address, undone."""

    def __init__(self, spec: Any) -> None:
        if not isinstance(spec, str):
            raise Usage(f"the sender asked to move address {spec!r}: not ADDR/PREFIX")
        self.addr, prefix = parse(spec)
        self.prefix = prefix if prefix is not None else 32
        self.name = f"{netlock.IMAGE_PREFIX}mv-{self.addr.replace('.', '_')}"
        self.owner = f"{netlock.PREFIX}{os.getpid()}-holds-{self.name}"
        self.ifname = ""
        self.locked = self.placed = False
        self._guard: int = -1  # the write end of the guard's pipe

    def check(self) -> None:
        """Can this host take the address?  (Before the source freezes anything.)"""
        _need_nft()
        if _where(self.addr) is not None:
            raise CryoError(f"address {self.addr} is on an interface here already: it cannot"
                            " move here", resource="network")  # fmt: skip
        net = ipaddress.IPv4Network(f"{self.addr}/{self.prefix}", strict=False)
        for link in hostnet._addresses():
            for a in link.get("addr_info", []):  # type: ignore[attr-defined]
                if ipaddress.IPv4Address(a["local"]) in net:
                    self.ifname = str(link["ifname"])
                    return
        raise CryoError(f"no interface here is in the subnet of {self.addr}/{self.prefix}:"
                        " the address cannot move here", resource="network")  # fmt: skip

    def lock(self) -> None:
        """Every TCP packet from or to the address dropped here (but cryo's own)."""
        self.guard()
        netlock.sweep()
        rules = [f"table inet {self.owner}", f"table inet {self.name}",
                 f"delete table inet {self.name}", f"table inet {self.name} {{"]
        for chain, hook in (("in", "input"), ("out", "output")):
            rules += [f"  chain {chain} {{ type filter hook {hook} priority -300;"
                      " policy accept;", f"    meta mark {netlock.MARK:#x} accept",
                      f"    ip saddr {self.addr} meta l4proto tcp drop",
                      f"    ip daddr {self.addr} meta l4proto tcp drop", "  }"]  # fmt: skip
        rules.append("}")
        self.locked = True  # (before: a half-made one is removed too)
        netlock._nft("\n".join(rules) + "\n")

    def place(self) -> None:
        hostnet._run("ip", "addr", "add", f"{self.addr}/{self.prefix}", "dev", self.ifname)
        self.placed = True
        announce(self.addr, self.ifname)
        log.info("address %s put on %s", self.addr, self.ifname)

    def unlock(self) -> None:
        if self.locked:
            names = [n for n in (self.owner, self.name) if n in netlock.tables()]
            if names:
                netlock._delete(*names)
            self.locked = False

    def undo(self) -> None:
        """The address off this host and the lock gone (a failed migration)."""
        try:
            if self.placed:
                with contextlib.suppress(CryoError):
                    hostnet.remove_service(self.addr)
                self.placed = False
        finally:
            self.unlock()
            self.release()

    def guard(self) -> None:
        """Should this process die before :meth:`release` (a killed receiver), a process
        of its own (``python -m cryo.migrate.address --guard``, told by the end of a
        pipe) removes the address and the tables from this host."""
        r, w = os.pipe()
        try:
            subprocess.Popen([sys.executable, "-m", "cryo.migrate.address", "--guard",
                              f"{self.addr}/{self.prefix}", self.name, self.owner],
                             stdin=r, stdout=subprocess.DEVNULL, close_fds=True,
                             start_new_session=True)  # fmt: skip
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        os.set_inheritable(w, False)
        self._guard = w

    def release(self) -> None:
        """Done (the process runs here with the address, or this side cleaned up): the
        guard goes without touching anything."""
        if self._guard >= 0:
            with contextlib.suppress(OSError):
                os.write(self._guard, b"k")
            os.close(self._guard)
            self._guard = -1


def _guard_main(spec: str, name: str, owner: str) -> int:
    """The guard: waits for the end of stdin; without the receiver's word first, the
    address and the tables go."""
    try:
        said = sys.stdin.buffer.read(1)
    except OSError:
        said = b""
    if said == b"k":
        return 0
    addr = spec.partition("/")[0]
    with contextlib.suppress(CryoError):
        hostnet.remove_service(addr)
    with contextlib.suppress(CryoError, OSError):
        names = [n for n in (owner, name) if n in netlock.tables()]
        if names:
            netlock._delete(*names)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--guard":
        sys.exit(_guard_main(*sys.argv[2:]))
    sys.exit(2)
