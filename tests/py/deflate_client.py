"""Python `websockets` with permessage-deflate against a wskit echo server, for every parameter combination:
server/client window bits, both no-context-takeover flags; messages from 0 B to 1 MiB, compressible and random.

Usage: python deflate_client.py ws://HOST:PORT/ [server-resets-context] — prints "ok N" (N combinations) when
every check holds.
"""
import os
import sys

from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from websockets.sync.client import connect

url = sys.argv[1]
# "server-resets-context": the server was told not to keep its context (it keeps it by default, and then honours
# the client's flag for it).
server_keeps = not (len(sys.argv) > 2 and sys.argv[2] == "server-resets-context")
compressible = (b'{"type":"message","from":"alice","text":"hello, how are you today?"}' * 20000)
sizes = [0, 1, 100, 10_000, 1 << 20]
combos = 0
for bits in range(8, 16):
    for server_nct in (False, True):
        for client_nct in (False, True):
            factory = ClientPerMessageDeflateFactory(
                server_no_context_takeover=server_nct,
                client_no_context_takeover=client_nct,
                server_max_window_bits=bits,
                # websockets cannot compress with an 8-bit window (zlib refuses it), so it never offers 8.
                client_max_window_bits=max(bits, 9),
            )
            with connect(url, compression=None, extensions=[factory], max_size=None) as ws:
                (ext,) = ws.protocol.extensions
                assert isinstance(ext, PerMessageDeflate), ext
                assert ext.remote_max_window_bits == bits, (bits, ext.remote_max_window_bits)
                # wskit asks clients for at most a 12-bit window by default (its inflate memory per connection).
                assert ext.local_max_window_bits == min(max(bits, 9), 12), (bits, ext.local_max_window_bits)
                # wskit keeps its own context by default; the client's flag is honoured.
                assert ext.remote_no_context_takeover is (server_nct if server_keeps else True)
                assert ext.local_no_context_takeover == client_nct
                for n in sizes:
                    for data in (compressible[:n], os.urandom(n)):
                        ws.send(data)
                        assert ws.recv() == data, (bits, server_nct, client_nct, n)
                    text = compressible[:n].decode()
                    ws.send(text)
                    assert ws.recv() == text
            combos += 1

print("ok", combos)
