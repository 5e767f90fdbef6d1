import sys
import time

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
for line in sys.stdin:
    out.write(f"got {line}")
    time.sleep(0.002)
