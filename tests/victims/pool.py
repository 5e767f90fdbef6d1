"""multiprocessing.Pool(2) halfway through a map: the result after a restart must be the
one an uninterrupted run gives, and the pool must end (its locks are POSIX semaphores in
/dev/shm under the forkserver and spawn start methods: shared by name).
Arguments: OUT PROGRESS [START_METHOD (fork) [idle]]: with "idle", the map is made in
two halves with 2 s between them, "idle" written at its start (the workers wait for
work then, one of them holding the task queue's lock while it waits)."""

import multiprocessing
import os
import sys
import time


def work(x: int) -> int:
    with open(sys.argv[2], "a") as f:
        f.write(f"{x}\n")
    time.sleep(0.02)
    return x * x + 1


if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[3] if len(sys.argv) > 3 else "fork")
    out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
    out.write(f"ready {os.getpid()}\n")
    with multiprocessing.Pool(2) as pool:
        if sys.argv[4:5] == ["idle"]:
            result = pool.map(work, range(150), chunksize=1)
            out.write("idle\n")
            time.sleep(2)
            result += pool.map(work, range(150, 300), chunksize=1)
        else:
            result = pool.map(work, range(300), chunksize=1)
    out.write(f"result {sum(result)} {len(result)}\n")
    time.sleep(60)
