"""An asyncio TCP server (found by probing): each connection answers every line with
its own count of lines and the server's total, from the state of its handler
coroutine and of the server; writes its port to argv[1]."""

import asyncio
import sys

state = {"total": 0}


async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    n = 0
    while line := await r.readline():
        n += 1
        state["total"] += 1
        w.write(f"{n} {state['total']} {line.decode().strip()}\n".encode())
        await w.drain()


async def tick() -> None:
    while True:
        await asyncio.sleep(0.1)


async def main() -> None:
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    ticker = asyncio.create_task(tick())
    with open(sys.argv[1], "w") as f:
        f.write(f"port {srv.sockets[0].getsockname()[1]}\n")
    async with srv:
        await srv.serve_forever()
    ticker.cancel()


asyncio.run(main())
