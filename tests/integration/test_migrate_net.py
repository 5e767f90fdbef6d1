"""What moves with a migrated process (issue 13): its TCP listeners, its established
connections when its IP address moves with it (`cryo migrate --tcp-established
--move-address ADDR`), and its executable and libraries with --save-files.

Three "hosts" (tests/hosts.py): A and B, and C, a client on one LAN (a bridge) with
them; the process's address moves from A to B while a client on C talks to it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VICTIMS, Procs, Victim, reap
from tests.hosts import Hosts
from tests.integration.test_migrate import (
    _clean_b,
    _exit_status,
    _migrate,
    _migrated,
    _on,
    _receiver,
    _secret,
    _spawn_on_a,
)

pytestmark = pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts()
    try:
        h.setup()
        h.add_client()
        yield h
    finally:
        h.teardown()
    for k in "ABC":
        assert not os.path.exists(f"/run/netns/cryo-mig-{k.lower()}{h.tag}")


def _moving(hosts: Hosts) -> str:
    """The process's own address, on A's interface on the LAN (a secondary address)."""
    addr = f"10.214.{hosts.net}.10"
    hosts.sh("ip", "-n", hosts.ns["A"], "addr", "add", f"{addr}/24", "dev", hosts.cdev["A"])
    return addr


def _addrs(hosts: Hosts, h: str) -> list[str]:
    out = json.loads(hosts.run(h, "ip", "-j", "-4", "addr", "show").stdout)
    return [a["local"] for link in out for a in link.get("addr_info", [])]


def _tables(hosts: Hosts, h: str) -> list[str]:
    return [x for x in hosts.run(h, "nft", "list", "tables").stdout.split()
            if x.startswith("cryo-")]  # fmt: skip


# A server: listeners on every address (ANY_PORT) and on its own address (OWN_PORT),
# each client answered "hi N" and closed; with "stream", the first client on OWN_PORT is
# kept and both sides send numbered lines (every byte once and in order, checked by the
# other side), "ok N" every 20 lines received; "tick N" always, 20 a second.  While the
# file PAUSE exists it accepts no one.
SERVER = r"""
import os, select, socket, sys, time
out, own, mode, pause = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
extra = [open(p) for p in sys.argv[5:]]  # files it holds open
def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")
ls = []
for addr, port in (("0.0.0.0", 7801), (own, 7802)):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(8); ls.append(s)
PAD = b"x" * 1000
conn, sent, got, buf, n, tick, last = None, 0, 0, b"", 0, 0, 0.0
say("ready")
while True:
    now = time.monotonic()
    if now - last >= 0.05:
        say(f"tick {tick}"); tick += 1; last = now
        if conn is not None:
            try:
                conn.sendall(b"%08d" % sent + PAD + b"\n"); sent += 1
            except OSError as e:
                say(f"conn closed: {e}"); conn.close(); conn = None
    rd = [conn] if conn is not None else []
    if not os.path.exists(pause):
        rd += ls
    for s in select.select(rd, [], [], 0.05)[0]:
        if s is conn:
            try:
                data = conn.recv(65536)
            except OSError as e:
                data = None; say(f"conn closed: {e}")
            if not data:
                if data is not None:
                    say("conn closed: EOF")
                conn.close(); conn = None; continue
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line != b"%08d" % got + PAD:
                    say(f"FAIL line {got}: {line[:20]!r}")
                got += 1
                if got % 20 == 0:
                    say(f"ok {got}")
        else:
            c, peer = s.accept()
            if mode == "stream" and s is ls[1] and conn is None and got == 0:
                conn = c; say(f"accepted {peer[0]}")
            else:
                c.sendall(b"hi %d\n" % n); n += 1; c.close()
"""

# The client on C: the same lines the other way, "ok N" every 20 lines received.
CLIENT = r"""
import select, socket, sys, time
out, addr = sys.argv[1], sys.argv[2]
def say(line):
    with open(out, "a") as f:
        f.write(line + "\n")
c = socket.create_connection((addr, 7802), timeout=10)
c.setblocking(False)
PAD = b"x" * 1000
sent, got, buf, last, pending = 0, 0, b"", 0.0, b""
say("ready")
while True:
    now = time.monotonic()
    if now - last >= 0.05:
        pending += b"%08d" % sent + PAD + b"\n"; sent += 1; last = now
    if pending:
        try:
            pending = pending[c.send(pending):]
        except BlockingIOError:
            pass
        except OSError as e:
            say(f"FAIL send: {e}"); break
    if select.select([c], [], [], 0.02)[0]:
        try:
            data = c.recv(65536)
        except OSError as e:
            say(f"FAIL recv: {e}"); break
        if not data:
            say("FAIL EOF"); break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line != b"%08d" % got + PAD:
                say(f"FAIL line {got}: {line[:20]!r}")
            got += 1
            if got % 20 == 0:
                say(f"ok {got}")
"""


def _server(procs: Procs, hosts: Hosts, own: str, mode: str, *files: str) -> Victim:
    (hosts.shared / "server.py").write_text(SERVER)
    out = hosts.shared / "server.out"
    return _spawn_on_a(procs, hosts, [sys.executable, str(hosts.shared / "server.py"),
                                      str(out), own, mode, str(hosts.shared / "pause"),
                                      *files], out)  # fmt: skip


def _client(procs: Procs, hosts: Hosts, own: str) -> Victim:
    (hosts.shared / "client.py").write_text(CLIENT)
    out = hosts.shared / "client.out"
    log = open(hosts.shared / "client.log", "ab")  # noqa: SIM115
    p = subprocess.Popen(hosts.argv("C", sys.executable, str(hosts.shared / "client.py"),
                                    str(out), own), stdin=subprocess.DEVNULL, stdout=log,
                         stderr=log, close_fds=True, start_new_session=True)  # fmt: skip
    log.close()
    p.returncode = 0
    procs.track(p.pid)
    v = Victim(p.pid, out, p)
    v.wait_line("ready", timeout=30)
    return v


def _hi(hosts: Hosts, addr: str, port: int, timeout: float = 10) -> str:
    """Connect from C, read the server's answer."""
    code = ("import socket, sys\n"
            f"c = socket.create_connection(({addr!r}, {port}), timeout={timeout})\n"
            "print(c.recv(64).decode().strip())\n")  # fmt: skip
    r = hosts.run("C", sys.executable, "-c", code, timeout=timeout + 10)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _ok_past(v: Victim, timeout: float = 30) -> None:
    """``v`` receives at least 40 more lines, none of them wrong."""
    v.wait_ok_after(max(v.oks(), default=0) + 40, timeout=timeout)


def _after(v: Victim, line: str, timeout: float = 10) -> None:
    v.wait_for(lambda ls: line in ls, timeout)


def _clean(hosts: Hosts, rcv: Victim) -> None:
    """Nothing of the migration on B (no process, file, table, address), no table on A."""
    _clean_b(hosts, rcv)
    assert _tables(hosts, "B") == [] and _tables(hosts, "A") == []
    assert hosts.client["B"] in _addrs(hosts, "B")  # (its own is there)
    assert f"10.214.{hosts.net}.10" not in _addrs(hosts, "B")


def _streaming(procs: Procs, hosts: Hosts, own: str, *files: str) -> tuple[Victim, Victim]:
    """The server on A streaming both ways with its client on C, both under way."""
    srv = _server(procs, hosts, own, "stream", *files)
    cli = _client(procs, hosts, own)
    _after(srv, f"accepted {hosts.client['C']}")
    _ok_past(cli)
    return srv, cli


def _went_on(hosts: Hosts, srv: Victim, cli: Victim, rcv: Victim) -> None:
    """After a failed migration: the source untraced, still talking to its client on
    its one connection, and nothing of the migration left on B."""
    assert "TracerPid:\t0\n" in Path(f"/proc/{srv.pid}/status").read_text()
    _ok_past(srv)
    _ok_past(cli)
    assert not [x for x in srv.lines() if x.startswith("conn closed")]
    _clean(hosts, rcv)


def test_listeners_move(procs: Procs, hosts: Hosts) -> None:
    """Listeners on every address and on the process's own (--move-address): B accepts
    new clients on both at once.  A client waiting in the accept queue is refused by
    name (exit 9), the address left on A, and the server accepts it afterwards."""
    own = _moving(hosts)
    srv = _server(procs, hosts, own, "listen")
    assert _hi(hosts, own, 7802) == "hi 0"
    assert _hi(hosts, hosts.client["A"], 7801) == "hi 1"
    secret = _secret(hosts)

    (hosts.shared / "pause").touch()  # one waits in the accept queue
    time.sleep(0.2)
    waiting = subprocess.Popen(hosts.argv("C", sys.executable, "-c",
                                          "import socket; c = socket.create_connection(("
                                          f"{own!r}, 7802), timeout=60);"
                                          " print(c.recv(64).decode().strip())"),
                               stdout=subprocess.PIPE, text=True, close_fds=True)  # fmt: skip
    try:
        time.sleep(0.5)
        rcv = _receiver(procs, hosts, secret)
        res = _migrate(hosts, srv.pid, secret, "--move-address", own)
        assert res.returncode == 9, res.stderr
        assert f"has a connection from {hosts.client['C']}:" in res.stderr, res.stderr
        assert "waiting to be accepted" in res.stderr, res.stderr
        assert own in _addrs(hosts, "A")
        (hosts.shared / "pause").unlink()
        answer, _ = waiting.communicate(timeout=30)
        assert answer.strip() == "hi 2"  # not lost
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    srv.wait_ok_after(max(srv.oks()) + 3)
    _clean(hosts, rcv)

    rcv = _receiver(procs, hosts, secret)  # its address does not move: B cannot bind it
    res = _migrate(hosts, srv.pid, secret)
    assert res.returncode not in (0, 70), res.stderr
    assert _hi(hosts, own, 7802) == "hi 3"  # on A, as before
    _clean(hosts, rcv)

    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, srv.pid, secret, "--move-address", own)
    new = _migrated(procs, hosts, srv, rcv, res)
    assert _hi(hosts, own, 7802, timeout=5) == "hi 4"  # at once
    assert _hi(hosts, hosts.client["B"], 7801, timeout=5) == "hi 5"
    assert own in _addrs(hosts, "B") and own not in _addrs(hosts, "A")
    assert _tables(hosts, "A") == [] and _tables(hosts, "B") == []
    new.wait_ok_after(max(new.oks()) + 3)


def test_established_connection_moves_with_its_address(procs: Procs, hosts: Hosts) -> None:
    """A connection streaming both ways with a client on C: without --tcp-established
    the migration is refused (exit 9) and nothing changes; with it and --move-address
    the connection goes on from B, every byte once and in order both ways, and no lock
    or address is left behind."""
    own = _moving(hosts)
    srv = _server(procs, hosts, own, "stream")
    cli = _client(procs, hosts, own)
    _after(srv, f"accepted {hosts.client['C']}")
    _ok_past(srv)
    _ok_past(cli)
    secret = _secret(hosts)

    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, srv.pid, secret, "--move-address", own)
    assert res.returncode == 9, res.stderr
    assert "established TCP connection" in res.stderr and "--tcp-established" in res.stderr
    assert own in _addrs(hosts, "A")
    assert _exit_status(rcv.pid) != 0
    _ok_past(srv)
    _ok_past(cli)
    _clean(hosts, rcv)

    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, srv.pid, secret, "--tcp-established", "--move-address", own)
    new = _migrated(procs, hosts, srv, rcv, res)
    assert own in _addrs(hosts, "B") and own not in _addrs(hosts, "A")
    _no_guard()  # (told it is done: it went, the address stays)
    fds = [os.readlink(f"/proc/{new.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{new.pid}/fd")]
    assert not [x for x in fds if x.startswith("pipe:")], fds  # (not the guard's)
    _ok_past(new)  # the client's lines arrive on B
    _ok_past(cli)  # and B's on the client
    _ok_past(new)
    assert not new.fails() and not cli.fails()
    assert not [x for x in new.lines() if x.startswith("conn closed")]
    assert _tables(hosts, "A") == [] and _tables(hosts, "B") == []


def test_failed_migration_puts_the_address_back(procs: Procs, hosts: Hosts) -> None:
    """B's restart fails (a file only in A's /tmp): the address goes back to A, the
    locks go, the source goes on talking to its client, nothing is left on B."""
    own = _moving(hosts)
    hosts.run("A", "sh", "-c", "seq 100 > /tmp/only-on-a.txt")
    srv, cli = _streaming(procs, hosts, own, "/tmp/only-on-a.txt")
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, srv.pid, secret, "--tcp-established", "--move-address", own)
    assert res.returncode not in (0, 70), res.stderr
    assert "/tmp/only-on-a.txt" in res.stderr, res.stderr
    assert own in _addrs(hosts, "A")
    assert _on(hosts, "A", srv.pid)
    _went_on(hosts, srv, cli, rcv)


def test_connection_whose_address_stays_fails_there(procs: Procs, hosts: Hosts) -> None:
    """A connection on A's own address (which does not move), with --tcp-established:
    B's restart cannot make it; the source goes on with its client, B is left clean."""
    srv, cli = _streaming(procs, hosts, hosts.client["A"])
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, srv.pid, secret, "--tcp-established")
    assert res.returncode not in (0, 70), res.stderr
    _went_on(hosts, srv, cli, rcv)


def test_destination_that_cannot_take_the_address_refuses(procs: Procs, hosts: Hosts) -> None:
    """B has no interface in the address's subnet, or has the address already: refused
    at the handshake (nothing frozen, no round), the source untouched, B clean."""
    own = _moving(hosts)
    srv = _server(procs, hosts, own, "listen")
    secret = _secret(hosts)
    for spec, why in ((f"{own}/32", "no interface here is in the subnet"),
                      (own, "is on an interface here already")):  # fmt: skip
        if why.startswith("is on"):
            hosts.sh("ip", "-n", hosts.ns["B"], "addr", "add", f"{own}/24", "dev",
                     hosts.cdev["B"])  # fmt: skip
        rcv = _receiver(procs, hosts, secret)
        res = _migrate(hosts, srv.pid, secret, "--move-address", spec)
        assert res.returncode == 1 and why in res.stderr, res.stderr
        assert "round 1" not in res.stderr, res.stderr
        assert own in _addrs(hosts, "A")
        reap(rcv.pid, timeout=30)
        _clean_b(hosts, rcv)
    assert _hi(hosts, hosts.client["A"], 7801) == "hi 0"
    srv.wait_ok_after(max(srv.oks()) + 3)


def test_tcp_close_moves_it_closed(procs: Procs, hosts: Hosts) -> None:
    """--tcp-close as in cryo restart: the process on B finds its connection closed
    and goes on; its listeners take new clients."""
    own = _moving(hosts)
    srv, _ = _streaming(procs, hosts, own)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, srv.pid, secret, "--tcp-close", "--move-address", own)
    new = _migrated(procs, hosts, srv, rcv, res)
    new.wait_line("conn closed", timeout=30)
    assert _hi(hosts, own, 7802) == "hi 0"
    new.wait_for(lambda ls: len([x for x in ls if x.startswith("tick ")]) > 5, timeout=10)
    assert _tables(hosts, "A") == [] and _tables(hosts, "B") == []


def _spmf_on_a(hosts: Hosts) -> str:
    """tests/victims/spmf.c and its library built in A's own /tmp (not on B)."""
    for d in ("/tmp/lib", "/tmp/bin"):
        assert hosts.run("A", "mkdir", "-p", d).returncode == 0
    for argv in (["gcc", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-o",
                  "/tmp/lib/libspmf.so", str(VICTIMS / "spmflib.c")],
                 ["gcc", "-O1", "-Wall", "-Werror", "-o", "/tmp/bin/spmf",
                  str(VICTIMS / "spmf.c"), "-L/tmp/lib", "-lspmf",
                  "-Wl,-rpath,/tmp/lib"]):  # fmt: skip
        r = hosts.run("A", *argv)
        assert r.returncode == 0, r.stderr
    assert hosts.run("B", "test", "-e", "/tmp/bin/spmf").returncode != 0
    return "/tmp/bin/spmf"


def test_save_files_through_migration(procs: Procs, hosts: Hosts) -> None:
    """An executable and a library only in A's /tmp: without --save-files B refuses
    (restart's exit code for a missing file, naming it), the source unharmed; with it,
    the process runs on B."""
    exe = _spmf_on_a(hosts)
    out = hosts.shared / "spmf.out"
    v = _spawn_on_a(procs, hosts, [exe, str(out)], out)
    v.wait_ok_after(3)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, v.pid, secret)
    assert res.returncode == 1, res.stderr
    assert "/tmp/" in res.stderr and "No such file or directory" in res.stderr, res.stderr
    assert "TracerPid:\t0\n" in Path(f"/proc/{v.pid}/status").read_text()
    v.wait_ok_after(max(v.oks()) + 5)
    _clean_b(hosts, rcv)

    rcv = _receiver(procs, hosts, secret)
    res = _migrate(hosts, v.pid, secret, "--save-files")
    last = max(v.oks())
    new = _migrated(procs, hosts, v, rcv, res)
    new.wait_ok_after(last + 10)
    maps = Path(f"/proc/{new.pid}/maps").read_text()
    assert any(x.endswith("-libspmf.so") for x in maps.split()), maps
    reap(new.pid)


def _guards() -> list[int]:
    """The receivers' address guards running (cryo.migrate.address --guard)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
            except OSError:
                continue
            if b"cryo.migrate.address\0--guard" in cmd:
                out.append(int(p))
    return out


def _no_guard(timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while _guards() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _guards() == []


def _migrating(hosts: Hosts, pid: int, secret: str, own: str, timeout: int
               ) -> subprocess.Popen[str]:  # fmt: skip
    """``cryo migrate --tcp-established --move-address`` started on A, not waited for."""
    return subprocess.Popen(hosts.argv("A", sys.executable, "-m", "cryo", "migrate",
                                       str(pid), "--to", f"{hosts.addr['B']}:7707",
                                       "--secret-file", secret, "--timeout", str(timeout),
                                       "--tcp-established", "--move-address", own),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            close_fds=True)  # fmt: skip


def _held_once_the_address_is_on_b(hosts: Hosts, own: str, rcv: Victim,
                                   mig: subprocess.Popen[str]) -> None:  # fmt: skip
    """Let the receiver go a step at a time (SIGSTOP, look, SIGCONT) until the address
    is on B; it is left stopped there."""
    deadline = time.monotonic() + 60
    while not _guards():
        assert time.monotonic() < deadline and mig.poll() is None, \
            ("no guard seen", mig.communicate(), rcv.out.read_text())  # fmt: skip
    while True:
        os.kill(rcv.pid, signal.SIGSTOP)
        if own in _addrs(hosts, "B"):
            return
        assert time.monotonic() < deadline and mig.poll() is None, "no address on B"
        os.kill(rcv.pid, signal.SIGCONT)
        time.sleep(0.002)


def test_receiver_killed_while_the_address_moves(procs: Procs, hosts: Hosts) -> None:
    """The receiver SIGKILLed once the address is on B: its guard removes
    the address and the table from B, the source puts the address back and goes on
    talking to its client, every byte once; nothing is left on B."""
    own = _moving(hosts)
    srv, cli = _streaming(procs, hosts, own)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret)
    assert _guards() == []
    mig = _migrating(hosts, srv.pid, secret, own, 10)
    try:
        _held_once_the_address_is_on_b(hosts, own, rcv, mig)
        assert _tables(hosts, "B")  # (its lock)
        os.kill(rcv.pid, signal.SIGKILL)
        _, err = mig.communicate(timeout=60)
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
    assert mig.returncode not in (0, 70), err
    _no_guard()
    assert own in _addrs(hosts, "A")
    _went_on(hosts, srv, cli, rcv)


def test_link_cut_while_the_address_moves(procs: Procs, hosts: Hosts) -> None:
    """The link between A and B cut once the address is on B (the receiver held there
    meanwhile, then let go on): B builds the process but never hears the source's go
    (GOGO), so it kills its copy and gives the address up; the source, told nothing,
    puts the address back and goes on with its client, every byte once; B clean."""
    own = _moving(hosts)
    srv, cli = _streaming(procs, hosts, own)
    secret = _secret(hosts)
    rcv = _receiver(procs, hosts, secret, "--timeout", "15")
    mig = _migrating(hosts, srv.pid, secret, own, 15)
    try:
        _held_once_the_address_is_on_b(hosts, own, rcv, mig)
        hosts.sh("ip", "-n", hosts.ns["A"], "link", "set", hosts.veth["A"], "down")
        os.kill(rcv.pid, signal.SIGCONT)
        _, err = mig.communicate(timeout=120)
    finally:
        if mig.poll() is None:
            mig.kill()
            mig.wait()
    assert mig.returncode not in (0, 70), err
    assert _exit_status(rcv.pid, timeout=60) not in (0, 70), rcv.out.read_text()
    _no_guard()
    assert own in _addrs(hosts, "A")
    _went_on(hosts, srv, cli, rcv)
