"""cryo's errors as they cross from the checkpoint worker to its caller."""

from __future__ import annotations

import errno
import pickle

from cryo.engine.worker import _portable
from cryo.errors import AccessDenied, NoSuchProcess, translate_oserror


def test_errors_keep_their_fields_and_where_they_were_raised_across_pickling() -> None:
    try:
        raise AccessDenied("may not read x", pid=12, resource="fd 3", path="/x")
    except AccessDenied as err:
        sent = _portable(err)
    back = pickle.loads(pickle.dumps(sent))
    assert type(back) is AccessDenied
    assert (back.message, back.pid, back.resource, back.path) == ("may not read x", 12,
                                                                   "fd 3", "/x")  # fmt: skip
    assert "raise AccessDenied" in back.worker_traceback


def test_a_process_gone_under_proc_is_named_not_the_target() -> None:
    """A child that ended while its /proc directory was read: the error names it (the
    target, given as ``pid``, was fine)."""
    err = translate_oserror(ProcessLookupError(errno.ESRCH, "No such process", "/proc/4242/task"),
                            pid=17)  # fmt: skip
    assert isinstance(err, NoSuchProcess)
    assert err.pid == 4242 and str(err) == "process 4242 does not exist"
    err = translate_oserror(ProcessLookupError(errno.ESRCH, "No such process"), pid=17)
    assert err.pid == 17
