"""A long job for the demo: counts, keeps a running sum in memory, appends to a log."""

import sys
import time

log = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
total = 0
for i in range(10**9):
    total += i
    log.write(f"step {i:5d}  running total {total}\n")
    time.sleep(0.2)
