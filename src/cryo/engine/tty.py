"""Pseudo-terminals whose master and slave are both in the checkpoint (a terminal
multiplexer, ``script``, a program driving another through a pty): the pair with its
index, termios settings, window size, packet mode, lock and the slave's exclusive mode
(TIOCEXCL); the controlling terminal of
each session and its foreground process group.

Dump: a master (/dev/ptmx) is read from a duplicate: its index (TIOCGPTN), packet mode
(TIOCGPKT) and lock (TIOCGPTLCK), and through a slave opened from it (TIOCGPTPEER,
O_NOCTTY) the termios settings and window size.  Each session whose controlling
terminal is one of these pairs is noted on the master's entry with its foreground
process group.  A slave whose master is outside the checkpoint is refused (the caller's
terminal: --shell-job hands fds 0-2 over).  Data waiting in the pair, both ways (typed
and not read yet, written and not shown yet), cannot be peeked: it is read and written
straight back.  In canonical mode the input is lines: each complete line is read as the
program would read it (one read, one line: its delimiter, a newline or the EOL
character, or an EOF that ends it), then the line being typed with the line discipline
made raw for a moment; they are written back with the discipline canonical but blind
(no echo, no signals, no input processing, every special character off but the one
that ends the line being written), so that each line ends where it ended and the one
being typed stays open (written back raw, the lines ran together into one and the line
being typed became one that a read returned whole: found by probing).

Restart: cryo opens /dev/ptmx until it gets the old index (while that index is free),
sets the settings, and opens the slaves; every process inherits them.  Once its fds are
in place, each session leader takes its terminal back as controlling terminal
(TIOCSCTTY) and gives the foreground to its old foreground group (TIOCSPGRP).

A shell job (--shell-job) keeps the terminal of whoever restarts it instead: fds 0-2
are the caller's own (files.py, kind stdio), and any other fd on the job's controlling
terminal (/dev/tty, as ``less`` and ``top`` open it, or the terminal by name) is a
"ctty" description, opened again on the caller's terminal.  The checkpoint saves that
terminal's settings (termios, window size) and whether the job was its foreground
group.  At restart the job runs in the caller's session, so the caller's terminal is
its controlling terminal; before it runs it gets the settings back (raw mode, echo as
they were) and, if it was in the foreground and the caller is, the foreground
(tcsetpgrp), then a SIGWINCH so that a full-screen program redraws.  ``wait_job`` waits
for it as a shell would: when it stops (^Z), the caller's terminal state and foreground
are put back and cryo stops too (so the caller's shell sees a stopped job); when cryo
is continued, the job gets its terminal again and a SIGCONT; when it exits, the caller
gets the terminal back as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import select
import signal
import struct
import termios
import time
from dataclasses import dataclass
from typing import Any

from cryo import procfs
from cryo.engine import tree
from cryo.errors import CryoError, RestoreConflict, Unsupported
from cryo.linux import libc
from cryo.linux.consts import SYS

log = logging.getLogger(__name__)
TCGETS, TCSETS = 0x5401, 0x5402
TCGETS2, TCSETS2 = 0x802C542A, 0x402C542B  # struct termios2: c_ispeed, c_ospeed too
TIOCGLCKTRMIOS, TIOCSLCKTRMIOS = 0x5456, 0x5457  # the bits a program cannot change
TIOCGWINSZ, TIOCSWINSZ = 0x5413, 0x5414
TIOCSCTTY, TIOCSPGRP = 0x540E, 0x5410
TIOCPKT, TIOCGPKT = 0x5420, 0x80045438
TIOCGPTN, TIOCSPTLCK, TIOCGPTLCK = 0x80045430, 0x40045431, 0x80045439
TIOCGPTPEER = 0x5441
TIOCEXCL, TIOCGEXCL = 0x540C, 0x80045440
TIOCSETD, TIOCGETD = 0x5423, 0x5424
FIONREAD = 0x541B  # TIOCINQ: in canonical mode, the bytes of the complete lines
N_TTY, N_NULL = 0, 27  # line disciplines: N_NULL holds nothing (it drops what comes)
TERMIOS_SIZE, WINSIZE_SIZE = 60, 8
PTS_MAJORS = range(136, 144)
DEV_TTY = os.makedev(5, 0)
MAX_TRIES = 4096


def is_master(target: str) -> bool:
    return target in ("/dev/ptmx", "/dev/pts/ptmx")


def is_pty(target: str, pid: int | None = None) -> bool:
    """A master or a slave; with ``pid``, also /dev/tty when that process's controlling
    terminal is a slave (a shell opens it for job control)."""
    if target == "/dev/tty" and pid is not None:
        return _ctty_index(pid) is not None
    return is_master(target) or (target.startswith("/dev/pts/") and target[9:].isdigit())


def _ctty_index(pid: int | str) -> int | None:
    """The index of a process's controlling terminal if it is a pty slave."""
    tty_nr = _stat(pid)[1]
    major = os.major(tty_nr)
    if not tty_nr or major not in PTS_MAJORS:
        return None
    return (major - PTS_MAJORS.start) * 256 + os.minor(tty_nr)


def _dup(pid: int, fd: int) -> int:
    return libc.fd_of(pid, fd)


def _int(fd: int, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, request, b"\0" * 4))[0])


def describe(pid: int, fd: int, target: str) -> dict[str, Any]:
    """The FDSC fields of a pty master or slave (or /dev/tty on a slave)."""
    if target == "/dev/tty":
        return {"index": _ctty_index(pid), "master": False, "dev_tty": True}
    if not is_master(target):
        return {"index": int(target[9:]), "master": False}
    mine = _dup(pid, fd)
    try:
        d: dict[str, Any] = {"index": _int(mine, TIOCGPTN), "master": True,
                             "packet": _int(mine, TIOCGPKT), "locked": _int(mine, TIOCGPTLCK)}
        peer = fcntl.ioctl(mine, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        ldisc = _int(peer, TIOCGETD)
        try:
            if ldisc != N_TTY:
                if ldisc != N_NULL:  # (PPP, SLIP, GSM...: a network device or a modem's)
                    raise Unsupported(f"fd {fd}: pty {d['index']}'s slave has line"
                                      f" discipline {ldisc}, which cryo does not restore",
                                      pid=pid, resource=f"fd {fd}")  # fmt: skip
                # under N_NULL termios cannot be read (TCGETS is the line discipline's):
                # N_TTY for the moment of the reading (N_NULL held nothing to lose)
                d["ldisc"] = ldisc
                fcntl.ioctl(peer, TIOCSETD, struct.pack("i", N_TTY))
            # (termios2: the speeds too, which a program may set apart from c_cflag's
            # bits with BOTHER; TCGETS has none, the restart gave 38400)
            d["termios"] = fcntl.ioctl(peer, TCGETS2, b"\0" * TERMIOS_SIZE)
            d["winsize"] = fcntl.ioctl(peer, TIOCGWINSZ, b"\0" * WINSIZE_SIZE)
            if _int(peer, TIOCGEXCL):  # the slave in exclusive mode (TIOCEXCL)
                d["excl"] = 1
            locked = fcntl.ioctl(peer, TIOCGLCKTRMIOS, b"\0" * 36)
            if any(locked):  # (the copy's own settings must take: unlocked meanwhile)
                if not _can_type():
                    raise Unsupported(f"fd {fd}: pty {d['index']} has locked settings"
                                      " (TIOCSLCKTRMIOS): cryo needs CAP_SYS_ADMIN to set"
                                      " them again", pid=pid, resource=f"fd {fd}")
                d["termios_locked"] = locked
                fcntl.ioctl(peer, TIOCSLCKTRMIOS, bytes(36))
            try:
                d["to_slave"], d["to_master"], lines, stopped, status, queued, held, column = \
                    _take_queues(mine, peer, d["termios"], bool(d["packet"]))  # fmt: skip
                if column and ldisc == N_TTY:  # (another discipline's N_TTY is a new one)
                    d["column"] = column
                if held:
                    d["held_echoes"] = held
                if queued is not None and queued < len(d["to_slave"]):
                    d["to_slave_queued"] = queued
            finally:
                if any(locked):
                    fcntl.ioctl(peer, TIOCSLCKTRMIOS, locked)
            if stopped:
                d["stopped"] = stopped
            if status:
                d["pktstatus"] = status
            if lines is not None and any(kind != TYPING or data for data, kind in lines):
                d["to_slave_lines"] = lines
        finally:
            if ldisc == N_NULL:
                fcntl.ioctl(peer, TIOCSETD, struct.pack("i", N_NULL))
            os.close(peer)
    finally:
        os.close(mine)
    return d


def _raw(termios: bytes) -> bytes:
    """``termios`` with no processing of input or output (a copy of the queues goes
    through the line discipline untouched): c_iflag, c_oflag, c_cflag, c_lflag, c_line,
    c_cc[19] (VTIME 5, VMIN 6)."""
    iflag, oflag, cflag, lflag = struct.unpack_from("IIII", termios)
    iflag &= ~(0o2 | 0o40 | 0o100 | 0o200 | 0o400 | 0o2000 | 0o10000 | 0o4000)
    oflag &= ~0o1  # OPOST
    lflag &= ~(0o1 | 0o2 | 0o10 | 0o100 | 0o100000)  # ISIG ICANON ECHO ECHONL IEXTEN
    cc = bytearray(termios[17:36])
    cc[5], cc[6] = 0, 0
    return struct.pack("IIII", iflag, oflag, cflag, lflag) + termios[16:17] + bytes(cc) + \
        termios[36:]  # fmt: skip


def _drain(fd: int) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not data:
            return out
        out.append(data)


ICANON, IEXTEN, EXTPROC = 0o2, 0o100000, 0o200000
VEOF, VLNEXT, VEOL = 4, 15, 11  # indices in c_cc
LINE, EOF_LINE, TYPING = 0, 1, 2  # how a piece of canonical input ends


def _canonical(termios: bytes) -> bool:
    lflag = struct.unpack_from("I", termios, 12)[0]
    return bool(lflag & ICANON) and not lflag & EXTPROC


def _blind(termios: bytes, eof: int = 0, eol: int = 0, lnext: int = 0) -> bytes:
    """``termios`` canonical with nothing else: no echo, no signals, no input or output
    processing, every special character off (0, _POSIX_VDISABLE) but VEOF, VEOL and
    VLNEXT (with IEXTEN) when given: a line written through the master is stored as it
    is, and ends at a newline or at that character."""
    cflag = struct.unpack_from("I", termios, 8)[0]
    cc = bytearray(19)
    cc[VEOF], cc[VEOL], cc[VLNEXT] = eof, eol, lnext
    lflag = ICANON | (IEXTEN if lnext else 0)
    return struct.pack("IIII", 0, 0, cflag, lflag) + termios[16:17] + bytes(cc) + \
        termios[36:]  # fmt: skip


def _read_lines(peer: int, termios: bytes) -> list[list[Any]]:
    """The complete lines waiting in canonical mode, one read each as a program gets
    them: [bytes, LINE] (its delimiter included: a newline or the EOL/EOL2 character) or
    [bytes, EOF_LINE] (ended by the EOF character, which a read does not return; an
    empty one is a read of 0 bytes)."""
    cc = termios[17:36]
    delims = {10} | {c for c in (cc[VEOL], cc[16]) if c}  # VEOL2 is c_cc[16]
    lines: list[list[Any]] = []
    while True:
        try:
            data = os.read(peer, 65536)
        except BlockingIOError:
            return lines
        lines.append([data, LINE if data and data[-1] in delims else EOF_LINE])


def _unused(data: bytes, *also: int) -> int:
    """A byte value neither in ``data`` nor newline nor one of ``also``, 0 if none."""
    taken = set(data) | {0, 10, *also}
    return next((c for c in range(1, 256) if c not in taken), 0)


TIOCSTI = 0x5412


@functools.cache
def _can_type() -> bool:
    """Whether cryo may put input into a terminal that is not its own (TIOCSTI needs
    CAP_SYS_ADMIN then)."""
    return procfs.has_capability(21)  # CAP_SYS_ADMIN


def _type(master: int, peer: int, data: bytes) -> None:
    """``data`` as input of the slave, taken by its line discipline under the settings
    of this moment.  A write to the master is taken later, by a kernel worker, perhaps
    under the next settings (found by probing: lines written back blind were echoed and
    ran together); TIOCSTI hands each byte to the discipline at once."""
    if not _can_type():
        os.write(master, data)  # (raw input, and the settings set after it: see _refill)
        return
    for c in data:
        fcntl.ioctl(peer, TIOCSTI, bytes([c]))


def _plan(data: bytes, kind: int, avoid: tuple[int, ...] = ()
          ) -> tuple[bytes, int, int, int] | None:  # fmt: skip
    """How one piece of canonical input (``_read_lines``, or the line being typed as
    [bytes, TYPING]) is typed back: (the bytes, VEOF, VEOL, VLNEXT of the moment).  A
    newline inside a line (typed after ^V), or the line's own end character, goes in
    after a VLNEXT character, as it was typed; an EOF-ended line ends with an EOF
    character none of its bytes is (nor one of ``avoid``).  None where no byte value is
    free for them (a line of 4095 bytes could hold every one)."""
    body, end = (data[:-1], data[-1:]) if kind == LINE else (data, b"")
    eol = end[0] if end and end[0] != 10 else 0
    eof = 0
    if kind == EOF_LINE:
        eof = _unused(body, *avoid)
        if not eof:
            return None
        end = bytes([eof])
    specials = {10, eol} - {0}
    lnext = 0
    if specials & set(body):
        lnext = _unused(body, eof, eol, *avoid)
        if not lnext:
            return None
        body = b"".join(bytes([lnext, c]) if c in specials else bytes([c]) for c in body)
    return body + end, eof, eol, lnext


def _write_lines(master: int, peer: int, termios: bytes, lines: list[list[Any]],
                 held: bool = False) -> None:  # fmt: skip
    """Canonical input typed back as it was read (:func:`_plan`); the pair is empty and
    raw before.  ``held``: the output stopped by the STOP character stays stopped (IXON
    and the START and STOP characters kept)."""
    avoid = (termios[17 + VSTART], termios[17 + VSTOP]) if held else ()
    for data, kind in lines:
        planned = _plan(data, kind, avoid)
        if planned is None:
            raise CryoError("a pty's typed line holds every byte value: it cannot be"
                            " typed back")  # fmt: skip
        typed, eof, eol, lnext = planned
        blind = _blind(termios, eof=eof, eol=eol, lnext=lnext)
        fcntl.ioctl(peer, TCSETS, _keep_flow(blind, termios) if held else blind)
        if typed:
            _type(master, peer, typed)


def _refill(master: int, peer: int, termios: bytes, to_slave: bytes, to_master: bytes,
            lines: list[list[Any]] | None = None, queued: int | None = None,
            held: bytes = b"") -> None:  # fmt: skip
    """Data put back into a pair's two queues as it was, then its settings; ``lines``:
    the slave's input as canonical lines (to_slave is then their bytes), written last:
    a change of ICANON after them would join them into one line.  ``queued``: how many
    of to_slave's bytes the line discipline held (typed back into it); the rest was
    still in the terminal's buffer, not taken yet: written through the master once the
    settings are back, taken under them as it would have been.  (The discipline holds
    4095 bytes, TIOCSTI drops what comes after: found by probing, 22 KB waiting each
    way, a mere checkpoint left 4 KB of the input and half of the output.)  ``held``:
    the echoes a terminal stopped by its STOP character held (:func:`_hold`): held
    again, before the input, which then goes in with the output kept stopped."""
    if lines is not None:
        cut, n = 0, 0
        while cut < len(lines) and n + len(lines[cut][0]) <= CANON_ROOM:
            n += len(lines[cut][0])
            cut += 1
        lines, later = lines[:cut], b"".join(d for d, _ in lines[cut:])
    else:
        n = len(to_slave) if queued is None else queued
        to_slave, later = to_slave[:n], to_slave[n:]
    fcntl.ioctl(peer, TCSETS, _raw(termios))
    if to_master:
        _write_all(peer, to_master)
    if held:
        _hold(master, peer, termios, held)
    if lines is not None:
        _write_lines(master, peer, termios, lines, bool(held))
    elif to_slave:
        if held:
            fcntl.ioctl(peer, TCSETS, _keep_flow(_raw(termios), termios))
        _type(master, peer, to_slave)
    fcntl.ioctl(peer, TCSETS2, termios)
    if later:
        _write_all(master, later)


def _keep_flow(settings: bytes, termios_: bytes) -> bytes:
    """``settings`` with IXON and the START and STOP characters of ``termios_``: a
    terminal stopped by its STOP character stays stopped (IXON going off starts it; with
    IXON, a START character of 0 would take every NUL typed)."""
    cc = bytearray(settings[17:36])
    cc[VSTART], cc[VSTOP] = termios_[17 + VSTART], termios_[17 + VSTOP]
    iflag = struct.unpack_from("I", settings)[0] | IXON
    return struct.pack("I", iflag) + settings[4:17] + bytes(cc) + settings[36:]


ECHO = 0o10


def _hold(master: int, peer: int, termios_: bytes, held: bytes) -> None:
    """A terminal stopped by its STOP character with ``held``, the echoes the line
    discipline held back (its echo buffer, let out at the START character), held again:
    the pair empty (its output written), the STOP character typed under IXON, then the echoes'
    bytes typed with only ECHO and IXON on and read back from the input (the discipline
    echoes them into its echo buffer, which a stopped terminal does not empty).  They
    were let out with output processing off (:func:`_take_queues`): the bytes the
    discipline would have written, each a plain character to echo, processed (OPOST) when
    they go out at the START character as the original ones would have been (found by
    probing: the copy of the queues started the terminal and the echoes reached the
    master at once, before the START character)."""
    fcntl.ioctl(peer, TCSETS, _keep_flow(_raw(termios_), termios_))
    _type(master, peer, termios_[17 + VSTOP:18 + VSTOP])
    echo = bytearray(_keep_flow(_raw(termios_), termios_))
    struct.pack_into("I", echo, 12, ECHO)
    fcntl.ioctl(peer, TCSETS, bytes(echo))
    fl = fcntl.fcntl(peer, fcntl.F_GETFL)
    fcntl.fcntl(peer, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    try:
        for at in range(0, len(held), 1000):  # (the input holds 4095 bytes)
            _type(master, peer, held[at:at + 1000])
            _drain(peer)
    finally:
        fcntl.fcntl(peer, fcntl.F_SETFL, fl)
    fcntl.ioctl(peer, TCSETS, _keep_flow(_raw(termios_), termios_))


CANON_ROOM = 4000  # (N_TTY_BUF_SIZE 4096, less a margin: a line typed back must fit whole)


def _write_all(fd: int, data: bytes) -> None:
    """``data`` written whole into a pty.  Its buffer's room is counted in the blocks
    the kernel allocates for each write (one of 1,000 bytes takes a block of 1,024; one
    of 64 KiB blocks of 1,792 and fewer of them fit: 13.8 KB in all against 22 KB), and
    comes back as its worker moves the data on: written 1,000 bytes at a time, in
    smaller pieces when that no longer goes (a block more fits, the limit once over);
    10 s at most."""
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    p = select.poll()
    p.register(fd, select.POLLOUT)
    deadline = time.monotonic() + 10
    view, chunk = memoryview(data), 1000
    try:
        while view:
            try:
                view = view[os.write(fd, view[:chunk]):]
                continue
            except BlockingIOError:
                pass
            if time.monotonic() > deadline:
                raise CryoError(f"pty: {len(view)} bytes could not be put back")
            if not p.poll(20) and chunk > 1:  # (no room came back: smaller pieces)
                chunk //= 2
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, fl)


TCXONC, TCOOFF, TCOON = 0x540A, 0, 1  # tcflow
TCFLSH, TCIFLUSH, TCOFLUSH = 0x540B, 0, 1  # tcflush
IXON = 0o2000
VSTART, VSTOP = 8, 9  # indices in c_cc
STOP_CHAR, STOP_TCO = 1, 2  # how a slave's output was stopped ("stopped")
# a packet-mode master's control status (TIOCPKT_*): what its next read returns
PKT_FLUSHREAD, PKT_FLUSHWRITE, PKT_STOP, PKT_START = 1, 2, 4, 8
PKT_NOSTOP, PKT_DOSTOP, PKT_IOCTL = 16, 32, 64


def _status(master: int) -> int:
    """The control status a packet-mode master holds, taken (a read returns it alone,
    and clears it; POLLPRI tells there is one): 0 if none."""
    p = select.poll()
    p.register(master, select.POLLPRI)
    if not p.poll(0):
        return 0
    return os.read(master, 1)[0]


def _round_trip(master: int, peer: int, packet: bool) -> tuple[bool, bytes]:
    """Whether the slave's output goes on (not stopped by ^S or tcflow): a NUL written
    to the slave (output processing passes it, no column moves) waits (EAGAIN: stopped;
    the master's queue was drained) or is read back from the master, with whatever was
    on its way there before it (the second part)."""
    fl = fcntl.fcntl(peer, fcntl.F_GETFL)
    fcntl.fcntl(peer, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    try:
        os.write(peer, b"\0")
    except BlockingIOError:
        return False, b""
    finally:
        fcntl.fcntl(peer, fcntl.F_SETFL, fl)
    p = select.poll()
    p.register(master, select.POLLIN)
    got = b""
    deadline = time.monotonic() + 10
    while not got.endswith(b"\0"):  # (a data byte: in packet mode b"\0" and the data)
        left = deadline - time.monotonic()
        if left <= 0 or not p.poll(int(left * 1000) + 1):
            raise CryoError("pty: a byte written to its slave never reached its master")
        data = os.read(master, 65536)
        got += data[1:] if packet else data
    return True, got[:-1]


def _through(master: int, peer: int, data: bytes, packet: bool) -> bytes:
    """``data`` written to the slave (its output processing of this moment), then a NUL
    (no column moves): what reaches the master before the NUL, read (the master's queue
    empty before)."""
    _write_all(peer, data + b"\0")
    p = select.poll()
    p.register(master, select.POLLIN)
    got = b""
    deadline = time.monotonic() + 10
    while not got.endswith(b"\0"):
        left = deadline - time.monotonic()
        if left <= 0 or not p.poll(int(left * 1000) + 1):
            raise CryoError("pty: bytes written to its slave never reached its master")
        chunk = os.read(master, 65536)
        got += chunk[1:] if packet else chunk
    return got[:-1]


OPOST, XTABS = 0o1, 0o14000
_PROBE = (b"\b" * 9 + b"\t") * 256


def _column_settings(termios_: bytes, oflag: int) -> bytes:
    raw = bytearray(_raw(termios_))
    struct.pack_into("I", raw, 4, oflag)
    return bytes(raw)


def _column(master: int, peer: int, termios_: bytes, packet: bool) -> int:
    """The output column the line discipline keeps (n_tty's ``column``: where a tab
    under XTABS expands to, ONOCR's column 0, how far backspaces go back), which no call
    shows, measured and set back (the pair's output queue empty and going on), with
    output processing of only OPOST and XTABS: a tab gives 8 - column % 8 spaces and
    moves to the next multiple of 8; then groups of 9 backspaces and a tab, each giving
    one space and taking 8 columns back while the column is above 8, 8 spaces once the
    backspaces stop at column 0: their count of single spaces is the column's eighths.
    Then backspaces to 0 and as many plain bytes as the column was (the canonical
    column, where an erased tab counts from, is moved by none of these)."""
    fcntl.ioctl(peer, TCSETS, _column_settings(termios_, OPOST | XTABS))
    first = len(_through(master, peer, b"\t", packet))
    eighths = 0
    while True:
        groups = [len(g) for g in _through(master, peer, _PROBE, packet).split(b"\b" * 9)[1:]]
        single = next((i for i, n in enumerate(groups) if n != 1), len(groups))
        eighths += single
        if single < len(groups):
            break
        if eighths > 1 << 20:
            raise CryoError("pty: its column could not be measured")
    column = 8 * (eighths + 1) - first
    fcntl.ioctl(peer, TCSETS, _column_settings(termios_, OPOST))
    _through(master, peer, b"\b" * 16 + b"x" * column, packet)
    return column


def _stop_state(master: int, peer: int, packet: bool) -> tuple[int, bytes]:
    """0 while the slave's output goes on, else how it was stopped: a tcflow(TCOOFF)
    ends with TCOON (it goes on then, for the refill: :func:`_set_flow` stops it
    again), the STOP character's does not; and the bytes that reached the master
    meanwhile."""
    going, extra = _round_trip(master, peer, packet)
    if going:
        return 0, extra
    termios.tcflow(peer, TCOON)  # (a STOP character's stop is not ended by it)
    going, extra = _round_trip(master, peer, packet)
    return (STOP_TCO if going else STOP_CHAR), extra  # (going on now: stopped at the end)


def _flow(termios_: bytes) -> bool:
    """The kernel's "flow" for packet mode's DOSTOP/NOSTOP: IXON with ^S and ^Q."""
    iflag = struct.unpack_from("I", termios_)[0]
    cc = termios_[17:36]
    return bool(iflag & IXON) and cc[VSTOP] == 0o23 and cc[VSTART] == 0o21


def _flow_problem(termios_: bytes, stopped: int, status: int, to_slave: bytes,
                  to_master: bytes, held: bytes = b"") -> str | None:  # fmt: skip
    """Why the stop, the echoes it holds and the control status cannot be made again
    (:func:`_set_flow`, :func:`_hold`), or None."""
    lflag = struct.unpack_from("I", termios_, 12)[0]
    extproc = bool(lflag & EXTPROC)
    if stopped == STOP_CHAR:
        if not termios_[17 + VSTOP] or extproc or not struct.unpack_from("I", termios_)[0] & IXON:
            return "its output stopped by a STOP character it no longer takes"
        if not _can_type():
            return ("its output stopped by its STOP character: cryo needs CAP_SYS_ADMIN to"
                    " type it again (TIOCSTI)")  # fmt: skip
        flow = {termios_[17 + VSTART], termios_[17 + VSTOP]}
        if held and (flow & set(held) or flow & set(to_slave)):
            return ("echoes held by its STOP character, with its START or STOP character"
                    " typed (after ^V) meanwhile")  # fmt: skip
        if held and status & PKT_STOP:
            return "echoes held by its STOP character and packet status TIOCPKT_STOP"
    if bool(status & PKT_STOP) != bool(stopped) and status & (PKT_STOP | PKT_START):
        return f"packet status {status:#x} and its output {'' if stopped else 'not '}stopped"
    if status & (PKT_STOP | PKT_START) == PKT_STOP | PKT_START:
        return f"packet status {status:#x}"
    if status & (PKT_DOSTOP | PKT_NOSTOP):
        if bool(status & PKT_DOSTOP) == bool(status & PKT_NOSTOP) or \
                bool(status & PKT_DOSTOP) != _flow(termios_):  # fmt: skip
            return f"packet status {status:#x} against its settings"
        if extproc and not status & PKT_IOCTL:
            return f"packet status {status:#x} under EXTPROC without TIOCPKT_IOCTL"
    if status & PKT_IOCTL and not extproc:
        return f"packet status {status:#x}: TIOCPKT_IOCTL without EXTPROC"
    if status & PKT_FLUSHREAD and to_slave:
        return "packet status TIOCPKT_FLUSHREAD with input typed after the flush"
    if status & PKT_FLUSHWRITE and len(to_master) >= 4096:
        return "packet status TIOCPKT_FLUSHWRITE with more than 4 KiB written after it"
    return None


def _stop(master: int, peer: int, termios_: bytes, how: int) -> None:
    if how == STOP_TCO:
        termios.tcflow(peer, TCOOFF)
    else:  # its STOP character typed (the START character then goes on, as before)
        _type(master, peer, termios_[17 + VSTOP:18 + VSTOP])


def _set_flow(master: int, peer: int, termios_: bytes, packet: bool, stopped: int,
              status: int, to_master: bytes) -> None:  # fmt: skip
    """Once the pair holds its data and settings: its slave's output stopped as it was
    (^S, or tcflow), and a packet-mode master's pending control status made again (the
    refill's own settings changes set some of their own: dropped first), by the calls
    that set each bit: a settings change of the flow (DOSTOP, NOSTOP; IOCTL under
    EXTPROC), a stop (STOP), a stop and a start (START), a flush of an empty queue
    (FLUSHREAD, FLUSHWRITE)."""
    fl = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    try:
        if packet:
            _status(master)
        if stopped and not status & PKT_STOP:
            _stop(master, peer, termios_, stopped)
            if packet:
                _status(master)
        if status & (PKT_DOSTOP | PKT_NOSTOP):
            other = bytearray(termios_)  # the flow the other way (IXON itself kept on: a
            if _flow(termios_):  # STOP character's stop ends when IXON goes off)
                other[17 + VSTART] = 0
            else:
                struct.pack_into("I", other, 0, struct.unpack_from("I", termios_)[0] | IXON)
                other[17 + VSTOP], other[17 + VSTART] = 0o23, 0o21
            fcntl.ioctl(peer, TCSETS2, bytes(other))
            fcntl.ioctl(peer, TCSETS2, termios_)
        elif status & PKT_IOCTL:
            fcntl.ioctl(peer, TCSETS2, termios_)
        if stopped and status & PKT_STOP:
            _stop(master, peer, termios_, stopped)
        if not stopped and status & PKT_START:
            termios.tcflow(peer, TCOOFF)
            termios.tcflow(peer, TCOON)
        if status & PKT_FLUSHREAD:
            termios.tcflush(peer, TCIFLUSH)
        if status & PKT_FLUSHWRITE:  # (it flushes what is still on its way to the master)
            deadline = time.monotonic() + 10
            while _int(master, FIONREAD) < len(to_master):
                if time.monotonic() > deadline:
                    raise CryoError("pty: its output never reached its master")
                time.sleep(0.001)
            termios.tcflush(peer, TCOFLUSH)
        if stopped and _round_trip(master, peer, packet)[0]:
            raise CryoError("pty: its output could not be stopped again")
    finally:
        fcntl.fcntl(master, fcntl.F_SETFL, fl)


def _take_queues(master: int, peer: int, termios_: bytes, packet: bool
                 ) -> tuple[bytes, bytes, list[list[Any]] | None, int, int,
                            int | None, bytes, int]:  # fmt: skip
    """What waits in the pair, both ways, read (it cannot be peeked) and put back at
    once; the processes are frozen meanwhile.  In canonical mode the slave's input is
    also returned as lines (``_read_lines``) and the line being typed.  Also how its
    output was stopped (``_stop_state``) and a packet-mode master's control status,
    both made again after (the raw settings of the copy end a ^S: found by probing, a
    checkpoint, even a refused one, started a terminal stopped with ^S, and gave a
    packet-mode master a TIOCPKT_DOSTOP of its own).  Last, the echoes a terminal
    stopped by its STOP character held: the raw settings let them out, held again by
    the refill (:func:`_hold`); and the output column (:func:`_column`)."""
    fl = fcntl.fcntl(master, fcntl.F_GETFL)
    fcntl.fcntl(master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    lines = None
    try:
        if _canonical(termios_) and not _can_type() and _int(peer, FIONREAD):
            raise Unsupported("a pty in canonical mode holds lines not read yet: cryo"
                              " needs CAP_SYS_ADMIN to put them back as lines (TIOCSTI)",
                              resource="pty")  # fmt: skip
        status = _status(master) if packet else 0
        chunks = _drain(master)
        to_master = b"".join(c[1:] if packet else c for c in chunks)
        stopped, extra = _stop_state(master, peer, packet)
        to_master += extra
        queued = None if _canonical(termios_) else _int(peer, FIONREAD)  # (taken already)
        if _canonical(termios_) and _can_type():
            lines = _read_lines(peer, termios_)
        fcntl.ioctl(peer, TCSETS, _raw(termios_))
        held = b""
        if stopped == STOP_CHAR:  # started: the echoes it held back come out now
            held = _round_trip(master, peer, packet)[1]
        column, unmeasured = 0, False
        try:  # (what was taken is put back whatever happens: the refill below)
            column = _column(master, peer, termios_, packet)
        except (OSError, CryoError):
            unmeasured = True
        fcntl.ioctl(peer, TCSETS, _raw(termios_))
        typing = b"".join(_drain(peer))
        if lines is not None:
            lines.append([typing, TYPING])
        to_slave = b"".join(d for d, _ in lines) if lines is not None else typing
        problem = _flow_problem(termios_, stopped, status, to_slave, to_master, held)
        avoid = (termios_[17 + VSTART], termios_[17 + VSTOP]) if held else ()
        if lines is not None and any(_plan(d, k, avoid) is None for d, k in lines):
            problem = "a typed line of every byte value"
            lines = None
        if unmeasured:
            problem = "an output column that could not be measured"
        if problem and held:  # (let out: at least not lost)
            to_master, held = to_master + held, b""
        _refill(master, peer, termios_, to_slave, to_master, lines, queued, held)
        with contextlib.suppress(OSError, CryoError):
            _set_flow(master, peer, termios_, packet, stopped, status, to_master)
        if problem:
            raise Unsupported(f"a pty holds {problem}: not supported", resource="pty")
    finally:
        fcntl.fcntl(master, fcntl.F_SETFL, fl)
    return to_slave, to_master, lines, stopped, status, queued, held, column


ERESTARTSYS = 512
VTIME, VMIN = 5, 6  # indices in c_cc
# what would process typed bytes again: ISTRIP INLCR IGNCR ICRNL IUCLC IXANY; ISIG ECHO
_RETYPE_IFLAG = 0o40 | 0o100 | 0o200 | 0o400 | 0o1000 | 0o4000
_RETYPE_LFLAG = 0o1 | 0o10 | 0o100 | IEXTEN  # (ECHONL IEXTEN)


def undo_short_read(ctx: Any, tracee: Any, b: Any) -> None:
    """Driver hook (queue_thread, before the thread's registers are read): a thread
    stopped as its read() of a pty slave in noncanonical mode returned fewer bytes than
    VMIN asks (and the count): the freeze's interrupt ended the read early, as a signal
    would, with the bytes it had (found by probing: a program reading with VMIN 3, one
    byte typed, got that byte alone after a checkpoint, and its next read waited for
    three more).  Those bytes go back into the terminal's input (typed with TIOCSTI,
    nothing processing them again; the input was empty: the read had taken it all) and
    the read is set up to run again (-ERESTARTSYS: the kernel's restart of an
    interrupted call, when let go, and the restart's), so that it returns them with the
    rest; a pair whose master was described already gets them in its copy of the
    input.  Not where a signal the thread takes explains the short read."""
    regs = b.inj.saved
    if regs.orig_rax != SYS.read or not 0 < regs.rax < 1 << 63:
        return
    got, fd, count = int(regs.rax), libc.c_int(regs.rdi), int(regs.rdx)
    if tracee.deferred_signals or tracee.group_stop or fd < 0:
        return
    try:
        target = os.readlink(f"/proc/{ctx.pid}/fd/{fd}")
        with open(f"/proc/{ctx.pid}/fdinfo/{fd}", "rb") as f:
            flags = int(next(ln for ln in f if ln.startswith(b"flags:")).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        return
    if flags & os.O_NONBLOCK or not is_pty(target, ctx.pid) or is_master(target):
        return
    index = _ctty_index(ctx.pid) if target == "/dev/tty" else int(target[9:])
    mine = _dup(ctx.pid, fd)
    try:
        settings = fcntl.ioctl(mine, TCGETS, b"\0" * TERMIOS_SIZE)
        iflag, _o, _c, lflag = struct.unpack_from("IIII", settings)
        vmin = settings[17 + VMIN]
        if lflag & ICANON or not vmin or got >= min(vmin, count):  # (EXTPROC: at once)
            return
        if _signal_waits(ctx.pid, tracee.tid):
            return
        data = b.inj.read(regs.rsi, got)
        flow = {settings[17 + VSTART], settings[17 + VSTOP]} if iflag & IXON else set()
        problem = None
        if not _can_type():
            problem = "cryo needs CAP_SYS_ADMIN to type them back (TIOCSTI)"
        elif _int(mine, FIONREAD):
            problem = "more input came after them"
        elif flow & set(data):
            problem = "they hold its START or STOP character"
        if problem:
            raise Unsupported(f"fd {fd} of {ctx.pid}: its read of {target} returned {got} of"
                              f" the {vmin} bytes VMIN asks, ended by the freeze; {problem}",
                              pid=ctx.pid, resource=f"fd {fd}")  # fmt: skip
        quiet = bytearray(settings)
        struct.pack_into("I", quiet, 0, iflag & ~_RETYPE_IFLAG)
        struct.pack_into("I", quiet, 12, lflag & ~_RETYPE_LFLAG)
        with _no_ttou():
            fcntl.ioctl(mine, TCSETS, bytes(quiet))
            try:
                for c in data:
                    fcntl.ioctl(mine, TIOCSTI, bytes([c]))
            finally:
                fcntl.ioctl(mine, TCSETS, settings)
    finally:
        os.close(mine)
    regs.rax = -ERESTARTSYS & ((1 << 64) - 1)
    log.debug("pid %d: its short read of %s (%d of %d bytes) runs again", tracee.tid, target,
              got, vmin)  # fmt: skip
    for d in ctx.shared.descs.descs if ctx.shared is not None else ():
        if d["kind"] == "pty" and d.get("master") and d["index"] == index:
            d["to_slave"] = data + d.get("to_slave", b"")


def _signal_waits(pid: int, tid: int) -> bool:
    """Whether the thread has a signal pending that it does not block."""
    try:
        with open(f"/proc/{pid}/task/{tid}/status", "rb") as f:
            st = {k: v for k, _, v in (ln.partition(b":") for ln in f)}
    except OSError:
        return True
    pending = int(st.get(b"SigPnd", b"0"), 16) | int(st.get(b"ShdPnd", b"0"), 16)
    return bool(pending & ~int(st.get(b"SigBlk", b"0"), 16))


def _stat(pid: int | str) -> tuple[int, int, int]:
    """(session, tty_nr, tpgid) of a process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[3]), int(fields[4]), int(fields[5])


def _pgrp(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[2])


def on_job_terminal(pid: int, fmt: int, rdev: int) -> bool:
    """Whether an fd (a character device ``rdev``) of a shell job is on its controlling
    terminal: /dev/tty, or the terminal itself."""
    import stat as st

    if fmt != st.S_IFCHR:
        return False
    if rdev == DEV_TTY:
        return True
    tty_nr = _stat(pid)[1]
    return tty_nr != 0 and rdev == tty_nr


def _poll_in(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(0))


def _keep_ixon(settings: bytes, termios_: bytes) -> bytes:
    """``settings`` with the IXON of ``termios_``: IXON going off would start a terminal
    stopped by ^S (n_tty_set_termios), its caller's to keep."""
    iflag = struct.unpack_from("I", settings)[0] & ~IXON
    iflag |= struct.unpack_from("I", termios_)[0] & IXON
    return struct.pack("I", iflag) + settings[4:]


def _take_input(tty: int, termios_: bytes, sti: Any = None
                ) -> tuple[bytes, list[list[Any]] | None]:  # fmt: skip
    """The input waiting on a terminal cryo holds no master of (a shell job's), read as
    the job would read it (:func:`_take_queues`, the slave's half: in canonical mode
    its lines one read each, then the line being typed with the settings raw for a
    moment; poll before each read: the description is the job's, its flags left
    alone) and typed straight back (by ``sti``: :func:`_put_input`); IXON is left as it
    is throughout.  (the bytes, the lines or None)."""
    lines: list[list[Any]] | None = None
    if _canonical(termios_):
        lines = []
        cc = termios_[17:36]
        delims = {10} | {c for c in (cc[VEOL], cc[16]) if c}
        while _poll_in(tty):
            data = os.read(tty, 65536)
            lines.append([data, LINE if data and data[-1] in delims else EOF_LINE])
    with _no_ttou():
        fcntl.ioctl(tty, TCSETS, _keep_ixon(_raw(termios_), termios_))
        try:
            typing = b""
            while _poll_in(tty):
                typing += os.read(tty, 65536)
            if lines is not None:
                lines.append([typing, TYPING])
            data = b"".join(d for d, _ in lines) if lines is not None else typing
            _put_input(tty, termios_, data, lines, sti)
        finally:
            fcntl.ioctl(tty, TCSETS, termios_)
    return data, lines


def _put_input(tty: int, termios_: bytes, data: bytes, lines: list[list[Any]] | None,
               sti: Any = None) -> None:  # fmt: skip
    """Input typed into a terminal (TIOCSTI) as :func:`_take_input` read it, IXON kept;
    the terminal's settings ``termios_`` at the end.  ``sti``: what types bytes into it
    (by default cryo's TIOCSTI on ``tty``)."""
    if sti is None:
        def sti(piece: bytes) -> None:
            for c in piece:
                fcntl.ioctl(tty, TIOCSTI, bytes([c]))

    flow = {termios_[17 + VSTART], termios_[17 + VSTOP]} if \
        struct.unpack_from("I", termios_)[0] & IXON else set()  # fmt: skip
    if flow & set(data):
        raise Unsupported("the input waiting on the job's terminal holds its START or STOP"
                          " character", resource="terminal")  # fmt: skip
    with _no_ttou():
        fcntl.ioctl(tty, TCSETS, _keep_ixon(_raw(termios_), termios_))
        if lines is None:
            sti(data)
        else:
            for piece, kind in lines:
                planned = _plan(piece, kind)
                if planned is None:
                    raise Unsupported("the input waiting on the job's terminal holds a"
                                      " typed line of every byte value", resource="terminal")
                typed, eof, eol, lnext = planned
                fcntl.ioctl(tty, TCSETS, _keep_ixon(_blind(termios_, eof, eol, lnext),
                                                    termios_))  # fmt: skip
                sti(typed)
        fcntl.ioctl(tty, TCSETS, termios_)


def _legacy_tiocsti() -> bool:
    """Whether a process may TIOCSTI on its own controlling terminal without
    CAP_SYS_ADMIN (dev.tty.legacy_tiocsti, since Linux 6.2; always before)."""
    try:
        with open("/proc/sys/dev/tty/legacy_tiocsti", "rb") as f:
            return f.read().strip() != b"0"
    except OSError:
        return True


JOB_INPUT = "tty_job_input"  # (Shared.early: the job's input taken by take_job_input)


def take_job_input(ctx: Any) -> None:
    """Inject hook, a shell job's root, for a cryo without CAP_SYS_ADMIN: the input
    waiting on the job's terminal (a line half typed, complete lines) taken as
    :func:`_take_input` does and typed back by the job itself, its injected TIOCSTI (on
    its own controlling terminal a process needs no CAP_SYS_ADMIN while
    dev.tty.legacy_tiocsti is 1); noted for :func:`_note_job_terminal`.  (Before, cryo
    could not type it back: complete lines were refused, and a line half typed, which
    FIONREAD does not count in canonical mode, was lost at the restart, exit 0.)"""
    import stat as st

    shared = ctx.shared
    p = shared.procs.get(ctx.pid) if shared is not None else None
    if p is None or p.ppid in shared.procs or _can_type() or not _legacy_tiocsti():
        return
    _sid, tty_nr, tpgid = _stat(ctx.pid)
    if not tty_nr or tpgid != _pgrp(ctx.pid) or _stat("self")[1] == tty_nr:
        return
    fd = -1
    for name in sorted(os.listdir(f"/proc/{ctx.pid}/fd"), key=int):
        with contextlib.suppress(OSError):
            info = os.stat(f"/proc/{ctx.pid}/fd/{name}")
            if st.S_ISCHR(info.st_mode) and info.st_rdev in (tty_nr, DEV_TTY):
                fd = int(name)
                break
    if fd < 0:
        return
    inj = ctx.inj

    def sti(piece: bytes) -> None:
        for at in range(0, len(piece), 1024):
            addr = inj.put(piece[at:at + 1024])
            for i in range(len(piece[at:at + 1024])):
                inj(SYS.ioctl, fd, TIOCSTI, addr + i, what=" TIOCSTI (its input typed back)")

    mine = _dup(ctx.pid, fd)
    try:
        if not os.isatty(mine):
            return
        settings = fcntl.ioctl(mine, TCGETS, b"\0" * TERMIOS_SIZE)
        data, lines = _take_input(mine, settings, sti)
    finally:
        os.close(mine)
    shared.early[JOB_INPUT] = (tty_nr, data, lines)


def _note_job_terminal(session: Any, descs: list[dict[str, Any]]) -> None:
    """A shell job's terminal: its settings and whether the job was its foreground
    group, noted on each description that is on it (fds 0-2 or a ctty one)."""
    root = session.pid
    if root not in session.procs or session.procs[root].zombie:
        return
    _sid, tty_nr, tpgid = _stat(root)
    if not tty_nr:
        return
    taken = False
    for d in sorted(descs, key=lambda d: d["kind"] != "stdio"):
        if d["kind"] not in ("stdio", "ctty"):
            continue
        try:
            mine = _dup(d["pid"], d["fd"])
        except OSError:
            continue
        try:
            rdev = os.fstat(mine).st_rdev
            if not os.isatty(mine) or rdev not in (tty_nr, DEV_TTY):
                continue
            d["termios"] = fcntl.ioctl(mine, TCGETS, b"\0" * TERMIOS_SIZE)
            d["winsize"] = fcntl.ioctl(mine, TIOCGWINSZ, b"\0" * WINSIZE_SIZE)
            d["foreground"] = tpgid == _pgrp(root)
            if d["foreground"] and not taken:  # its input, typed and not read yet, once
                taken = True
                if _stat("self")[1] == tty_nr:  # (ours too, and the job in its foreground:
                    log.warning("the job's terminal is cryo's: its input is not saved")
                    continue  # cryo would be stopped reading it, SIGTTIN)
                pre = session.shared.early.pop(JOB_INPUT, None)
                if pre is not None and pre[0] == tty_nr:  # (typed back by the job)
                    data, lines = pre[1], pre[2]
                    if data or (lines and any(k != TYPING for _, k in lines)):
                        d["to_slave"] = data
                        if lines is not None:
                            d["to_slave_lines"] = lines
                    continue
                if not _can_type():
                    if _int(mine, FIONREAD):
                        raise Unsupported("the job's terminal holds input it has not read:"
                                          " cryo needs CAP_SYS_ADMIN to put it back"
                                          " (TIOCSTI)", resource="terminal")  # fmt: skip
                    continue
                data, lines = _take_input(mine, d["termios"])
                if data or (lines and any(k != TYPING for _, k in lines)):
                    d["to_slave"] = data
                    if lines is not None:
                        d["to_slave_lines"] = lines
        finally:
            os.close(mine)


def check(session: Any) -> None:
    """Checkpoint, once every process is collected: every slave's master is in the
    checkpoint; each session's controlling terminal, if it is one of the pairs, noted on
    the master's entry (with the foreground group); data waiting in a pair: a warning."""
    descs = session.shared.descs.descs
    if getattr(session, "shell_job", False):
        _note_job_terminal(session, descs)
    masters = {d["index"]: d for d in descs if d["kind"] == "pty" and d["master"]}
    for d in descs:
        if d["kind"] == "pty" and not d["master"] and d["index"] not in masters:
            hint = "; use --shell-job to hand the restored process the caller's terminal" \
                if d["fd"] <= 2 or d.get("dev_tty") or _ctty_index(d["pid"]) == d["index"] \
                else (": not its controlling terminal nor fds 0-2 (passed to it, as a tmux"
                      " server holds its clients' terminals), which --shell-job does not"
                      " hand over")  # fmt: skip
            raise Unsupported(f"fd {d['fd']} of {d['pid']}: terminal {d['path']}, whose master"
                              f" is outside the checkpoint{hint}", pid=d["pid"],
                              resource=f"fd {d['fd']}")  # fmt: skip
    for m in masters.values():
        m["sessions"] = []
    for p in session.procs.values():
        if p.zombie:
            continue
        sid, tty_nr, tpgid = _stat(p.pid)
        major, minor = os.major(tty_nr), os.minor(tty_nr)
        if sid == p.pid and major in PTS_MAJORS and tty_nr:
            index = (major - PTS_MAJORS.start) * 256 + minor
            if index in masters:
                masters[index]["sessions"].append([sid, tpgid])


# -- restore ---------------------------------------------------------------------------

# the pairs this restart made: old index -> (master fd, new index); set by prepare()
_made: dict[int, tuple[int, int]] = {}
_masters: dict[int, dict[str, Any]] = {}


_new_index_ok = [False]  # (the restart's --new-pids: another index where the old is taken)


def prepare(rs: Any) -> None:
    """Restart, before the descriptions are opened: the image's masters by index."""
    _made.clear()
    _masters.clear()
    _new_index_ok[0] = getattr(rs, "new_pids", False) is not False
    _masters.update({d["index"]: d for d in rs.plan.descs
                     if d["kind"] == "pty" and d.get("master")})  # fmt: skip
    rs.on_exit(_forget)


def _forget() -> None:
    for fd, _ in _made.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _made.clear()


def _master(index: int) -> tuple[int, int]:
    """A new master for old index ``index``: the same index while it is free."""
    if index in _made:
        return _made[index]
    d = _masters.get(index)
    if d is None:
        raise CryoError(f"pty {index}: its master is not in the image")
    extra: list[int] = []
    try:
        fd = -1
        for _ in range(MAX_TRIES):
            fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
            got = _int(fd, TIOCGPTN)
            if got >= index:  # the kernel gives the lowest free index: past it, it is taken
                break
            extra.append(fd)
        new = _int(fd, TIOCGPTN)
    finally:
        for x in extra:
            os.close(x)
    if new != index and not _new_index_ok[0]:  # (found by probing: a log line, exit 0,
        os.close(fd)  # and the program's terminal had another name)
        raise RestoreConflict(f"pty {index}: /dev/pts/{index} is taken here (the pair would"
                              f" come back as /dev/pts/{new}); --new-pids lets it",
                              resource="pty")  # fmt: skip
    if new != index:
        log.warning("pty %d comes back as /dev/pts/%d (the old one is taken)", index, new)
    fcntl.ioctl(fd, TIOCSPTLCK, struct.pack("i", 0))
    peer = fcntl.ioctl(fd, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.ioctl(peer, TIOCSWINSZ, d["winsize"])
        if d.get("to_slave_lines") and not _can_type():
            raise CryoError(f"pty {index}: its lines not read yet can only be put back as"
                            " lines with CAP_SYS_ADMIN (TIOCSTI)")  # fmt: skip
        stopped, status = d.get("stopped", 0), d.get("pktstatus", 0)
        to_slave, to_master = d.get("to_slave", b""), d.get("to_master", b"")
        held = d.get("held_echoes", b"")
        if d.get("column"):  # (a new pair is at column 0; its master empty yet)
            fcntl.ioctl(peer, TCSETS, _column_settings(d["termios"], OPOST))
            _through(fd, peer, b"x" * d["column"], False)
        problem = _flow_problem(d["termios"], stopped, status, to_slave, to_master, held)
        if problem:
            raise CryoError(f"pty {index}: it holds {problem}")
        _refill(fd, peer, d["termios"], to_slave, to_master, d.get("to_slave_lines"),
                d.get("to_slave_queued"), held)  # fmt: skip
        if d.get("packet"):  # (after the refill: its settings changes set no status)
            fcntl.ioctl(fd, TIOCPKT, struct.pack("i", 1))
        if stopped or status:
            _set_flow(fd, peer, d["termios"], bool(d.get("packet")), stopped, status,
                      to_master)  # fmt: skip
        if d.get("termios_locked"):
            fcntl.ioctl(peer, TIOCSLCKTRMIOS, d["termios_locked"])
        if d.get("excl"):  # (cryo, with CAP_SYS_ADMIN, still opens the slaves after it)
            fcntl.ioctl(peer, TIOCEXCL)
        if d.get("ldisc"):
            fcntl.ioctl(peer, TIOCSETD, struct.pack("i", d["ldisc"]))
    finally:
        os.close(peer)
    if d.get("locked"):
        fcntl.ioctl(fd, TIOCSPTLCK, struct.pack("i", 1))
    _made[index] = (fd, new)
    return _made[index]


def open_desc(d: dict[str, Any], flags: int) -> int:
    """The fd for pty description ``d`` (a master or a slave), made in cryo."""
    fd, new = _master(d["index"])
    if d["master"]:
        return os.dup(fd)
    locked = _masters[d["index"]].get("locked")
    if locked:
        fcntl.ioctl(fd, TIOCSPTLCK, struct.pack("i", 0))
    try:
        if d.get("dev_tty"):
            return _open_dev_tty(new, flags)
        return os.open(f"/dev/pts/{new}", (flags & ~0o3) | os.O_RDWR | os.O_NOCTTY)
    finally:
        if locked:
            fcntl.ioctl(fd, TIOCSPTLCK, struct.pack("i", 1))


def _open_dev_tty(index: int, flags: int) -> int:
    """/dev/tty opened on slave ``index`` (not the slave by name: the file is /dev/tty's,
    as the program had it): a child of cryo makes the slave the controlling terminal of
    a session of its own, opens /dev/tty there and waits; cryo takes a copy of that fd
    (pidfd_getfd); the child exits, which leaves the terminal without a session again,
    free for the restored session leader to take."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:  # only system calls here, then _exit
        code = 1
        try:
            os.close(go_w)
            os.close(ready_r)
            os.setsid()
            fcntl.ioctl(os.open(f"/dev/pts/{index}", os.O_RDWR), TIOCSCTTY, 0)
            got = os.open("/dev/tty", (flags & (0o3 | os.O_NONBLOCK | os.O_APPEND)) |
                          os.O_NOCTTY)  # fmt: skip
            os.write(ready_w, struct.pack("i", got))
            os.read(go_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    try:
        said = os.read(ready_r, 4)
        if len(said) != 4:
            raise CryoError(f"cannot open /dev/tty on /dev/pts/{index}")
        return libc.fd_of(child, struct.unpack("i", said)[0])
    finally:
        os.close(ready_r)
        os.close(go_w)  # (the child's read returns: it exits)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(child, 0)


def take_ctty(inj: Any, old_pid: int) -> None:
    """For the tree's builder: a new session leader (right after its setsid, before it
    makes children, so that the processes of its session inherit it) takes back its
    controlling terminal, if that was one of the image's pairs."""
    for index, m in _masters.items():
        if any(sid == old_pid for sid, _ in m.get("sessions", [])):
            _fd, new = _made.get(index, (-1, index))
            path = inj.put_str(f"/dev/pts/{new}")
            tty = inj(SYS.open, path, os.O_RDWR, 0, what=f" open /dev/pts/{new}")
            try:
                inj(SYS.ioctl, tty, TIOCSCTTY, 0, what=" TIOCSCTTY")
            finally:
                inj(SYS.close, tty)


def restore_ctty(ctx: Any) -> None:
    """Per process, its fds in place: a session leader whose controlling terminal was one
    of the image's pairs takes it back, and gives the foreground to its old group."""
    for index, m in _masters.items():
        for sid, tpgid in m.get("sessions", []):
            if sid != ctx.old_pid:
                continue
            _fd, new = _made.get(index, (-1, index))
            inj = ctx.inj
            path = inj.put_str(f"/dev/pts/{new}")
            tty = inj(SYS.open, path, os.O_RDWR, 0, what=f" open /dev/pts/{new}")
            try:
                inj(SYS.ioctl, tty, TIOCSCTTY, 0, what=" TIOCSCTTY")
                if tpgid > 0:
                    pgrp = ctx.pid_map.get(tpgid, tpgid)
                    with contextlib.suppress(OSError):  # as the process sees it (--pid-ns)
                        pgrp = tree.nspid(pgrp)
                    arg = inj.put(struct.pack("i", pgrp))
                    inj(SYS.ioctl, tty, TIOCSPGRP, arg, what=" TIOCSPGRP")
            finally:
                inj(SYS.close, tty)


# -- a shell job's terminal ------------------------------------------------------------


def _my_terminal() -> str | None:
    """The path of this process's controlling terminal, or None."""
    tty_nr = _stat("self")[1]
    if not tty_nr:
        return None
    major, minor = os.major(tty_nr), os.minor(tty_nr)
    if major in PTS_MAJORS:
        return f"/dev/pts/{(major - PTS_MAJORS.start) * 256 + minor}"
    return "/dev/tty"


def open_job_terminal(d: dict[str, Any]) -> int:
    """A "ctty" description of a shell job (an fd above 2 on its terminal): opened again
    on the caller's terminal (as /dev/tty if that is how the job had opened it)."""
    path = _my_terminal()
    if path is None:
        raise CryoError(f"fd {d['fd']} of {d['pid']} was on the job's terminal"
                        f" ({d['path']}); --shell-job needs a restarting cryo with a"
                        " controlling terminal to give it")  # fmt: skip
    if d["path"] == "/dev/tty":
        path = "/dev/tty"
    keep = d["flags"] & (0o3 | os.O_NONBLOCK | os.O_APPEND)
    return os.open(path, keep | os.O_NOCTTY)


@dataclass
class Job:
    """The terminal a restarted shell job was given, and what to give back."""

    pid: int  # the job's root
    pgid: int  # its process group (maybe ours)
    fd: int  # our controlling terminal
    caller: bytes  # its termios before the job got it
    termios: bytes  # the job's
    foreground: bool  # the job has the foreground (we gave it)


_job: Job | None = None


def _no_ttou() -> Any:
    """Calls on the terminal from a background process are allowed with SIGTTOU
    blocked (else the kernel stops us)."""
    return _Masked({signal.SIGTTOU})


class _Masked:
    def __init__(self, sigs: set[int]) -> None:
        self.sigs = sigs
        self.old: set[int] = set()

    def __enter__(self) -> None:
        self.old = set(signal.pthread_sigmask(signal.SIG_BLOCK, self.sigs))

    def __exit__(self, *_exc: object) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self.old)


def _terminal_desc(rs: Any) -> dict[str, Any] | None:
    for d in rs.plan.descs:
        if d["kind"] in ("stdio", "ctty") and "termios" in d:
            return dict(d)
    return None


def hand_over(rs: Any) -> None:
    """Restart, every process built, before they run: a shell job gets back its
    terminal settings and, if it had it and we have it, the foreground."""
    global _job
    _job = None
    if not rs.options.get("shell_job"):
        return
    d = _terminal_desc(rs)
    if d is None:
        return
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        rs.result.warnings.append("--shell-job: cryo has no controlling terminal; the job"
                                  " gets no terminal settings and no foreground")
        return
    root = rs.plan.tree["root"]
    rec = next(p for p in rs.plan.tree["procs"] if p["pid"] == root)
    pid = rs.made[root].pid
    pgid = rs.pid_map.get(rec["pgid"], os.getpgrp()) if rec["pgid"] != root else pid
    try:
        caller = fcntl.ioctl(fd, TCGETS, b"\0" * TERMIOS_SIZE)
        if os.tcgetpgrp(fd) != os.getpgrp():
            rs.result.warnings.append("--shell-job: cryo is not in the foreground of its"
                                      " terminal; the job stays in the background")
            os.close(fd)
            return
        job = Job(pid, pgid, fd, caller, bytes(d["termios"]), bool(d.get("foreground")))
        _give(job)
        if job.foreground and (d.get("to_slave") or d.get("to_slave_lines")):
            # the input it had not read, typed on this terminal (TIOCSTI: ours)
            _put_input(fd, job.termios, d.get("to_slave", b""), d.get("to_slave_lines"))
    except OSError:
        os.close(fd)
        raise
    _job = job
    rs.on_failure(_release)


def _give(job: Job) -> None:
    """The job's terminal settings and the foreground, if the job had them (a job that
    ran in the background leaves the terminal to its shell)."""
    if not job.foreground:
        return
    with _no_ttou():
        fcntl.ioctl(job.fd, TCSETS, job.termios)
        os.tcsetpgrp(job.fd, job.pgid)


def _take_back(job: Job) -> None:
    if not job.foreground:
        return
    with _no_ttou():
        with contextlib.suppress(OSError):
            job.termios = fcntl.ioctl(job.fd, TCGETS, b"\0" * TERMIOS_SIZE)
        fcntl.ioctl(job.fd, TCSETS, job.caller)
        os.tcsetpgrp(job.fd, os.getpgrp())


def _release() -> None:
    """The caller's terminal as it was; the job forgotten."""
    global _job
    job, _job = _job, None
    if job is None:
        return
    try:
        with contextlib.suppress(OSError):
            _take_back(job)
    finally:
        os.close(job.fd)


def _signal_job(job: Job, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        if job.pgid != os.getpgrp():
            os.killpg(job.pgid, sig)
        else:
            os.kill(job.pid, sig)


def redraw(_rs: Any) -> None:
    """Restart, once the job runs: a SIGWINCH, so that a full-screen program asks for the
    window size and redraws."""
    if _job is not None:
        _signal_job(_job, signal.SIGWINCH)


def handed_over(pid: int) -> bool:
    return _job is not None and _job.pid == pid


def wait_job(pid: int, forward: tuple[int, ...]) -> int:
    """Wait for a restarted shell job as its shell would: stopped, the caller's terminal
    comes back and cryo stops itself; continued, the job gets it again; exited, the
    caller's terminal as it was.  Shell-style status."""
    from cryo.engine.restore import forwarding, shell_status, waitpid_child

    job = _job
    assert job is not None
    try:
        with forwarding(pid, forward):
            while True:
                status = waitpid_child(pid, os.WUNTRACED)
                if not os.WIFSTOPPED(status):
                    break
                _take_back(job)
                os.kill(os.getpid(), signal.SIGSTOP)  # the caller's shell sees us stopped
                with _no_ttou():  # continued: in the foreground again (fg), or not (bg)
                    job.caller = fcntl.ioctl(job.fd, TCGETS, b"\0" * TERMIOS_SIZE)
                    ours = os.tcgetpgrp(job.fd) == os.getpgrp()
                if ours and not job.foreground:  # fg of a job that was in the background:
                    job.foreground = True  # the terminal, with the settings it has now, as
                    job.termios = job.caller  # a shell's fg (found by probing: vim ^Z'd,
                if ours:  # restarted, fg'd, stayed in the background: SIGTTOU, stopped again)
                    _give(job)
                _signal_job(job, signal.SIGCONT)
    finally:
        _release()
    return shell_status(status)
