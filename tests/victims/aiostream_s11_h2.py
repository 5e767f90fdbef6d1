"""An asyncio server that streams (for test_probes_s11_h2): a client's "stream N\\n"
gets N lines "line I", one every 10 ms (asyncio.sleep, drain after each); "big N\\n"
gets N bytes of a pattern in one write, drained (its transport's buffer holds what the
socket will not take: add_writer, pause_writing); "upload N\\n" reads N bytes, 64 KiB
at a time with a 2 ms sleep after each (its receive window full, the client's send
queue full), and answers their sha256; "count\\n" the requests served.

argv: OUT PORT.  Reports "port N", then "tick N" every 0.1 s from a task of its own."""

from __future__ import annotations

import asyncio
import hashlib
import sys

out = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115
PATTERN = bytes(range(256)) * 4093
served = 0


async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    global served
    while line := await r.readline():
        served += 1
        cmd, _, arg = line.decode().strip().partition(" ")
        if cmd == "stream":
            for i in range(int(arg)):
                await asyncio.sleep(0.01)
                w.write(f"line {i}\n".encode())
                await w.drain()
        elif cmd == "big":
            n = int(arg)
            w.write((PATTERN * (n // len(PATTERN) + 1))[:n])
            await w.drain()
        elif cmd == "upload":
            n, h = int(arg), hashlib.sha256()
            while n:
                chunk = await r.read(min(n, 65536))
                if not chunk:
                    break
                h.update(chunk)
                n -= len(chunk)
                await asyncio.sleep(0.002)
            w.write(f"sha {h.hexdigest()}\n".encode())
            await w.drain()
        elif cmd == "count":
            w.write(f"served {served}\n".encode())
            await w.drain()
    w.close()


async def ticks() -> None:
    n = 0
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(0.1)
        now = loop.time()
        if now < last:
            print(f"FAIL the loop's clock went back {last - now}", file=out)
        last = now
        n += 1
        print(f"tick {n}", file=out)


async def main() -> None:
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[2]))
    print(f"port {sys.argv[2]}", file=out)
    asyncio.get_running_loop().create_task(ticks())
    async with srv:
        await srv.serve_forever()


asyncio.run(main())
