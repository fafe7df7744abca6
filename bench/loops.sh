#!/usr/bin/env bash
# Echo with one loop and with two loops (a Cluster on one port, SO_REUSEPORT), unpinned, interleaved; msgs/s and
# server CPU µs per message, medians of REPS runs. On a 2-core machine the load client shares the cores, so the
# CPU per message is the figure that carries over to more cores.
#
#   bash bench/loops.sh [REPS=3] [SECS=3] [CONNS=100] [SIZE=20]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-3} secs=${2:-3} conns=${3:-100} size=${4:-20}
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench --bin load
tck=$(getconf CLK_TCK)
out=$(mktemp)
port=9400
for rep in $(seq "$reps"); do
  for loops in 1 2; do
    port=$((port + 1))
    target/release/examples/echo --no-deflate --loops "$loops" --addr 127.0.0.1:$port >/dev/null 2>&1 &
    pid=$!
    sleep 0.3
    before=$(awk '{print $14+$15}' /proc/$pid/stat)
    line=$(target/release/load --addr 127.0.0.1:$port --conns "$conns" --size "$size" --secs "$secs" --warmup 1)
    after=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null || true
    rate=$(sed 's/.*msgs_per_s=\([0-9]*\).*/\1/' <<<"$line")
    msgs=$(sed 's/.* msgs=\([0-9]*\) .*/\1/' <<<"$line")
    cpu_us=$(python3 -c "print(f'{($after-$before)/$tck*1e6/max($msgs,1)*$secs/($secs+1):.2f}')")
    echo "$loops $rate $cpu_us" >> "$out"
    printf 'loops=%s rep %s: %8s msgs/s %6s µs CPU/msg\n' "$loops" "$rep" "$rate" "$cpu_us" >&2
  done
done
python3 - "$out" "$conns" "$size" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    loops, rate, cpu = line.split()
    rows[loops].append((int(rate), float(cpu)))
print(f"| loops | msgs/s ({sys.argv[2]} × {sys.argv[3]} B, median) | server CPU µs/msg (median) |")
print("|---:|---:|---:|")
for loops in ("1", "2"):
    v = rows[loops]
    print(f"| {loops} | {statistics.median(r for r, _ in v):,.0f} | {statistics.median(c for _, c in v):.2f} |")
PY
rm -f "$out"
