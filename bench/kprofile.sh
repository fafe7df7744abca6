#!/usr/bin/env bash
# bench/kprofile.sh [CONNS] [SIZE] [SERVER...]: where a server's CPU goes, the kernel's part included, by sampling
# (`perf record -e cpu-clock`, a software clock, so it works in VMs without hardware counters). callgrind
# (profile.sh) counts user-space instructions only; at 16 KiB most of an echo server's CPU is the kernel's, and
# this shows which of it.
# Each server is pinned to core 0 and the load to core 1, as in run.sh; the middle of a load run is sampled.
# Prints, per server: the user-space and kernel shares of its samples, and the largest symbols of each.
# Servers: wskit raw-mio fastwebsockets tokio-tungstenite tokio-websockets sockudo-ws (default: wskit raw-mio).
# Samples land in target/bench/perf.SERVER.data; e.g. `perf report -i target/bench/perf.wskit.data`.
# Needs perf (linux-perf) and kernel.perf_event_paranoid <= 1, or root, to see kernel symbols.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-200} size=${2:-16384}
shift $(($# < 2 ? $# : 2))
names=("$@")
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench
mkdir -p target/bench
source bench/servers.sh
((${#names[@]})) || names=(wskit raw-mio)
port=$((20000 + RANDOM % 8000))
for name in "${names[@]}"; do
  port=$((port + 1)); addr=127.0.0.1:$port
  data=target/bench/perf.$name.data
  # shellcheck disable=SC2086
  taskset -c 0 ${servers[$name]//ADDR/$addr} > /dev/null 2>&1 &
  pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  taskset -c 1 target/release/load --addr "$addr" --conns "$conns" --size "$size" --secs 8 --warmup 1 > "$data.load" &
  load=$!
  sleep 2
  perf record -q -e cpu-clock -F 4999 -p "$pid" -o "$data" -- sleep 5 2> /dev/null
  wait "$load"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "== $name ($conns x $size B): $(grep -o 'msgs_per_s=[0-9]*' "$data.load")"
  # One line per symbol: "share% [k] name" (kernel) or "share% [.] name" (user space).
  perf report -i "$data" --no-children --sort sym --stdio -g none 2> /dev/null | grep -E '^ +[0-9.]+%' |
    python3 -c '
import sys
rows = []
for line in sys.stdin:
    share, kind, sym = line.split(None, 2)
    rows.append((float(share.rstrip("%")), kind, sym.strip()))
user = sum(s for s, k, _ in rows if k == "[.]")
kern = sum(s for s, k, _ in rows if k == "[k]")
print(f"   user space {user:5.1f} %   kernel {kern:5.1f} %")
for kind, title in (("[.]", "user space"), ("[k]", "kernel")):
    top = [r for r in rows if r[1] == kind][:8]
    print(f"   {title}: " + ", ".join(f"{sym} {s:.1f}" for s, _, sym in top))
'
done
