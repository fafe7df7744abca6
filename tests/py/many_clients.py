"""N concurrent Python `websockets` clients, each sending M messages and checking every echo.

Usage: python many_clients.py ws://HOST:PORT/ N M  — prints "ok N*M" when all were echoed.
"""
import asyncio
import sys

import websockets

url, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


async def client(i, start):
    async with websockets.connect(url, compression=None, open_timeout=30, close_timeout=10) as ws:
        await start.wait()
        got = 0
        for j in range(m):
            msg = f"client {i} message {j}"
            await ws.send(msg)
            assert await ws.recv() == msg
            got += 1
        return got


async def main():
    start = asyncio.Event()
    tasks = [asyncio.create_task(client(i, start)) for i in range(n)]
    await asyncio.sleep(0.5)
    start.set()
    total = sum(await asyncio.wait_for(asyncio.gather(*tasks), 120))
    assert total == n * m, total
    print("ok", total)


asyncio.run(main())
