"""WebSockets over HTTP/2 (RFC 8441) against a wskit server on a real socket, with Python's `h2` as the HTTP/2
client: h2c by prior knowledge, or TLS with ALPN `h2` (then argv[3] is the CA file). Several WebSocket sessions
share the one connection: each is an extended CONNECT stream whose DATA carries RFC 6455 frames (masked, as a
client's are). Each session sends messages of several sizes (one larger than a stream window, so flow control
works both ways), expects each echoed in order, then closes with 1000; one more session is reset by the client;
a plain GET goes to on_http; one more session offers subprotocols and permessage-deflate and echoes a compressed
message. Prints one JSON line with what happened. (tests/py/ws_frames.py is
prepended: `frame`, `parse`.)"""
import json, os, socket, ssl, struct, sys, zlib
import h2.config, h2.connection, h2.events

host, port = sys.argv[1].rsplit(":", 1)
mode = sys.argv[2]
sock = socket.create_connection((host, int(port)), timeout=float(os.environ.get("H2_TIMEOUT", "20")))
if mode == "tls":
    ctx = ssl.create_default_context(cafile=sys.argv[3])
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(sock, server_hostname="localhost")
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()

conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
SIZES = [5, 200, 70_000, 300_000]
SESSIONS = [1, 3, 5]
RESET = 7
GET = 9
DEFLATE = 11
TEXT = "κόσμε, " * 400
report = {"status": {}, "echoed": {}, "closed": {}, "ended": [], "reset_by_server": [], "body": "", "deflate": {}}
rx = {s: b"" for s in SESSIONS}
pending = {s: [] for s in SESSIONS}  # messages still to send (sent once the previous one is echoed)
outbox = {}  # stream -> bytes waiting for window
started = False



def message(stream, i):
    return (f"{stream}:{i}:" * (SIZES[i] // 4 + 1))[: SIZES[i]].encode()


def queue(stream, data):
    outbox[stream] = outbox.get(stream, b"") + data
    pump()


def pump():
    for stream in list(outbox):
        data = outbox[stream]
        while data:
            room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            if room <= 0:
                break
            conn.send_data(stream, data[:room])
            data = data[room:]
        outbox[stream] = data
        if not data:
            del outbox[stream]


def open_sessions():
    for s in SESSIONS + [RESET]:
        conn.send_headers(s, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https" if mode == "tls" else "http"),
                              (":path", "/chat"), (":authority", "localhost"), ("sec-websocket-version", "13"),
                              ("origin", "http://localhost")])
    conn.send_headers(GET, [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "localhost")],
                      end_stream=True)
    conn.send_headers(DEFLATE, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                (":path", "/chat"), (":authority", "localhost"), ("sec-websocket-version", "13"),
                                ("sec-websocket-protocol", "superchat, chat"),
                                ("sec-websocket-extensions", "permessage-deflate; client_no_context_takeover")])
    rx[DEFLATE] = b""


def compressed_frame(text):
    """A masked text frame with RSV1, its payload deflated (RFC 7692 §7.2.1: the trailing 00 00 ff ff removed)."""
    z = zlib.compressobj(wbits=-15)
    body = z.compress(text.encode()) + z.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    f = frame(1, body[:-4])
    return bytes([f[0] | 0x40]) + f[1:]


def on_deflate_data(data):
    rx[DEFLATE] += data
    if len(rx[DEFLATE]) < 2:
        return
    b0, n = rx[DEFLATE][0], rx[DEFLATE][1] & 0x7F
    at = 2
    if n == 126:
        n, at = struct.unpack("!H", rx[DEFLATE][2:4])[0], 4
    if len(rx[DEFLATE]) < at + n:
        return
    payload = rx[DEFLATE][at:at + n]
    report["deflate"]["rsv1"] = bool(b0 & 0x40)
    text = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff").decode()
    report["deflate"]["echo_ok"] = text == TEXT
    report["deflate"]["wire"] = n
    queue(DEFLATE, frame(8, struct.pack("!H", 1000)))


def on_ws_data(stream, data):
    rx[stream] += data
    frames, rx[stream] = parse(rx[stream])
    for op, payload in frames:
        if op == 8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            report["closed"][str(stream)] = code
            continue
        i = report["echoed"].get(str(stream), 0)
        if payload != message(stream, i):
            report.setdefault("wrong", []).append([stream, i, len(payload)])
        report["echoed"][str(stream)] = i + 1
        if i + 1 < len(SIZES):
            queue(stream, frame(1, message(stream, i + 1)))
        else:
            queue(stream, frame(8, struct.pack("!H", 1000) + b"bye"))


done = lambda: (len(report["ended"]) >= len(SESSIONS) + 2 and report["body"] and report["status"].get(str(RESET))
                and DEFLATE in report["ended"])
while not done():
    out = conn.data_to_send()
    if out:
        sock.sendall(out)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        report["timeout"] = True
        break
    if not data:
        report["eof"] = True
        break
    for ev in conn.receive_data(data):
        if isinstance(ev, h2.events.RemoteSettingsChanged) and not started:
            started = True
            report["connect_protocol"] = conn.remote_settings.enable_connect_protocol
            open_sessions()
        elif isinstance(ev, h2.events.ResponseReceived):
            status = dict(ev.headers)[":status"]
            report["status"][str(ev.stream_id)] = int(status)
            if ev.stream_id in SESSIONS:
                queue(ev.stream_id, frame(1, message(ev.stream_id, 0)))
            if ev.stream_id == DEFLATE:
                fields = dict(ev.headers)
                report["deflate"]["protocol"] = fields.get("sec-websocket-protocol")
                report["deflate"]["extensions"] = fields.get("sec-websocket-extensions")
                report["deflate"]["accept"] = fields.get("sec-websocket-accept")
                queue(DEFLATE, compressed_frame(TEXT))
            if ev.stream_id == RESET:
                conn.reset_stream(RESET)
        elif isinstance(ev, h2.events.DataReceived):
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.stream_id in SESSIONS:
                on_ws_data(ev.stream_id, ev.data)
            elif ev.stream_id == GET:
                report["body"] += ev.data.decode()
            elif ev.stream_id == DEFLATE and "echo_ok" not in report["deflate"]:
                on_deflate_data(ev.data)
        elif isinstance(ev, h2.events.WindowUpdated):
            pump()
        elif isinstance(ev, h2.events.StreamEnded):
            report["ended"].append(ev.stream_id)
            if ev.stream_id in SESSIONS:
                conn.end_stream(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            report["reset_by_server"].append(ev.stream_id)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            report["terminated"] = ev.error_code
conn.close_connection()
sock.sendall(conn.data_to_send())
print(json.dumps(report, sort_keys=True))
