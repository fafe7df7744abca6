"""Edge cases of WebSockets over HTTP/2 (RFC 8441) against tests/http2.rs's `Cases` handler, with Python's `h2`
on a real socket (h2c by prior knowledge). argv: HOST:PORT CASE. Prints one JSON line. (tests/py/ws_frames.py is
prepended: `frame`, `parse`.)

- `mixed`: on one connection, a refused upgrade (403 as a response), a deferred one (accepted from another
  thread), a session the server closes (4000), one whose handler panics (1011), and one that pauses reading:
  the client's window for it runs out (no WINDOW_UPDATE while paused) and its 300 KB message is echoed only after
  the server resumes.
- `garbage`: two sessions, then a frame that breaks HTTP/2 (SETTINGS on a stream): GOAWAY PROTOCOL_ERROR.
- `drop`: two sessions, then the client's TCP connection closes without a word.
- `fin`: one session pauses; meanwhile its client sends two messages and its close, ending the stream with them:
  all of it reaches the handler after the resume (the END_STREAM waits behind the stashed input), then
  END_STREAM.
- `zero_update`: two sessions, then a WINDOW_UPDATE of 0 on the first (a stream error): that stream is reset and
  its session ends; the other goes on.
- `shutdown`: two sessions; once both are open it prints `ready` and waits for the server's graceful shutdown:
  each session's close (answered), its END_STREAM, the GOAWAY, then the end of the connection.
- `silent_shutdown`: the same, but the client never answers the closes: the grace period runs out."""
import json, os, socket, struct, sys, time
import h2.config, h2.connection, h2.events, h2.exceptions

host, port = sys.argv[1].rsplit(":", 1)
case = sys.argv[2]
sock = socket.create_connection((host, int(port)), timeout=10)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
report = {"status": {}, "messages": {}, "closed": {}, "ended": [], "min_window": {}}
rx, outbox, t0 = {}, {}, time.monotonic()



def open_ws(stream, path):
    conn.send_headers(stream, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", path),
                               (":authority", "localhost"), ("sec-websocket-version", "13")])
    rx[stream] = b""


def send(stream, data):
    outbox[stream] = outbox.get(stream, b"") + data
    pump()


def pump():
    for s in list(outbox):
        data = outbox[s]
        while data:
            try:
                room = min(conn.local_flow_control_window(s), conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                data = b""
                break
            report["min_window"][str(s)] = min(room, report["min_window"].get(str(s), room))
            if room <= 0:
                break
            conn.send_data(s, data[:room])
            data = data[room:]
        outbox[s] = data
        if not data:
            del outbox[s]


def on_message(stream, op, payload):
    if op == 8:
        report["closed"][str(stream)] = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
        if case not in ("fin", "silent_shutdown"):  # (over already, or not answering on purpose)
            send(stream, frame(8, payload[:2]))  # the close handshake's answer
        return
    report["messages"].setdefault(str(stream), []).append(
        payload.decode() if len(payload) < 100 else f"{len(payload)} bytes at {time.monotonic() - t0:.2f}")
    if case == "fin" and payload == b"pausing":
        # While it is paused: two messages and the close, and the end of the stream with them.
        data = frame(1, b"a") + frame(1, b"b") + frame(8, struct.pack("!H", 1000))
        conn.send_data(stream, data, end_stream=True)
    if case == "mixed" and stream == 9 and payload == b"paused":
        report["paused_at"] = round(time.monotonic() - t0, 2)


def on_response(stream, status):
    report["status"][str(stream)] = status
    if case == "fin":
        conn.send_data(stream, frame(1, b"pause"))
        return
    if case == "zero_update" and len(report["status"]) == 2:
        sock.sendall(conn.data_to_send() + struct.pack("!I", 4)[1:] + bytes([8, 0]) + struct.pack("!II", 1, 0))
        send(3, frame(1, b"still here"))
        return
    if case != "mixed" or status != 200:
        return
    if stream == 3:
        send(3, frame(1, b"deferred hello"))
    elif stream == 5:
        send(5, frame(1, b"close"))
    elif stream == 7:
        send(7, frame(1, b"panic"))
    elif stream == 9:
        send(9, frame(1, b"pause") + frame(2, bytes(300_000)))


def start():
    if case == "fin":
        open_ws(1, "/ws")
    elif case == "mixed":
        open_ws(1, "/refuse")
        open_ws(3, "/defer")
        for s in (5, 7, 9):
            open_ws(s, "/ws")
    else:
        open_ws(1, "/ws")
        open_ws(3, "/ws")


def finished():
    if case == "mixed":
        big = [m for m in report["messages"].get("9", []) if "bytes" in m]
        ended = set(report["ended"])
        return big and {"1", "5", "7"} <= ended and report["messages"].get("3")
    if case in ("shutdown", "silent_shutdown"):
        return "eof" in report
    if case == "fin":
        return "1" in report["ended"]
    if case == "zero_update":
        return report["messages"].get("3") and report.get("reset")
    return len(report["status"]) == 2


started = False
while True:
    out = conn.data_to_send()
    if out:
        sock.sendall(out)
    if started and finished():
        break
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
            start()
        elif isinstance(ev, h2.events.ResponseReceived):
            on_response(ev.stream_id, int(dict(ev.headers)[":status"]))
            if case in ("shutdown", "silent_shutdown") and len(report["status"]) == 2:
                print("ready", flush=True)
        elif isinstance(ev, h2.events.DataReceived):
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.stream_id in rx:
                rx[ev.stream_id] += ev.data
                frames, rx[ev.stream_id] = parse(rx[ev.stream_id])
                for op, payload in frames:
                    on_message(ev.stream_id, op, payload)
        elif isinstance(ev, h2.events.WindowUpdated):
            pump()
        elif isinstance(ev, h2.events.StreamEnded):
            report["ended"].append(str(ev.stream_id))
        elif isinstance(ev, h2.events.StreamReset):
            report["reset"] = [ev.stream_id, int(ev.error_code)]
        elif isinstance(ev, h2.events.ConnectionTerminated):
            report["goaway"] = ev.error_code
if case == "garbage":
    # SETTINGS on stream 1: a connection error (RFC 9113 §6.5).
    sock.sendall(struct.pack("!IBBI", 0, 4, 0, 1)[1:])
    sock.settimeout(5)
    rest = conn.receive_data(sock.recv(65536))
    report["goaway"] = next((int(e.error_code) for e in rest if isinstance(e, h2.events.ConnectionTerminated)), None)
sock.close()
print(json.dumps(report, sort_keys=True))
