"""A Python program with worker threads, a queue and a lock: after a restart every
worker goes on and the totals stay consistent."""

import os
import queue
import sys
import threading
import time

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
jobs: queue.Queue[int] = queue.Queue()
lock = threading.Lock()
done = {"n": 0, "sum": 0}
per_worker = [0] * 4


def worker(k: int) -> None:
    while True:
        n = jobs.get()
        with lock:
            done["n"] += 1
            done["sum"] += n
        per_worker[k] += 1
        jobs.task_done()


for k in range(4):
    threading.Thread(target=worker, args=(k,), daemon=True, name=f"w{k}").start()
out.write(f"ready {os.getpid()}\n")
i = 0
last = [0] * 4
while True:
    for _ in range(50):
        jobs.put(i)
        i += 1
    jobs.join()
    with lock:
        ok = done["n"] == i and done["sum"] == i * (i - 1) // 2
    if not ok:
        out.write(f"FAIL totals {done} after {i}\n")
    out.write(f"ok {i // 50}\n")
    time.sleep(0.01)
