"""Files at restart (seed 003, 5.2 and 6.2): one path translation for every path
(--translate), checked before anything is created; SPMF (--save-files): the executable
and its libraries in the image, used when the originals are gone or replaced; the list
of files a checkpoint depends on."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cryo.engine import spmf
from tests.conftest import VICTIMS, Procs, Victim, reap, run_cryo

pytestmark = pytest.mark.timeout(120)


def _moved_tree(build: Any, where: Path) -> None:
    """DIR/prog, DIR/data, DIR/map, DIR/marker as tests/victims/moved.c wants them."""
    where.mkdir()
    shutil.copy(build("moved"), where / "prog")
    (where / "data").write_bytes(bytes((i * 31 + 7) & 0xFF for i in range(64 << 10)))
    (where / "map").write_bytes(bytes((i * 13 + 1) & 0xFF for i in range(16 << 10)))
    (where / "marker").write_text("cwd marker\n")


def _start_moved(procs: Procs, build: Any, tmp_path: Path) -> tuple[Victim, Path, Path]:
    a, b = tmp_path / "A", tmp_path / "B"
    _moved_tree(build, a)
    out = tmp_path / "out.txt"
    v = procs.spawn([str(a / "prog"), str(out)], out, cwd=str(a))
    v.wait_ok_after(3)
    return v, a, b


def children_of(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(st[1]) == pid:
                out.append(int(name))
    return out


def test_translate_every_path(procs: Procs, build: Any, tmp_path: Path) -> None:
    v, a, b = _start_moved(procs, build, tmp_path)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill")
    assert r.returncode == 0, r.stderr
    reap(v.pid)
    last = max(v.oks())
    os.rename(a, b)

    before = set(children_of(os.getpid()))
    r = run_cryo("restart", "-D", str(img), "--detach")  # without: checked, nothing made
    assert r.returncode == 1, r.stderr
    assert f"{a}/" in r.stderr and "--translate" in r.stderr, r.stderr
    assert set(children_of(os.getpid())) <= before

    r = run_cryo("restart", "-D", str(img), "--detach", "--translate", f"{a}={b}")
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    v.wait_ok_after(last + 5)
    assert os.readlink(f"/proc/{pid}/cwd") == str(b)
    assert os.readlink(f"/proc/{pid}/exe") == str(b / "prog")
    links = {os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
    assert str(b / "data") in links
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert str(b / "map") in maps and str(b / "prog") in maps and str(a) not in maps


def test_translated_path_of_the_wrong_type(procs: Procs, build: Any, tmp_path: Path) -> None:
    v, a, b = _start_moved(procs, build, tmp_path)
    img = tmp_path / "img"
    assert run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill").returncode == 0
    reap(v.pid)
    _moved_tree(build, b)
    (b / "data").unlink()
    (b / "data").mkdir()
    r = run_cryo("restart", "-D", str(img), "--detach", "--translate", f"{a}={b}")
    assert r.returncode == 1
    assert f"{b}/data (translated from {a}/data) is a directory, not a regular file" \
        in r.stderr, r.stderr  # fmt: skip
    r = run_cryo("restart", "-D", str(img), "--translate", "relative=/x")
    assert r.returncode == 2 and "absolute" in r.stderr, r.stderr


def _build_spmf(tmp_path: Path) -> tuple[Path, Path]:
    lib, exe = tmp_path / "lib", tmp_path / "bin"
    lib.mkdir()
    exe.mkdir()
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-shared", "-fPIC", "-o",
                    str(lib / "libspmf.so"), str(VICTIMS / "spmflib.c")], check=True)
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-o", str(exe / "spmf"),
                    str(VICTIMS / "spmf.c"), f"-L{lib}", "-lspmf",
                    f"-Wl,-rpath,{lib}"], check=True)  # fmt: skip
    return exe / "spmf", lib / "libspmf.so"


def test_save_files_replaced_binary_deleted_library(procs: Procs, tmp_path: Path) -> None:
    prog, lib = _build_spmf(tmp_path)
    v = procs.spawn([str(prog), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(3)
    img = tmp_path / "img"
    r = run_cryo("checkpoint", str(v.pid), "-D", str(img), "--save-files", "--kill")
    assert r.returncode == 0, r.stderr
    assert re.search(r"saved [3-9] files into the image", r.stderr), r.stderr
    reap(v.pid)
    last = max(v.oks())
    saved = [n for n in os.listdir(img) if n.startswith(spmf.PREFIX)]
    assert len(saved) >= 3  # the binary, the library, libc, the loader ...
    listed = json.loads(run_cryo("show", str(img), "--files", "--json").stdout)["files"]
    by = {(f["path"], f["use"]): f for f in listed}
    assert by[(str(prog), "exe")]["saved"] and by[(str(lib), "mapped")]["saved"]
    assert by[(str(tmp_path / "out.txt"), "open")]["saved"] is False
    text = run_cryo("show", str(img), "--files").stdout.splitlines()
    assert f"exe    {prog}  [{v.pid}]  (in the image)" in text, text

    lib.unlink()
    prog.unlink()
    shutil.copy("/bin/true", prog)  # another binary under the old name
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 0, r.stderr
    pid = procs.track(int(r.stdout))
    v.wait_ok_after(last + 5)
    maps = Path(f"/proc/{pid}/maps").read_text()
    copies = [line.split()[-2] for line in maps.splitlines() if "/cryo-files-" in line]
    assert any(c.endswith("-libspmf.so") for c in copies), maps
    assert any(c.endswith("-spmf") for c in copies), maps
    assert not any(os.path.exists(c) for c in copies)  # the private copies are gone
    assert os.readlink(f"/proc/{pid}/exe").endswith("-spmf (deleted)")


def test_without_save_files_a_deleted_library_is_named(procs: Procs, tmp_path: Path) -> None:
    prog, lib = _build_spmf(tmp_path)
    v = procs.spawn([str(prog), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(3)
    img = tmp_path / "img"
    assert run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill").returncode == 0
    reap(v.pid)
    lib.unlink()
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 1
    assert f"{lib}: No such file or directory" in r.stderr, r.stderr
    subprocess.run(["gcc", "-O0", "-shared", "-fPIC", "-o", str(lib),  # other code: -O0
                    str(VICTIMS / "spmflib.c"), "-Wl,--build-id=sha1"], check=True)  # fmt: skip
    r = run_cryo("restart", "-D", str(img), "--detach")
    assert r.returncode == 12 and "changed since the checkpoint" in r.stderr, r.stderr


def test_api_result_lists_files(procs: Procs, build: Any, tmp_path: Path) -> None:
    import cryo

    v, a, _b = _start_moved(procs, build, tmp_path)
    r = cryo.checkpoint(v.pid, str(tmp_path / "img"), save_files=True)
    uses = {(f["path"], f["use"]): f for f in r.files}
    assert uses[(str(a / "prog"), "exe")]["saved"]
    assert uses[(str(a / "map"), "mapped")]["saved"]
    assert not uses[(str(a / "data"), "open")]["saved"]
    assert uses[(str(a), "cwd")]["pids"] == [v.pid]


def test_save_files_in_a_store(procs: Procs, tmp_path: Path) -> None:
    prog, lib = _build_spmf(tmp_path)
    v = procs.spawn([str(prog), str(tmp_path / "out.txt")], tmp_path / "out.txt")
    v.wait_ok_after(3)
    st = tmp_path / "store"
    for extra in ([], ["--kill"]):
        r = run_cryo("checkpoint", str(v.pid), "--store", str(st), "--app", "spmf",
                     "--save-files", *extra)  # fmt: skip
        assert r.returncode == 0, r.stderr
    reap(v.pid)
    last = max(v.oks())
    for version in ("v1", "v2"):  # each version holds the files it needs
        assert any(n.startswith(spmf.PREFIX) for n in os.listdir(st / "spmf" / version))
    lib.unlink()
    prog.unlink()
    r = run_cryo("restart", "--store", str(st), "--app", "spmf", "--detach")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    v.wait_ok_after(last + 5)


_SERVER = """
import os, socket, sys, time
out = open(sys.argv[1], "a", buffering=1)
srv = socket.socket(socket.AF_UNIX)
srv.bind("sock")  # relative: under its cwd, DIR
srv.listen(4)
srv.settimeout(0.02)
i = 0
while True:
    try:
        c, _ = srv.accept()
        c.sendall(b"pong " + os.getcwd().encode())
        c.close()
    except TimeoutError:
        pass
    out.write(f"ok {i}\\n")
    i += 1
"""


def test_translate_unix_socket_path(procs: Procs, tmp_path: Path) -> None:
    import socket
    import sys

    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    out = tmp_path / "out.txt"
    v = procs.spawn([sys.executable, "-c", _SERVER, str(out)], out, cwd=str(a))
    v.wait_ok_after(3)
    img = tmp_path / "img"
    assert run_cryo("checkpoint", str(v.pid), "-D", str(img), "--kill").returncode == 0
    reap(v.pid)
    last = max(v.oks())
    os.rename(a, b)
    r = run_cryo("restart", "-D", str(img), "--detach", "--translate", f"{a}={b}")
    assert r.returncode == 0, r.stderr
    procs.track(int(r.stdout))
    v.wait_ok_after(last + 3)
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(10)
        c.connect(str(b / "sock"))
        assert c.recv(100) == f"pong {b}".encode()
