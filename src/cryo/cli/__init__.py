"""The ``cryo`` command: argument parsing and output only; the work is in the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import cryo
from cryo.errors import CryoError, ExitCode


def _epilog() -> str:
    rows = "\n".join(f"  {code:>3}  {text}" for code, text in ExitCode.TABLE)
    return f"exit codes:\n    0  success\n    1  other errors\n    2  bad command line\n{rows}\n"


# which module of cryo.cli registers each command: the parser is built only for the
# command asked for (importing every front end and its sub-parsers is most of a small
# checkpoint's start-up); any other argv (--help, --version, a typo) gets them all
COMMANDS = {"checkpoint": "engine", "restart": "engine", "run": "engine", "show": "engine",
            "ipc": "ipc", "store": "store", "migrate": "migrate", "receive": "migrate",
            "daemon": "daemon", "jobs": "daemon", "job": "daemon", "grid": "grid"}
MODULES = ("engine", "ipc", "store", "migrate", "daemon", "grid")
# the commands that leave without the interpreter's teardown (console())
FAST_EXIT = ("checkpoint", "restart", "show", "run")


def _command(argv: Sequence[str]) -> str | None:
    """The command named in ``argv`` (after the global options), if it is one we know."""
    for arg in argv:
        if arg in ("-v", "--verbose", "--via-daemon") or (
                arg.startswith("-v") and set(arg[1:]) == {"v"}):
            continue
        return arg if arg in COMMANDS else None
    return None


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size() gives it (COLUMNS, else the
    terminal of stdout, else 80), without importing shutil (with bz2, lzma and fnmatch:
    3 ms here), which argparse's formatter does for every argument added."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Width:
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        super().__init__(prog, indent_increment, max_help_position,  # type: ignore[call-arg]
                         _columns() - 2 if width is None else width)  # fmt: skip


class _Formatter(_Width, argparse.HelpFormatter):
    pass


class _RawFormatter(_Width, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its sub-commands' too, with :class:`_Formatter` by default."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with ``argv`` only the part its command needs."""
    import importlib

    parser = _Parser(
        prog="cryo",
        description="Checkpoint and restart Linux processes.",
        epilog=_epilog(),
        formatter_class=_RawFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"cryo {cryo.__version__}")
    parser.add_argument("--via-daemon", action="store_true",
                        help="checkpoint, restart or show run by a running cryod (root;"
                        " also CRYO_DAEMON=1 or CRYO_DAEMON=SOCKET): no start-up; run here"
                        " where the daemon does not take it (docs/protocol.md)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = _command(argv) if argv is not None else None
    if command is not None:
        module = importlib.import_module(f"cryo.cli.{COMMANDS[command]}")
        if COMMANDS[command] == "engine":
            module.register(sub, only=command)
        else:
            module.register(sub)
        return parser
    for name in MODULES:
        importlib.import_module(f"cryo.cli.{name}").register(sub)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)
    logging.basicConfig(level=level, format="cryo: %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CryoError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # `cryo show | head`: the reader left; not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(sys.argv[1:] if argv is None else argv), argv)


def console(offered: bool = False) -> None:
    """The ``cryo`` command (``python -m cryo``): :func:`main`, then, for the short
    commands of :data:`FAST_EXIT`, out without tearing the interpreter down module by
    module (a tenth of a small checkpoint's CPU time): the exit handlers run and the
    output is flushed first.  Other commands, or other threads still running: the usual
    exit (which waits for them and finalizes every object).  With ``--via-daemon`` or
    CRYO_DAEMON, the command is first offered to cryod (:mod:`cryo.cli.thin`), unless it
    was already (``offered``: bin/cryo does it before anything is imported)."""
    if not offered and ("--via-daemon" in sys.argv or os.environ.get("CRYO_DAEMON")):
        from cryo.cli import thin

        asked, sys.argv[1:] = thin.split(sys.argv[1:])
        if asked:
            taken = thin.run(sys.argv[1:])
            if taken is not None:
                sys.exit(taken)
    code = main()
    import atexit
    import contextlib
    import threading

    if _command(sys.argv[1:]) not in FAST_EXIT or threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BrokenPipeError, ValueError):  # the reader left; closed
            stream.flush()
    os._exit(code)
