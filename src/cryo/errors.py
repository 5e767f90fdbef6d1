"""One exception tree for cryo.

Every error carries the pid, the resource and the path it is about, and an exit
code that the CLI returns.  OS errors are translated into this tree at one
boundary (:func:`translate_oserror`), always with ``raise ... from err``.
"""

from __future__ import annotations

import errno
import os
from typing import Any


class ExitCode:
    """Exit codes of the ``cryo`` command, listed in ``cryo --help``."""

    OK = 0
    ERROR = 1  # any other failure
    USAGE = 2  # bad command line (argparse)
    NO_SUCH_PROCESS = 3
    ACCESS_DENIED = 4
    IMAGE_CORRUPT = 5
    IMAGE_INCOMPATIBLE = 6
    IMAGE_MISSING = 7
    IMAGE_EXISTS = 8
    UNSUPPORTED = 9
    CONFLICT = 10
    UNTRUSTED = 11
    FILE_CHANGED = 12
    REFUSED = 13
    UNKNOWN_HOST = 14
    INTERRUPTED = 130
    INTERNAL = 70

    TABLE = (
        (NO_SUCH_PROCESS, "the process does not exist (or vanished during the operation)"),
        (ACCESS_DENIED, "the process may not be traced, or a file may not be accessed"),
        (IMAGE_CORRUPT, "the image is truncated or a checksum does not match"),
        (IMAGE_INCOMPATIBLE, "the image is of another format version, architecture or CPU"),
        (IMAGE_MISSING, "there is no image where one was asked for"),
        (IMAGE_EXISTS, "an image is already there (use --force to replace it)"),
        (UNSUPPORTED, "the process uses a resource cryo cannot save yet"),
        (CONFLICT, "a pid, IPC id or key needed by the restore is taken, or the image is"
                   " running already (--allow-duplicate); a grid application's name is"
                   " taken"),
        (UNTRUSTED, "the image's seal does not verify: edited, or made on a host with"
                    " another key (--trust-image)"),
        (FILE_CHANGED, "a file the image needs changed since the checkpoint"
                       " (--ignore-changed-files)"),
        (REFUSED, "the application refused the checkpoint: a callback aborted it, or it"
                  " was inside a critical section (--nonblocking)"),
        (UNKNOWN_HOST, "a grid host has no live agent (none is registered in etcd under"
                       " that name)"),
        (INTERNAL, "a bug in cryo"),
    )


class CryoError(Exception):
    """Base of every error cryo raises on purpose."""

    exit_code = ExitCode.ERROR

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        resource: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.pid = pid
        self.resource = resource
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        # keyword-only arguments do not survive the default pickling; other attributes
        # (a worker's traceback, a subclass's own) go as the state
        rest = {k: v for k, v in self.__dict__.items()
                if k not in ("message", "pid", "resource", "path")}  # fmt: skip
        return (_rebuild, (type(self), self.message, self.pid, self.resource, self.path), rest)

    def __str__(self) -> str:
        return self.message


def _rebuild(
    cls: type[CryoError], message: str, pid: int | None, resource: str | None, path: str | None
) -> CryoError:
    return cls(message, pid=pid, resource=resource, path=path)


class NoSuchProcess(CryoError):
    exit_code = ExitCode.NO_SUCH_PROCESS


class AccessDenied(CryoError):
    exit_code = ExitCode.ACCESS_DENIED


class ImageError(CryoError):
    """Something is wrong with an image (or an IPC save)."""


class ImageCorrupt(ImageError):
    exit_code = ExitCode.IMAGE_CORRUPT


class ImageIncompatible(ImageError):
    exit_code = ExitCode.IMAGE_INCOMPATIBLE


class ImageMissing(ImageError):
    exit_code = ExitCode.IMAGE_MISSING


class ImageExists(ImageError):
    exit_code = ExitCode.IMAGE_EXISTS


class ImageUntrusted(ImageError):
    """The image's seal does not verify with this host's key (cryo.image.seal)."""

    exit_code = ExitCode.UNTRUSTED


class FileChanged(CryoError):
    """A file the image reopens is not the file it was at the checkpoint (shorter than
    its saved offset, or a mapped file that differs)."""

    exit_code = ExitCode.FILE_CHANGED


class CheckpointRefused(CryoError):
    """The application said no (cryo.app): a callback aborted the checkpoint, or it was
    inside a critical section and the checkpoint was non-blocking."""

    exit_code = ExitCode.REFUSED


class Unsupported(CryoError):
    """The target uses a resource that cryo cannot checkpoint (yet)."""

    exit_code = ExitCode.UNSUPPORTED


class RestoreConflict(CryoError):
    """A pid, IPC id or key that the restore needs is taken."""

    exit_code = ExitCode.CONFLICT


class Interrupted(CryoError):
    exit_code = ExitCode.INTERRUPTED


class Usage(CryoError):
    """A bad command line, or bad arguments to the API (exit 2, as argparse's own)."""

    exit_code = ExitCode.USAGE


class InternalError(CryoError):
    """A bug in cryo: an invariant did not hold."""

    exit_code = ExitCode.INTERNAL


def translate_oserror(
    err: OSError, *, pid: int | None = None, resource: str | None = None, path: str | None = None
) -> CryoError:
    """Map an OSError to the matching CryoError (the caller raises it ``from err``)."""
    what = f"{resource}: " if resource else ""
    msg = f"{what}{err.strerror or err}"
    if err.errno == errno.ESRCH:
        name = err.filename if isinstance(err.filename, str) else ""
        gone = name[6:].split("/", 1)[0] if name.startswith("/proc/") else ""
        if gone.isdigit():
            pid = int(gone)  # the process that was gone, not the target
        return NoSuchProcess(
            f"process {pid} does not exist" if pid else msg, pid=pid, resource=resource, path=path
        )
    if err.errno in (errno.EPERM, errno.EACCES):
        if err.errno == errno.EPERM and os.geteuid() != 0:
            msg += (f" (cryo runs as uid {os.geteuid()}: this step needs root, or"
                    " CAP_CHECKPOINT_RESTORE with CAP_SYS_PTRACE)")
        return AccessDenied(msg, pid=pid, resource=resource, path=path)
    return CryoError(msg, pid=pid, resource=resource, path=path)


def describe_failure(err: BaseException) -> tuple[str, int]:
    """What a front end (the CLI, its worker process) prints for ``err`` and the exit
    code it returns: cryo's own errors with their code; anything else (an OSError that
    escaped translation included) as a bug, exit 70, with its message and traceback,
    never swallowed."""
    if isinstance(err, CryoError):
        return f"cryo: error: {err}", err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return "cryo: interrupted", ExitCode.INTERRUPTED
    import traceback

    trace = "".join(traceback.format_exception(err)).rstrip()
    return (f"cryo: internal error (a bug in cryo): {type(err).__name__}: {err}\n{trace}",
            ExitCode.INTERNAL)  # fmt: skip
