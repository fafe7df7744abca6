"""An HTTP/2 client (Python's `h2`, sans-I/O) driven through pipes by tests/h2_codec.rs, against wskit's H2Conn.
Each line it reads is the server's bytes in hex (empty: none); each line it writes is JSON: the bytes to send
(hex) and what happened. It opens an extended CONNECT (RFC 8441) once the server's SETTINGS allow it, sends
DATA, expects its echo, then a plain GET, then ends with GOAWAY."""
import json, sys
import h2.config, h2.connection, h2.events, h2.settings

conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
conn.initiate_connection()
log, state = [], {"ws": None, "echo": b"", "get": None, "body": b"", "done": False}
payload = bytes(range(256)) * 300  # 76,800 bytes: more than one window's worth of frames

def send(stream, data, end_stream=False):
    # In frames the server allows (the windows here are larger than what is sent).
    size = conn.max_outbound_frame_size
    for i in range(0, len(data), size):
        last = i + size >= len(data)
        conn.send_data(stream, data[i:i + size], end_stream=end_stream and last)

def emit():
    print(json.dumps({"send": conn.data_to_send().hex(), "log": log, "done": state["done"]}), flush=True)
    log.clear()

emit()
for line in sys.stdin:
    data = bytes.fromhex(line.strip())
    for ev in conn.receive_data(data) if data else []:
        if isinstance(ev, h2.events.RemoteSettingsChanged):
            log.append("settings")
            if state["ws"] is None and conn.remote_settings.enable_connect_protocol:
                state["ws"] = 1
                conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                      (":path", "/chat"), (":authority", "localhost"),
                                      ("sec-websocket-version", "13")])
                send(1, payload[:60000])
        elif isinstance(ev, h2.events.ResponseReceived):
            status = dict(ev.headers)[":status"]
            log.append(f"response {ev.stream_id} {status}")
        elif isinstance(ev, h2.events.DataReceived):
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if ev.stream_id == 1:
                state["echo"] += ev.data
                if len(state["echo"]) == 60000:
                    send(1, payload[60000:], end_stream=True)
            else:
                state["body"] += ev.data
        elif isinstance(ev, h2.events.StreamEnded):
            log.append(f"ended {ev.stream_id}")
            if ev.stream_id == 1:
                log.append("echo ok" if state["echo"] == payload else f"echo differs ({len(state['echo'])} bytes)")
                conn.send_headers(3, [(":method", "GET"), (":scheme", "https"), (":path", "/"),
                                      (":authority", "localhost")], end_stream=True)
            if ev.stream_id == 3:
                log.append(f"body {state['body'].decode()}")
                conn.close_connection()
                state["done"] = True
        elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
            log.append(f"{type(ev).__name__} {getattr(ev, 'error_code', '')}")
    emit()
    if state["done"]:
        break
