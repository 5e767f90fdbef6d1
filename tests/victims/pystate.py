"""A Python target: nested objects, a generator halfway through, an open file being
read, and the random module's state.  Each tick prints a line that depends on all of
them, so a restored run must print exactly what an uninterrupted run prints."""

import os
import random
import sys
import time
import zlib


def fib():
    a, b = 0, 1
    while True:
        yield a
        a, b = b, a + b


def main() -> None:
    out, source = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else -1
    random.seed(12345)
    gen = fib()
    data = {"nested": [{"k": i, "v": [i] * 3, "s": str(i)} for i in range(1000)],
            "set": set(range(100)), "bytes": bytes(range(256)) * 64}
    src = open(source)  # noqa: SIM115
    log = open(out, "a", buffering=1)  # noqa: SIM115
    log.write(f"ready {os.getpid()}\n")
    i = 0
    while i != limit:
        line = src.readline()
        if not line:
            src.seek(0)
            line = src.readline()
        digest = zlib.crc32(repr(sorted(data["set"])).encode() + repr(data["nested"]).encode())
        log.write(f"tick {i} fib={next(gen)} rnd={random.random()!r} line={line.strip()}"
                  f" data={digest}\n")
        data["nested"][i % 1000]["v"].append(i)
        data["set"].add(1000 + i)
        i += 1
        time.sleep(0.01)


main()
