#!/usr/bin/env bash
# bench/run.sh [REPS] [SECS]: echo throughput of wskit against the raw mio echo (the ceiling) and the Rust peers
# (fastwebsockets, tokio-tungstenite, each on a current-thread tokio runtime), side by side in one run. Servers are pinned to core 0 and the load client to core 1; scenarios and servers are interleaved so
# machine noise hits all alike; each cell is the median of REPS runs. Reports msgs/s and server CPU µs per
# message (from /proc/PID/stat). Also measures wskit over wss (--tls).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3} secs=${2:-3}
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench
tck=$(getconf CLK_TCK)
declare -A servers=(
  [wskit]="target/release/examples/echo --no-deflate --addr"
  [wskit-wss]="target/release/examples/echo --no-deflate --pem tests/data/localhost.pem --addr"
  [raw-mio]="target/release/raw_echo"
  [fastwebsockets]="target/release/peer_fastwebsockets"
  [tokio-tungstenite]="target/release/peer_tungstenite"
)
scenarios=("100 20" "10 1024" "200 16384")
out=$(mktemp)
port=9300
for rep in $(seq "$reps"); do
  for sc in "${scenarios[@]}"; do
    set -- $sc; conns=$1 size=$2
    for name in raw-mio wskit fastwebsockets tokio-tungstenite wskit-wss; do
      port=$((port + 1))
      taskset -c 0 ${servers[$name]} 127.0.0.1:$port > /dev/null 2>&1 &
      pid=$!
      sleep 0.3
      tls=(); [[ $name == *wss ]] && tls=(--tls --ca tests/data/localhost-cert.pem)
      before=$(awk '{print $14+$15}' /proc/$pid/stat)
      line=$(taskset -c 1 target/release/load --addr 127.0.0.1:$port --conns "$conns" --size "$size" --secs "$secs" --warmup 1 "${tls[@]}")
      after=$(awk '{print $14+$15}' /proc/$pid/stat)
      kill $pid; wait $pid 2>/dev/null || true
      rate=$(sed 's/.*msgs_per_s=\([0-9]*\).*/\1/' <<<"$line")
      msgs=$(sed 's/.* msgs=\([0-9]*\) .*/\1/' <<<"$line")
      # CPU covers the warm-up second too; messages are counted after it: scale to the same span.
      cpu_us=$(python3 -c "print(f'{($after-$before)/$tck*1e6/max($msgs,1)*$secs/($secs+1):.2f}')")
      echo "$name $conns $size $rate $cpu_us" >> "$out"
      printf '%-10s %4s x %-6s rep %s: %8s msgs/s  %6s µs CPU/msg\n' "$name" "$conns" "$size" "$rep" "$rate" "$cpu_us" >&2
    done
  done
done
python3 - "$out" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, c, s, rate, cpu = line.split()
    rows[(c, s, name)].append((int(rate), float(cpu)))
print("| scenario | server | msgs/s (median) | vs raw mio | server CPU µs/msg (median) |")
print("|---|---|---:|---:|---:|")
for c, s in [("100", "20"), ("10", "1024"), ("200", "16384")]:
    raw = statistics.median(r for r, _ in rows[(c, s, "raw-mio")])
    for name in ("raw-mio", "wskit", "fastwebsockets", "tokio-tungstenite", "wskit-wss"):
        v = rows[(c, s, name)]
        rate = statistics.median(r for r, _ in v); cpu = statistics.median(x for _, x in v)
        print(f"| {c} × {s} B | {name} | {rate:,.0f} | {rate/raw:.2f}× | {cpu:.2f} |")
PY
rm -f "$out"
