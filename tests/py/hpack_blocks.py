"""Field blocks from Python's `hpack` (the encoder of the `h2` library), for tests/h2_codec.rs: random header lists
on one connection's encoder (indexing, Huffman on and off, never-indexed fields, table size changes), written as
one JSON line per block: {"block": hex, "fields": [[name, value], ...], "table": size after}."""
import json, random, sys
from hpack import Encoder, HeaderTuple, NeverIndexedHeaderTuple

rng = random.Random(int(sys.argv[1]))
enc = Encoder()
names = [":method", ":path", ":authority", ":scheme", ":protocol", "sec-websocket-version", "sec-websocket-protocol",
         "user-agent", "cookie", "x-custom", "accept-encoding", "origin", "sec-websocket-extensions"]
for i in range(int(sys.argv[2])):
    if rng.random() < 0.1:
        enc.header_table_size = rng.choice([0, 256, 1024, 4096])
    fields = []
    for _ in range(rng.randint(1, 12)):
        name = rng.choice(names) if rng.random() < 0.8 else "x-" + "".join(rng.choice("abcxyz-") for _ in range(rng.randint(1, 20)))
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789/=;, %é\u00ff" if rng.random() < 0.8 else "".join(map(chr, range(32, 127)))
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, rng.choice([5, 40, 400]))))
        fields.append((name, value))
    tuples = [NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else HeaderTuple(n, v) for n, v in fields]
    block = enc.encode(tuples, huffman=rng.random() < 0.7)
    print(json.dumps({"block": block.hex(), "fields": fields}))
