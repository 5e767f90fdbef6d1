"""The command line builds only the parser of the command asked for (start-up, issue 16)."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from cryo import cli


def _commands(module: str) -> set[str]:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(f"cryo.cli.{module}").register(sub)
    return set(sub.choices)


def test_the_table_names_every_command_of_every_module() -> None:
    for module in cli.MODULES:
        for command in _commands(module):
            assert cli.COMMANDS.get(command) == module, command
    assert set(cli.COMMANDS.values()) == set(cli.MODULES)


def test_one_command_parses_as_with_the_whole_parser() -> None:
    argv = ["-vv", "checkpoint", "123", "-D", "/tmp/x", "--tree", "--kill"]
    got = cli.build_parser(argv).parse_args(argv)
    want = cli.build_parser().parse_args(argv)
    assert vars(got) == vars(want)
    assert got.command == "checkpoint" and got.verbose == 2


def test_unknown_or_no_command_gets_every_parser() -> None:
    for argv in ([], ["--help"], ["chekpoint"], ["-v"]):
        parser = cli.build_parser(argv)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert set(sub.choices) == set(cli.COMMANDS), argv


def test_checkpoint_and_restart_import_no_other_front_end() -> None:
    for command in ("checkpoint", "restart"):
        code = ("import sys; from cryo import cli; cli.build_parser(sys.argv[1:]);"
                " print(sorted(m for m in sys.modules if m.startswith(('cryo.cli.', 'cryo.daemon',"
                " 'cryo.store', 'cryo.migrate', 'cryo.grid', 'cryo.ipc', 'multiprocessing'))))")
        out = subprocess.run([sys.executable, "-c", code, command, "-D", "/tmp/x"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert out.strip() == "['cryo.cli.engine', 'cryo.cli.fmt']", (command, out)
