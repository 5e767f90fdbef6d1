"""Command lines of ``cryo ipc`` and of the seed's krgipc* commands (parsing only)."""

from __future__ import annotations

import pytest

from cryo.cli import build_parser
from cryo.cli.ipc import _krg_parser
from cryo.ipc import Kind, parse_key, parse_owner


@pytest.mark.parametrize(
    ("argv", "action", "ipc_id", "version"),
    [
        (["-save", "5"], "save", 5, None),
        (["-s", "5"], "save", 5, None),
        (["--save", "5"], "save", 5, None),
        (["-load", "5"], "load", 5, None),
        (["-l", "5", "2"], "load", 5, 2),
        (["-load", "32768", "12"], "load", 32768, 12),
    ],
)
def test_krg_forms(argv: list[str], action: str, ipc_id: int, version: int | None) -> None:
    for kind in Kind:
        args = _krg_parser(kind).parse_args(argv)
        assert (args.action, args.id, args.version) == (action, ipc_id, version)


@pytest.mark.parametrize("argv", [["5"], ["-s", "-l", "5"], ["-s"], ["-s", "x"], ["-s", "-1"]])
def test_krg_bad_forms(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _krg_parser(Kind.MSG).parse_args(argv)
    assert exc.value.code == 2


def test_cryo_ipc_forms() -> None:
    p = build_parser()
    a = p.parse_args(["ipc", "save", "msg", "7"])
    assert (a.kind, a.id, a.all, a.store) == ("msg", 7, False, None)
    a = p.parse_args(
        ["ipc", "--store", "/s", "save", "--all", "--key", "0xffffffff", "--owner", "0"]
    )
    assert (a.all, a.key, a.owner, a.store) == (True, -1, 0, "/s")
    a = p.parse_args(["ipc", "load", "shm", "3", "2", "--replace", "--store", "/t"])
    assert (a.kind, a.id, a.version, a.replace, a.store) == ("shm", 3, 2, True, "/t")
    a = p.parse_args(["ipc", "load", "--all", "4", "--sysctl"])
    assert (a.all, a.sysctl) == (4, True)
    a = p.parse_args(["ipc", "show", "set", "4"])
    assert (a.kind, a.id) == ("set", 4)
    a = p.parse_args(["ipc", "ls-live", "sem"])
    assert a.kind == "sem"
    a = p.parse_args(["ipc", "list"])
    assert a.kind is None


def test_keys_and_owners() -> None:
    assert parse_key("0x1234") == 0x1234
    assert parse_key("0xfedcba98") == 0xFEDCBA98 - (1 << 32)  # as the kernel's int key_t
    assert parse_key("-19088744") == -19088744
    with pytest.raises(ValueError, match="32 bits"):
        parse_key("0x100000000")
    assert parse_owner("root") == 0
    assert parse_owner("1000") == 1000
    with pytest.raises(ValueError, match="no user"):
        parse_owner("no-such-user-here")
