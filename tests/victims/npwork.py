"""A numpy job: OpenBLAS's threads multiply matrices (its buffers bound "local" with
mbind), a generator draws numbers; every round the product is checked against the one
made at the start, and the draws against a second generator run in step.  Writes "port
0" (no server), then "ok N" or "FAIL ..." to argv[1]."""

import sys
import time

import numpy as np

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
a = np.random.default_rng(7).standard_normal((300, 300))
b = np.random.default_rng(8).standard_normal((300, 300))
ref = a @ b
draws, twin = np.random.default_rng(9), np.random.default_rng(9)
out.write("port 0\n")
for n in range(10**9):
    c = a @ b
    same = np.allclose(c, ref, rtol=0, atol=1e-9) and draws.random() == twin.random()
    out.write(f"ok {n}\n" if same else f"FAIL round {n}\n")
    time.sleep(0.05)
