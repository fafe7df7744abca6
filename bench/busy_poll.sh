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
import sys, re, statistics as st, collections
secs, tck = float(sys.argv[2]), float(sys.argv[3])
cells = collections.defaultdict(lambda: collections.defaultdict(list))
for l in open(sys.argv[1]):
    sc, name, rnd, rest = l.strip().split(',', 3)
    f = dict(re.findall(r'(\w+)=([\d.]+)', rest))
    cpu = float(f['cpu_ticks']) / tck / (secs + 1) * 100  # warm-up included in the span
    cells[sc][name].append((float(f['msgs_per_s']), float(f['p50_us']), float(f['p99_us']), cpu))
print('| scenario | server | msgs/s | × wskit | round trip p50 / p99 (µs) | server CPU |')
print('|---|---|---|---|---|---|')
for sc, by in cells.items():
    base = st.median(r[0] for r in by['wskit'])
    for name, rs in by.items():
        m = [st.median(r[i] for r in rs) for i in range(4)]
        print(f'| {sc} | {name} | {m[0]:,.0f} | {m[0] / base:.2f} | {m[1]:.0f} / {m[2]:.0f} | {m[3]:.0f} % |')
PY
