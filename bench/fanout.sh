#!/usr/bin/env bash
# Fan-out side by side: one publisher to N subscribers of one topic through examples/broadcast, as
#   (a) one node, one loop; (b) one node, two loops (SO_REUSEPORT); (c) two nodes bridged by a local Redis.
# Prints, per setup, deliveries/s, the share delivered, publish-to-receive latency (p50/p99/p99.9, µs) and the
# servers' CPU time per delivery (all server processes together, from /proc/PID/stat).
#
#   bash bench/fanout.sh [SUBS=10000] [RATE=50] [SECS=10]
#
# Needs redis-server. On a 2-core machine the load generator shares the cores with the servers.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${1:-10000} RATE=${2:-50} SECS=${3:-10}
ulimit -n "$(ulimit -Hn)"
cargo build -q --release --example broadcast
cargo build -q --release -p wskit-bench --bin fanout
BC=target/release/examples/broadcast FAN=target/release/fanout
TICK=$(getconf CLK_TCK)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

RPORT=$(port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
RPID=$!
PIDS=()
cleanup() { kill "${PIDS[@]}" "$RPID" 2>/dev/null || true; }
trap cleanup EXIT
sleep 0.5

run() { # name, then one "PORT ARGS..." per node
  local name=$1; shift
  local addrs=() pids=()
  for spec in "$@"; do
    local p; p=$(port)
    # shellcheck disable=SC2086
    # (Every subscriber connects from 127.0.0.1: no per-address limit.)
    $BC --addr "127.0.0.1:$p" --set max_connections_per_ip=0 $spec >/dev/null 2>&1 &
    pids+=($!); addrs+=("127.0.0.1:$p")
  done
  PIDS=("${pids[@]}")
  sleep 0.5
  local before; before=$(cpu_ticks "${pids[@]}")
  local out; out=$($FAN --addrs "$(IFS=,; echo "${addrs[*]}")" --subs "$SUBS" --rate "$RATE" --secs "$SECS" --size 64)
  local after; after=$(cpu_ticks "${pids[@]}")
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  local deliveries; deliveries=$(sed -E 's/.*deliveries_per_s=([0-9]+).*/\1/' <<<"$out")
  local cpu_us_per; cpu_us_per=$(python3 -c "print(f'{($after-$before)/$TICK*1e6/max(1,$deliveries*$SECS):.2f}')")
  echo "$name $out server_cpu_us_per_delivery=$cpu_us_per"
}

run "one-node-one-loop" "--no-deflate"
run "one-node-two-loops" "--no-deflate --loops 2"
run "two-nodes-redis" "--no-deflate --redis redis://127.0.0.1:$RPORT" "--no-deflate --redis redis://127.0.0.1:$RPORT"
