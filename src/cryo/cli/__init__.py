"""The ``cryo`` command: argument parsing and output only; the work is in the library."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import cryo
from cryo.errors import CryoError, ExitCode


def _epilog() -> str:
    rows = "\n".join(f"  {code:>3}  {text}" for code, text in ExitCode.TABLE)
    return f"exit codes:\n    0  success\n    1  other errors\n    2  bad command line\n{rows}\n"


def build_parser() -> argparse.ArgumentParser:
    from cryo.cli import engine, ipc, store

    parser = argparse.ArgumentParser(
        prog="cryo",
        description="Checkpoint and restart Linux processes.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"cryo {cryo.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine.register(sub)
    ipc.register(sub)
    store.register(sub)
    from cryo.cli import migrate

    migrate.register(sub)
    from cryo.cli import daemon, grid

    daemon.register(sub)
    grid.register(sub)
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
    return run(build_parser(), argv)
