#!/usr/bin/env bash
# bench/profile.sh [CONNS] [SIZE] [SERVER...]: instructions per echoed message under callgrind (valgrind), a figure
# that does not move with the machine's noise, and a profile per server to read with callgrind_annotate.
# Each server runs under `valgrind --tool=callgrind`; a first load warms it up, the counters are zeroed
# (`callgrind_control -z`), a second load is counted, and the counters are dumped (`callgrind_control -d`).
# Servers: wskit raw-mio fastwebsockets tokio-tungstenite tokio-websockets sockudo-ws (default: all).
# Profiles land in target/bench/callgrind.out.SERVER.*; e.g. `callgrind_annotate target/bench/callgrind.out.wskit.*`.
set -euo pipefail
cd "$(dirname "$0")/.."
conns=${1:-100} size=${2:-20}
shift $(($# < 2 ? $# : 2))
names=("$@")
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench
mkdir -p target/bench
source bench/servers.sh
((${#names[@]})) || names=("${plain[@]}")
port=$((20000 + RANDOM % 20000))
for name in "${names[@]}"; do
  port=$((port + 1)); addr=127.0.0.1:$port
  rm -f target/bench/callgrind.out."$name".*
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --callgrind-out-file="target/bench/callgrind.out.$name.%p" \
    ${servers[$name]//ADDR/$addr} > /dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  target/release/load --addr "$addr" --conns "$conns" --size "$size" --secs 2 --warmup 0 > /dev/null
  callgrind_control -z "$pid" > /dev/null
  line=$(target/release/load --addr "$addr" --conns "$conns" --size "$size" --secs 5 --warmup 0)
  callgrind_control -d "$pid" > /dev/null
  sleep 0.5
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  msgs=$(sed -n 's/.* msgs=\([0-9]*\).*/\1/p' <<<"$line")
  # The dump asked for holds the counted part (callgrind numbers it .1); its `summary:` line is the instruction
  # total (Ir).
  dump=$(ls target/bench/callgrind.out."$name".*.1 | head -1)
  ir=$(awk '/^summary:/ {print $2}' "$dump")
  python3 -c "print(f'$name: {$ir/max($msgs,1):,.0f} instructions per echoed message ({$msgs} messages, $conns x $size B)')"
done
