"""Starting a program so that it can be checkpointed later (BLCR's cr_run)."""

from __future__ import annotations

import os

from cryo import safefile
from cryo.errors import CryoError
from cryo.linux import libc
from cryo.linux.consts import CLONE

RUN_MARK = "CRYO_RUN=1"  # in the environment of what `cryo run` starts: scope "tree"


def run(cmd: list[str], output: str = "/dev/null", *, pid_ns: bool = False) -> int:
    """Start ``cmd`` detached: its own session, stdin from /dev/null, stdout and stderr
    appended to ``output``, no fd of ours.  With ``pid_ns`` it is pid 1 of a new pid
    namespace, so that a restart can always give every process its old pid.  Returns
    its pid (as we see it)."""
    import subprocess  # (not for the checkpoint that reads RUN_MARK)

    if not cmd:
        raise CryoError("cryo run needs a command: cryo run -- CMD ARGS")
    env = dict(os.environ, **dict([RUN_MARK.split("=")]))
    out = safefile.open_append(output)  # (never through a link; a new file 0600)
    try:
        if not pid_ns:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=out, close_fds=True, start_new_session=True,
                                        env=env)  # fmt: skip
            except OSError as err:
                raise CryoError(f"cannot start {cmd[0]}: {err.strerror}") from err
            proc.returncode = 0  # do not reap it at exit: it lives on after us
            return proc.pid
        return _run_in_pidns(cmd, out, env)
    finally:
        os.close(out)


def _run_in_pidns(cmd: list[str], out: int, env: dict[str, str]) -> int:
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = libc.clone3(None, CLONE.NEWPID)
        if pid == 0:  # pid 1 of the new namespace: set up and exec, nothing else
            try:
                os.setsid()
                os.dup2(null, 0)
                os.dup2(out, 1)
                os.dup2(out, 2)
                os.closerange(3, w)
                os.closerange(w + 1, 65536)
                os.execvpe(cmd[0], cmd, env)  # noqa: S606  (argv as given, no shell)
            except OSError as err:
                os.write(w, str(err.errno).encode())
            finally:
                os._exit(127)
        os.close(w)
        w = -1
        failed = os.read(r, 64)
        if failed:
            raise CryoError(f"cannot start {cmd[0]}: {os.strerror(int(failed))}")
        return pid
    finally:
        os.close(null)
        os.close(r)
        if w >= 0:
            os.close(w)
