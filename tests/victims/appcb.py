"""A program that takes part in its checkpoints through cryo.app.

    appcb.py OUT MODE [ARG]

Every mode registers a callback that reports the checkpoint it sees and what
checkpoint_ready() returned; the main loop ticks ("tick N").  Modes:
  plain      just that
  signal     the callback runs in "signal" context (on the main thread)
  veto       the callback aborts the checkpoint
  critical   the main loop spends most of its time inside critical sections
  advise     a 4 MiB buffer of 0xAB is left out of checkpoints (advise)
  saved      ARG, a file the program wrote, is saved with every checkpoint
  self       the program checkpoints itself into ARG once, and says what it got back
"""

import os
import sys
import threading
import time

import cryo.app as cr

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
mode = sys.argv[2]
arg = sys.argv[3] if len(sys.argv) > 3 else ""
buf = bytearray(b"\xab" * (4 << 20))


def say(text: str) -> None:
    out.write(text + "\n")


def callback(_data: object) -> None:
    info = cr.checkpoint_info()
    assert info is not None
    main = threading.current_thread() is threading.main_thread()
    say(f"callback start signal={info.signal} scope={info.scope} target={info.target}"
        f" requester={info.requester} main={int(main)}")
    if mode == "veto":
        cr.abort_checkpoint("not now, says the program")
    got = cr.checkpoint_ready()
    if got == cr.RESTARTED:
        ri = cr.restart_info()
        assert ri is not None
        say(f"callback RESTARTED old={ri.old_pid} new={ri.new_pid} pid={os.getpid()}"
            f" host={ri.new_host} dropped={list(ri.dropped)} from={ri.old_host}"
            f" addrs={','.join(ri.old_addrs)}>{','.join(ri.new_addrs)}")
    elif got == cr.CONTINUED:
        say("callback CONTINUED")
    else:
        say("callback FAILED")


cr.register(callback, context="signal" if mode == "signal" else "thread")
if mode == "advise":
    cr.advise("memory", False, buf)
    say(f"advised {len(buf)}")
if mode == "saved":
    cr.add_saved_file(arg)
say(f"ready {os.getpid()}")
if mode == "self":
    got = cr.checkpoint_self(arg)
    say(f"self {'RESTARTED' if got == cr.RESTARTED else 'CONTINUED'} pid={os.getpid()}")
n = 0
while True:
    n += 1
    if mode == "critical":
        with cr.critical():
            say(f"enter {n}")
            time.sleep(0.4)
            say(f"leave {n}")
        time.sleep(0.05)
    else:
        time.sleep(0.05)
    if mode == "advise":  # whole pages inside the buffer are left out: those come back 0
        import ctypes

        addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
        lo = (-addr) % 4096
        inner = buf[lo : lo + (len(buf) - lo) // 4096 * 4096]
        zeros = inner.count(0)
        if zeros not in (0, len(inner)) or buf[: lo].count(0) or buf[lo + len(inner) :].count(0):
            say(f"FAIL buffer partly zero: {zeros} of {len(inner)}")
        say(f"buffer {'zero' if zeros else 'AB'}")
    say(f"tick {n}")
