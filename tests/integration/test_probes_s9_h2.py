"""Files and sockets that came back wrong, exit 0 (issue 9, session 9, h2):
victims/files_s9.c sets one piece of state per mode, is checkpointed, killed and
restarted, and checks itself every round ("ok N" or "FAIL what")."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from cryo.errors import ExitCode
from tests.conftest import Procs, Victim, reap, run_cryo, spawn_mode
from tests.integration.test_procstate import cycle, refused_untouched

pytestmark = pytest.mark.timeout(120)
VICTIMS = Path(__file__).resolve().parent.parent / "victims"


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("files_s9") / "files_s9"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(out),
                    str(VICTIMS / "files_s9.c")], check=True)  # fmt: skip
    return str(out)


def _rename_over(path: Path) -> None:
    new = path.with_name("new")
    new.write_bytes(b"z" * 8192)  # longer than the file it replaces
    os.rename(new, path)


def _remade(path: Path) -> None:
    path.unlink()
    path.write_bytes(b"y" * 4096)  # as long (on ext4 often with the inode number again)


def _copied_same_stat(path: Path) -> None:
    """A copy of other bytes, given the size and mtime of the file it replaces (only a
    file handle or the inode tells it from the one the image had)."""
    st = path.stat()
    new = path.with_name("new")
    new.write_bytes(b"x" * st.st_size)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(new, path)


@pytest.mark.parametrize("how", [_rename_over, _remade, _copied_same_stat],
                         ids=["renamed-over", "deleted-and-made-again", "same-size-and-mtime"])
def test_a_file_replaced_since_the_checkpoint_is_refused(procs: Procs, exe: str,
                                                         tmp_path: Path, how: object) -> None:
    """A regular file open in the process, replaced under its name after the checkpoint
    by one as long or longer: the restart reopened the name, exit 0, and the process
    read another file's bytes.  Now FileChanged, exit 12, naming the file, nothing
    made; --ignore-changed-files restarts anyway (the process then sees the other file,
    as asked)."""
    v = spawn_mode(procs, exe, tmp_path, "file")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    assert callable(how)
    how(tmp_path / "data")
    r = run_cryo("restart", "-D", str(img), "--detach")
    if r.returncode == 0:  # (the old code: track it, to be reaped)
        procs.track(int(r.stdout))
    assert r.returncode == ExitCode.FILE_CHANGED, (r.returncode, r.stderr)
    assert f"{tmp_path / 'data'} is another file now" in r.stderr, r.stderr
    assert not os.path.exists(f"/proc/{v.pid}")
    r = run_cryo("restart", "-D", str(img), "--detach", "--ignore-changed-files")
    assert r.returncode == 0, r.stderr
    w = Victim(procs.track(int(r.stdout)), v.out)
    w.wait_for(lambda _: bool(w.fails()))


def test_a_file_written_since_is_still_the_file(procs: Procs, exe: str, tmp_path: Path
                                                ) -> None:  # fmt: skip
    """The same file, written to after the checkpoint (its size and mtime changed, its
    inode the same): restarted; the restored process still sees its own file.  And a
    file replaced before the checkpoint is the one the fd has (deleted: saved whole)."""
    v = spawn_mode(procs, exe, tmp_path, "file")
    data = tmp_path / "data"
    fd = os.open(data, os.O_RDWR)  # (the same bytes again: a new mtime)
    try:
        os.pwrite(fd, os.pread(fd, 16, 0), 0)
    finally:
        os.close(fd)
    v = cycle(procs, v, tmp_path / "img")
    assert not v.fails()
    _rename_over(data)
    v = cycle(procs, v, tmp_path / "img2")
    assert not v.fails()


def test_a_udp_socket_shut_for_writing(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A connected UDP socket shut for writing (SHUT_WR): the restart made it open for
    writing (poll shows only SHUT_RD and both), exit 0, and a send went out.  Now read
    from sock_diag (INET_DIAG_SHUTDOWN) and shut again: send fails, EPIPE."""
    v = spawn_mode(procs, exe, tmp_path, "udpshutwr")
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    r = run_cryo("show", str(tmp_path / "img"))
    assert "SHUT_WR" in r.stdout, r.stdout


def test_tcp_md5_keys_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A TCP listener with a TCP_MD5SIG key: restored without it, exit 0 (its peers'
    signed segments would be dropped, its own go unsigned).  Now refused, exit 9 naming
    the key, the process untouched."""
    v = spawn_mode(procs, exe, tmp_path, "md5")
    refused_untouched(v, tmp_path / "img", "has TCP MD5 signature keys (TCP_MD5SIG)")


def test_tcp_ao_keys_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A TCP socket with a TCP-AO key (Linux 6.7, CONFIG_TCP_AO): refused, exit 9."""
    with socket.socket() as s:
        try:
            s.getsockopt(socket.IPPROTO_TCP, 40, 48)  # TCP_AO_INFO
        except OSError as err:
            if err.errno == 92:  # ENOPROTOOPT
                pytest.skip("this kernel has no TCP-AO")
    v = spawn_mode(procs, exe, tmp_path, "ao")
    if any(line.startswith("skip") for line in v.lines()):
        pytest.skip(f"TCP-AO key not taken: {v.lines()}")
    refused_untouched(v, tmp_path / "img", "has TCP-AO keys")


@pytest.mark.parametrize("mode", ["dgramauto", "dgramautocred"])
def test_datagrams_from_an_autobound_sender(procs: Procs, exe: str, tmp_path: Path,
                                            mode: str) -> None:
    """A bound unix datagram socket holding datagrams from an autobound sender closed
    since: sent again from an unnamed socket, exit 0, recvfrom gave no address.  Now
    sent again from a socket bound to that name ("\\0" and five hex digits) for the
    moment: the process reads them with its sender's address; dgramautocred: the
    receiver has SO_PASSCRED (the sender autobound by its own), each datagram keeps its
    credentials too (those are sent once the processes exist, from a copy of that
    socket)."""
    v = spawn_mode(procs, exe, tmp_path, mode)
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    r = run_cryo("show", str(tmp_path / "img"))
    assert "message 1 from @" in r.stdout, r.stdout


def test_datagrams_from_a_live_autobound_sender_refused(procs: Procs, exe: str,
                                                        tmp_path: Path) -> None:
    """The same, the sender still open (it holds its name: no socket the restart makes
    can take it): refused, exit 9 naming it, the process untouched."""
    v = spawn_mode(procs, exe, tmp_path, "dgramautoheld")
    refused_untouched(v, tmp_path / "img", "holds a datagram from the autobound @")


def test_an_o_tmpfile_o_excl_file_stays_unlinkable(procs: Procs, exe: str, tmp_path: Path
                                                    ) -> None:  # fmt: skip
    """A file made with O_TMPFILE | O_EXCL (glibc's tmpfile(), Python's TemporaryFile):
    restored linkable, exit 0 (open() drops O_EXCL from f_flags).  Now its inode's
    I_LINKABLE state is read at checkpoint (a BPF task_file iterator) and it is made
    again with O_EXCL: linkat still fails, ENOENT; the O_TMPFILE file beside it is made
    linkable again (test_probes_more's test_o_tmpfile_file_can_still_be_linked links
    one after the restart)."""
    v = spawn_mode(procs, exe, tmp_path, "tmpexcl")
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
    r = run_cryo("show", str(tmp_path / "img"))
    assert "unlinkable (O_EXCL)" in r.stdout, r.stdout


@pytest.mark.parametrize("mode", ["packetopts", "netlinkopts", "seqrights"])
def test_socket_state_restored(procs: Procs, exe: str, tmp_path: Path, mode: str) -> None:
    """packetopts: a packet socket bound to lo with SOL_PACKET options set
    (PACKET_AUXDATA, ORIGDEV, VERSION, RESERVE, LOSS, TIMESTAMP, QDISC_BYPASS,
    IGNORE_OUTGOING, a FANOUT group): each came back at its default, exit 0; now saved
    and set again (PACKET_FANOUT after bind, which fails once the socket is in a group).
    netlinkopts: a route netlink socket's NETLINK_* options, lost the same way.
    seqrights: a unix seqpacket pair with a message carrying a pipe (SCM_RIGHTS) queued
    behind another: restored right (no fix)."""
    v = spawn_mode(procs, exe, tmp_path, mode)
    v = cycle(procs, v, tmp_path / "img")
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()


@pytest.mark.parametrize(("mode", "needle"), [
    ("packetmr", "has memberships (PACKET_ADD_MEMBERSHIP"),
    ("packetring", "has a receive ring (PACKET_RX_RING)"),
    ("unixoob", "holds an urgent byte (MSG_OOB)"),
    ("nldump", "holds replies to its own request not yet read"),
])  # fmt: skip
def test_socket_state_no_option_gives_back_refused(procs: Procs, exe: str, tmp_path: Path,
                                                   mode: str, needle: str) -> None:
    """A packet socket in promiscuous mode (PACKET_ADD_MEMBERSHIP) or with a receive
    ring, seen in packet_diag; a unix stream socket holding an urgent byte (MSG_OOB); a
    netlink socket holding the replies of a dump it asked for: each came back without
    it, exit 0 (the ring, the membership, the byte lost: recv MSG_OOB gave EINVAL; the
    replies gone: a program waiting for them hangs).  Now refused, exit 9 naming it,
    the process untouched."""
    v = spawn_mode(procs, exe, tmp_path, mode)
    refused_untouched(v, tmp_path / "img", needle)


def test_a_translated_copy_of_another_size_is_refused(procs: Procs, exe: str,
                                                      tmp_path: Path) -> None:
    """Through --translate the file is the user's copy (another inode, the copy's
    mtime): restarted when it has the size the file had, refused (exit 12) when not."""
    v = spawn_mode(procs, exe, tmp_path, "file")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "data").write_bytes((tmp_path / "data").read_bytes() + b"more")
    r = run_cryo("restart", "-D", str(img), "--detach", "--translate",
                 f"{tmp_path / 'data'}={moved / 'data'}")
    if r.returncode == 0:
        procs.track(int(r.stdout))
    assert r.returncode == ExitCode.FILE_CHANGED, (r.returncode, r.stderr)
    assert "translated, only its size can tell" in r.stderr, r.stderr
    (moved / "data").write_bytes((tmp_path / "data").read_bytes())
    r = run_cryo("restart", "-D", str(img), "--detach", "--translate",
                 f"{tmp_path / 'data'}={moved / 'data'}")
    assert r.returncode == 0, r.stderr
    w = Victim(procs.track(int(r.stdout)), v.out)
    w.wait_ok_after(max(v.oks()) + 2)
    assert not w.fails()


def test_tcp_urgent_data_refused(procs: Procs, exe: str, tmp_path: Path) -> None:
    """A TCP connection holding an urgent byte not yet read (MSG_OOB), checkpointed with
    --tcp-established: TCP_REPAIR put its queue back without it (recv MSG_OOB: EINVAL),
    exit 0.  Now refused, exit 9 naming it, the process untouched."""
    v = spawn_mode(procs, exe, tmp_path, "tcpoob")
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill", "--tcp-established")
    assert r.returncode == ExitCode.UNSUPPORTED, r.stderr
    assert "holds an urgent byte (MSG_OOB)" in r.stderr, r.stderr
    assert not img.exists()
    v.wait_ok_after(max(v.oks()) + 2)
    assert not v.fails()
