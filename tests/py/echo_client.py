"""Python `websockets` (sync client) against a wskit echo server: sizes, fragments, pings, close codes.

Usage: python echo_client.py ws://HOST:PORT/  — prints "ok" and exits 0 when every check holds.
"""
import os
import sys

from websockets.sync.client import connect

url = sys.argv[1]

with connect(url, compression=None, max_size=None) as ws:
    for n in [0, 1, 125, 126, 65535, 65536, 1 << 20]:
        data = os.urandom(n)
        ws.send(data)
        assert ws.recv() == data, f"binary {n}"
        text = ("κόσμε-" * (n // 12 + 1))[: n // 2]
        ws.send(text)
        got = ws.recv()
        assert isinstance(got, str) and got == text, f"text {n}"
    # A fragmented message (websockets sends an iterable as fragments).
    ws.send(["frag", "mented ", "κό", "σμε"])
    assert ws.recv() == "fragmented κόσμε"
    ws.send([b"\x00\x01", b"", b"\x02"])
    assert ws.recv() == b"\x00\x01\x02"
    # Ping / pong.
    assert ws.ping(b"are you there").wait(timeout=5)
    # Close with an application code; the server echoes it.
    ws.close(code=4321, reason="done")
    assert ws.close_code == 4321, ws.close_code

print("ok")
