"""Fan-out across bridged nodes, checked from the outside with Python `websockets`.

usage: bridge_clients.py CLIENTS_PER_NODE MESSAGES URL [URL ...]

Connects CLIENTS_PER_NODE clients to each URL (one per node, same topic), prints "ready", waits for a line on
stdin, then every client publishes MESSAGES messages (text and binary alternately, binary ones with NUL and CR LF
inside). Every client must receive every *other* client's messages exactly once, in order per publisher, with
their type and bytes intact, and none of its own. Prints "ok N" with the number of deliveries checked.
"""
import asyncio
import sys

from websockets.asyncio.client import connect


def payload(client, seq):
    if seq % 2 == 0:
        return f"c{client}:{seq}:κόσμε"
    return b"\x00" + f"c{client}:{seq}".encode() + b"\r\n\xff"


def parse(msg):
    if isinstance(msg, str):
        client, seq, _ = msg.split(":")
        return int(client[1:]), int(seq), True
    body = msg[1:-3].decode()
    client, seq = body.split(":")
    return int(client[1:]), int(seq), False


async def main():
    per_node, messages, urls = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    clients = []
    for url in urls:
        for _ in range(per_node):
            clients.append(await connect(url, max_size=None))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    total = len(clients)

    async def publish(i, ws):
        for seq in range(messages):
            await ws.send(payload(i, seq))

    async def receive(i, ws):
        expected = (total - 1) * messages
        nxt = {}
        for _ in range(expected):
            msg = await asyncio.wait_for(ws.recv(), 30)
            client, seq, text = parse(msg)
            assert client != i, f"client {i} got its own message back"
            assert text == (seq % 2 == 0), f"type changed: {msg!r}"
            assert msg == payload(client, seq), f"bytes changed: {msg!r}"
            assert nxt.get(client, 0) == seq, f"client {i}: from {client} expected {nxt.get(client, 0)}, got {seq}"
            nxt[client] = seq + 1
        try:
            extra = await asyncio.wait_for(ws.recv(), 0.5)
            raise AssertionError(f"client {i} got a duplicate: {extra!r}")
        except asyncio.TimeoutError:
            pass
        return expected

    receivers = [asyncio.create_task(receive(i, ws)) for i, ws in enumerate(clients)]
    await asyncio.gather(*(publish(i, ws) for i, ws in enumerate(clients)))
    counts = await asyncio.gather(*receivers)
    for ws in clients:
        await ws.close()
    print("ok", sum(counts), flush=True)


asyncio.run(main())
