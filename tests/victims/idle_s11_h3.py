"""An idle Python program for test_probes_s11_h3: three threads (named, blocked in a
lock, a sleep and a select), a signal handler; each SIGUSR1 prints "ok N"."""

import os
import select
import signal
import sys
import threading
import time

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
held = threading.Lock()
held.acquire()
n = [0]


def on_usr1(sig: int, frame: object) -> None:
    out.write(f"ok {n[0]}\n")
    n[0] += 1


threading.Thread(target=held.acquire, name="py-lock", daemon=True).start()
threading.Thread(target=time.sleep, args=(10**6,), name="py-sleep", daemon=True).start()
r, w = os.pipe()
threading.Thread(target=select.select, args=([r], [], []), name="py-select",
                 daemon=True).start()  # fmt: skip
signal.signal(signal.SIGUSR1, on_usr1)
time.sleep(0.1)
out.write(f"ready {os.getpid()}\n")
while True:
    signal.pause()
