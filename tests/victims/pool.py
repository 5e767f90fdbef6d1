"""multiprocessing.Pool(2) halfway through a map: the result after a restart must be the
one an uninterrupted run gives."""

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
    multiprocessing.set_start_method("fork")
    out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
    out.write(f"ready {os.getpid()}\n")
    with multiprocessing.Pool(2) as pool:
        result = pool.map(work, range(300), chunksize=1)
    out.write(f"result {sum(result)} {len(result)}\n")
    time.sleep(60)
