"""WebSocket frames for the scripts that speak them by hand (over HTTP/2 streams): a client's masked frame, and
the server's unmasked frames parsed out of a byte stream. Prepended to those scripts (`concat!` in the tests)."""
import os, struct


def frame(op, payload):
    """A masked, final frame with opcode `op`."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | op])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    m = (mask * (n // 4 + 1))[:n]
    return head + mask + (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def parse(buf):
    """The server's whole frames at the start of `buf`, as [(opcode, payload)], and the rest."""
    out = []
    while len(buf) >= 2:
        op, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, at = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, at = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < at + n:
            break
        out.append((op, buf[at:at + n]))
        buf = buf[at + n:]
    return out, buf
