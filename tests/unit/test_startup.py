"""What a command imports before it is needed (issue 16, docs/design.md "Start-up"): the
engine's modules as a checkpoint and a restart import them, in a fresh interpreter, leave
out the drivers of resources a small program lacks; the stand-ins of cryo.lazy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# the modules of resources a small program lacks, and what only they import (and tty at
# a restart: a checkpoint's /dev/null is not a name tty.is_pty takes, CHECKPOINT_LATER)
LAZY = ("cryo.engine.inet", "cryo.engine.netlock", "cryo.engine.sockets",
        "cryo.engine.appchannel", "cryo.app", "cryo.engine.fsnotify",
        "zstandard", "platform",  # (zstd: compressed images only)
        "_hashlib", "hmac", "secrets")  # fmt: skip  (OpenSSL: no image hash needs it)
RESTART_LAZY = (*LAZY, "cryo.engine.tty")
# what the engine imports where it is used, not before (session 11): the host's
# addresses (an agent's only), json (a user's restart, an image's marker), the early
# reads' thread pool (a checkpoint's), mincore (a checkpoint's), the exec'd layout (a
# restart's)
LATER = ("cryo.linux.net", "concurrent.futures", "cryo.linux.sysv",
         "cryo.engine.execlayout", "pickle", "socket",  # (and json: imported_by's)
         "cryo.linux.bpf")  # (a sleep only the kernel holds, a deleted file's inode)
# (the early reads' pool is cryo.engine.context's own; the worker's messages _pickle's,
# over _socket's socket pair)
CHECKPOINT_LATER = ("cryo.linux.net", "json", "cryo.engine.execlayout",
                    "concurrent.futures", "pickle", "socket", "selectors",
                    "cryo.linux.sysv",  # (mincore of a mapped file: libc's)
                    "cryo.engine.tty", "termios")
RESTART_LATER = ("cryo.linux.net", "json", "concurrent.futures", "cryo.linux.sysv",
                 "socket", "selectors")


def imported_by(code: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json\n"
                        "print(json.dumps(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return set(json.loads(r.stdout.splitlines()[-1]))


@pytest.mark.parametrize("command", ["checkpoint", "restart"])
def test_engine_import_leaves_out_the_resources_drivers(command: str) -> None:
    engine = "cryo.engine.dump" if command == "checkpoint" else "cryo.engine.restore"
    mods = imported_by(f"import cryo.cli, cryo.cli.engine, {engine}")
    assert engine in mods and "cryo.engine.files" in mods
    assert not mods & set(RESTART_LAZY), sorted(mods & set(RESTART_LAZY))
    assert not mods & set(LATER), sorted(mods & set(LATER))


def test_only_pty_names_ask_tty() -> None:
    # files.py asks tty.is_pty (importing tty) of a character device only by these names
    from cryo.engine import files, tty

    for name in ("/dev/ptmx", "/dev/pts/ptmx", "/dev/pts/0", "/dev/pts/17"):
        assert tty.is_pty(name) and name.startswith(files._PTY_NAMES), name
    assert "/dev/tty".startswith(files._PTY_NAMES)  # (with a pid: its controlling terminal)
    for name in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/fuse", "/dev/kvm"):
        assert not tty.is_pty(name) and not name.startswith(files._PTY_NAMES), name


def test_app_record_kind_is_the_drivers() -> None:
    from cryo.engine import appchannel, drivers

    assert drivers.APPX == appchannel.KIND
    assert drivers.AGENT_PREFIX == appchannel.P.PREFIX
    app = next(d for d in drivers.DRIVERS if d.name == "app")
    assert app.kinds == (appchannel.KIND,)


def test_every_hook_of_a_driver_is_a_phase() -> None:
    from cryo.engine.drivers import Driver

    with pytest.raises(TypeError, match="no phase colect"):
        Driver("x", colect=print)
    d = Driver("x", (b"KIND",), collect=print, restore={"files": print})
    e = d.replace(restore={}, thaw=len)
    assert (e.name, e.kinds, e.collect, e.restore, e.thaw) == ("x", (b"KIND",), print, {}, len)
    assert d.restore == {"files": print} and d.thaw is None


def test_lazy_module_is_imported_on_first_use() -> None:
    code = ("from cryo.lazy import lazy\nimport sys\nm = lazy('cryo.engine.tty')\n"
            "assert 'cryo.engine.tty' not in sys.modules, 'imported early'\n"
            "assert m.is_pty('/dev/pts/3') and 'cryo.engine.tty' in sys.modules\n"
            "import cryo.engine.tty as real\nreal.SOMETHING = 5\nassert m.SOMETHING == 5\n"
            "m.OTHER = 6\nassert real.OTHER == 6\nassert 'not imported' not in repr(m)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_light_commands_are_the_short_ones() -> None:
    # bin/cryo starts the short commands without site's work (cryo/cli/boot.py, which it
    # loads by its path); they are cryo.cli's
    import ast
    from pathlib import Path

    from cryo.cli import FAST_EXIT

    text = (Path(__file__).resolve().parents[2] / "src" / "cryo" / "cli" / "boot.py").read_text()
    light = next(n.value for n in ast.parse(text).body if isinstance(n, ast.Assign)
                 and getattr(n.targets[0], "id", "") == "LIGHT")  # fmt: skip
    assert ast.literal_eval(light) == FAST_EXIT


def test_script_is_short_and_loads_boot() -> None:
    # bin/cryo is compiled at every start (a script's bytecode is never cached): what it
    # does is cryo/cli/boot.py's, whose bytecode is (its 190 lines cost 3 ms a command)
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "bin" / "cryo").read_text()
    assert len(text.splitlines()) < 60 and '"cryo", "cli", "boot.py"' in text


def test_light_start_adds_path_lines_and_runs_no_pth_code(tmp_path: object) -> None:
    # a user site directory (PYTHONUSERBASE) with a .pth of a path line and a code line:
    # bin/cryo's light start puts the path on sys.path and does not run the code line
    # (site.main(), for the other commands, runs both)
    from pathlib import Path

    base = Path(str(tmp_path))
    user = base / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    user.mkdir(parents=True)
    (base / "extra").mkdir()
    (base / "extra" / "h3_probe_mod.py").write_text("X = 1\n")
    marker = base / "ran"
    (user / "probe.pth").write_text(f"{base / 'extra'}\nimport os; open({str(marker)!r}, 'w')\n")
    boot = Path(__file__).resolve().parents[2] / "src" / "cryo" / "cli" / "boot.py"
    code = (f"import sys\nsys.argv = ['cryo', 'show']\nexec(open({str(boot)!r}).read())\n"
            "assert _site_paths()\nimport h3_probe_mod\n")  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "PYTHONUSERBASE": str(base)}
    subprocess.run([sys.executable, "-S", "-c", code], check=True, timeout=60, env=env)
    assert not marker.exists(), "a .pth file's code line ran"
    subprocess.run([sys.executable, "-c", "import h3_probe_mod"], check=True, timeout=60,
                   env=env)  # fmt: skip
    assert marker.exists()  # (site.main() runs it: the probe itself works)


def test_preload_makes_the_grammar_checks_once() -> None:
    # cryod's preload compiles every record kind's check, so that its commands' forks
    # (each restart and show) do not make them again
    code = ("from cryo.preload import preload\nfrom cryo.image import schema\n"
            "assert not schema._FAST\npreload(('cryo.image',))\n"
            "assert all(schema._FAST[id(k.body)][0] is k.body for k in schema.KINDS)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
