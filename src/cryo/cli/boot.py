"""What bin/cryo does before cryo.cli runs (issue 16; docs/design.md, "Start-up").

bin/cryo (under ``python -S``: the site module's start-up skipped) finds this file, in
the source tree it belongs to or in a site directory, and loads it by its path as the
module ``cryo_boot``, neither cryo nor cryo.cli imported: its bytecode is cached as any
module's, where the script's own would be compiled at every start (3 ms for the ~190
lines that were here).  For the short commands (checkpoint, restart, show, run) the
paths are added as site would add them, from the same site directories and the path
lines of their .pth files, and the code lines are left out; where that is not enough (a
virtual environment, whose prefix and paths site.venv() sets; an install that finds
its packages by an import hook, an ``import`` line of an ``__editable__`` .pth; cryo,
msgpack or xxhash not found that way) and for every other command, site.main() runs as
it always does.  ``python bin/cryo`` (site already run) is the usual command.  It
imports only the standard library's site and importlib.util until cryo.cli's
console runs.
"""

import sys

TYPE_CHECKING = False  # (typing not imported: mypy takes the name as true)
if TYPE_CHECKING:
    from types import ModuleType

LIGHT = ("checkpoint", "restart", "show", "run")  # cryo.cli.FAST_EXIT
OPTION = "--via-daemon"  # cryo.cli.thin.OPTION


def _command() -> str | None:
    for arg in sys.argv[1:]:
        if not (arg in ("-v", "--verbose") or (arg.startswith("-v") and set(arg[1:]) == {"v"})):
            return arg
    return None


def _site_paths() -> bool:
    """sys.path as site.main() makes it, without running a line of a .pth file; False
    where that would not do."""
    import os
    import site  # (the module only: under -S its main() has not run)

    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    if any(os.path.isfile(os.path.join(d, "pyvenv.cfg"))
           for d in (exe_dir, os.path.dirname(exe_dir))):  # fmt: skip
        return False  # a virtual environment: site.venv() sets its prefix and paths
    dirs = list(site.getsitepackages())
    if site.check_enableusersite():  # (before the others, as site.main() puts it)
        dirs.insert(0, site.getusersitepackages())
    paths = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        paths.append(d)
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".pth") and n[0] != ".")
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                return False
            for line in lines:
                if not line.strip() or line.startswith("#"):
                    continue
                if line.startswith(("import ", "import\t")):
                    if "__editable__" in line or "__editable__" in name:
                        return False  # (an import hook finds that package)
                    continue
                path = os.path.abspath(os.path.join(d, line.rstrip()))
                if os.path.exists(path):
                    paths.append(path)
    sys.path.extend(p for p in dict.fromkeys(paths) if p not in sys.path)
    return True


def load(name: str, path: str) -> "ModuleType":
    """The module at ``path`` as ``name`` (not in sys.modules), its bytecode cached as an
    imported module's, by the loader importlib.machinery names, without importing
    importlib (1 ms)."""
    boot = sys.modules.get("_frozen_importlib_external")
    if boot is not None and hasattr(boot, "SourceFileLoader"):
        loader_of = boot.SourceFileLoader
    else:
        import importlib.machinery

        loader_of = importlib.machinery.SourceFileLoader
    module = type(sys)(name)
    module.__file__ = path
    loader_of(name, path).exec_module(module)
    return module


def _thin() -> "ModuleType | None":
    """cryo.cli.thin, loaded from its file beside this one (neither cryo nor cryo.cli
    imported: their imports are what the thin client saves); None if it is not there."""
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "thin.py")
    return load("cryo_thin", path) if os.path.isfile(path) else None


def _via_daemon() -> None:
    """``cryo --via-daemon`` or CRYO_DAEMON: the command run by cryod (cryo.cli.thin),
    and out with its code; where the daemon does not take it, on as usual."""
    import os

    if OPTION not in sys.argv and os.environ.get("CRYO_DAEMON", "") in ("", "0"):
        return
    thin = _thin()
    if thin is None:
        return
    asked, argv = thin.split(sys.argv[1:])
    sys.argv[1:] = argv
    if asked:
        code = thin.run(argv)
        if code is not None:  # (nothing buffered: the client writes with os.write only)
            os._exit(code)


class _Later(type(sys)):  # type: ignore[misc]
    """A module imported when one of its attributes is first read: a stand-in in
    sys.modules until then (importlib.util.LazyLoader would not do: the next ``import``
    statement of it reads its ``__spec__``, which loads it)."""

    def __getattr__(self, attr: str):  # type: ignore[no-untyped-def]
        import importlib

        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def _lighter() -> None:
    """For a short command: the collector runs a tenth as often (each run during the
    imports walks every object made since the last: 40 of them, 5% of the imports' CPU),
    and ``inspect`` (with ast, dis and tokenize: 5 ms) is imported on first use, not
    by ``dataclasses``, which uses it only for a class without a docstring; so is
    ``traceback`` (with linecache, tokenize and textwrap: 2 ms), which ``logging`` uses
    only to print an exception or a stack."""
    import gc

    gc.set_threshold(10_000, *gc.get_threshold()[1:])
    for name in ("inspect", "traceback"):
        if name not in sys.modules:
            sys.modules[name] = _Later(name)


def main(site_done: bool = False) -> None:
    """The command: offered to cryod first where asked (cryo.cli.thin); then, under
    ``-S`` (bin/cryo's shell lines), sys.path made light for a short command, by
    site.main() for any other (not again where bin/cryo ran it: ``site_done``)."""
    _via_daemon()
    if sys.flags.no_site and not site_done:
        import site
        from importlib.util import find_spec

        light = _command() in LIGHT and _site_paths() and all(
            find_spec(m) is not None for m in ("cryo", "msgpack", "xxhash"))
        if not light:
            site.main()
        else:
            _lighter()
    from cryo.cli import console

    console(offered=True)
