#!/usr/bin/env bash
# bench/busy_poll.sh [ROUNDS] [SECS]: what `busy_poll_us` (Config::busy_poll) buys, side by side with the peers in
# one run. Scenarios: one connection in ping-pong (the loop sleeps between messages: the case busy-polling is
# for), 10 connections of 1 KiB and 100 of 20 B (the loop is nearly always busy). Servers pinned to core 0, the
# load to core 1, servers interleaved per round. Per cell the median over ROUNDS of msgs/s, round-trip p50 and
# p99 (µs), and the server's CPU in % of its core (a spinning loop takes its whole core: that is the price).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5} secs=${2:-4}
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench --bin load --bin raw_echo --bin peer_fastwebsockets --bin peer_tokio_websockets
source bench/servers.sh
tck=$(getconf CLK_TCK)
out=target/bench/busy_poll.txt
interleave "$out" "$rounds" "$secs" "1x20 10x1024 100x20" \
  "raw-mio wskit wskit-busy-poll fastwebsockets tokio-websockets" --latency
python3 - "$out" "$secs" "$tck" <<'PY'
import sys
sys.path.insert(0, "bench")
from interleaved import table
secs, tck = float(sys.argv[2]), float(sys.argv[3])
table(sys.argv[1], "wskit", "× wskit", [
    ("round trip p50 / p99 (µs)", "{:.0f} / {:.0f}", lambda r: (r["p50_us"], r["p99_us"])),
    # Warm-up included in the span.
    ("server CPU", "{:.0f} %", lambda r: r["cpu_ticks"] / tck / (secs + 1) * 100),
])
PY
