"""cryo.cli.thin's own JSON and argv handling (it imports neither json nor argparse):
what it writes is what json reads, what json writes it reads back."""

from __future__ import annotations

import json
import os

import pytest

from cryo.cli import thin


@pytest.mark.parametrize("value", [
    {"op": "command", "args": {"argv": ["checkpoint", "12", "-D", "d"], "umask": 18,
                               "cwd": None, "env": {"A": "1", "B": ""}}},
    ["é", "\U0001f600", "\udcff\udc80", "\x00\x1f\"\\/\n\t", "", 0, -1, 2**40, True, False],
    {"nested": [[], {}, [{"a": [None]}]]},
])  # fmt: skip
def test_json_both_ways(value: object) -> None:
    text = thin._dumps(value)
    assert json.loads(text) == value
    assert thin._loads(json.dumps(value)) == value
    assert thin._loads(text) == value


def test_environment_bytes_come_back() -> None:
    # bytes of an environment that are not UTF-8 are lone surrogates in os.environ: they
    # cross as \\udcXX and are the same bytes once put back
    raw = b"caf\xe9\xff"
    value = os.fsdecode(raw)
    assert os.fsencode(json.loads(thin._dumps({"V": value}))["V"]) == raw


def test_a_frame_and_a_reply() -> None:
    frame = thin._frame({"ok": True, "result": {"exit_code": 9}})
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert thin._loads(frame[4:].decode()) == {"ok": True, "result": {"exit_code": 9}}


def test_the_option_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(thin.ENV, raising=False)
    assert thin.split(["-v", "--via-daemon", "checkpoint", "1"]) == (True, ["-v", "checkpoint",
                                                                            "1"])  # fmt: skip
    assert thin.split(["checkpoint", "--via-daemon"]) == (False, ["checkpoint", "--via-daemon"])
    assert thin.split(["show", "x"]) == (False, ["show", "x"])
    monkeypatch.setenv(thin.ENV, "0")
    assert thin.split(["show", "x"])[0] is False
    monkeypatch.setenv(thin.ENV, "1")
    monkeypatch.setenv(thin.SOCKET_ENV, "/run/x.sock")
    assert thin.split(["show", "x"])[0] is True and thin.socket_path() == "/run/x.sock"
    monkeypatch.setenv(thin.ENV, "/tmp/d.sock")
    assert thin.socket_path() == "/tmp/d.sock"
    # what the daemon does not run, the client does not send
    assert thin.run(["run", "--", "true"]) is None
    assert thin.run(["restart", "-D", "d", "--shell-job"]) is None


def test_it_imports_only_what_costs_nothing() -> None:
    # (C modules; not socket, json or signal, which bring enum and re)
    import ast
    from pathlib import Path

    tree = ast.parse(Path(thin.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}  # fmt: skip
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and n.module != "__future__"}
    assert names <= {"_json", "_signal", "_socket", "os", "sys"}, names
