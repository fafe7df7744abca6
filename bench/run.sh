#!/usr/bin/env bash
# bench/run.sh [REPS] [SECS] [--smoke]: wskit side by side with the Rust peers (fastwebsockets, tokio-tungstenite,
# tokio-websockets, sockudo-ws, each on a current-thread tokio runtime with TCP_NODELAY) and a raw mio echo that
# validates nothing (the ceiling), in one run on this machine.
#
# - Echo throughput: N connections, one message in flight each (bench/src/bin/load.rs). Servers pinned to core 0,
#   the load to core 1; scenarios and servers interleaved so machine noise hits all alike; each cell the median of
#   REPS runs: msgs/s, server CPU µs per message and its user-space part (/proc/PID/stat); round-trip p99 over
#   all REPS runs pooled; ratios to the raw echo and the best peer as medians of per-repetition ratios.
# - permessage-deflate (wskit's default, its context kept in its own compressor with a 15-bit window; without
#   context takeover; with it in zlib-rs; vs sockudo-ws with it; the wire ratio achieved)
#   and wss (wskit vs tokio-tungstenite on tokio-rustls).
# - System calls per message (strace -f on a shorter run, over the load's measured span), bytes per idle
#   connection (ΔRSS over IDLE connections, and over their second half alone: what one more costs), and a new
#   client's echo latency while they are held.
# Writes target/bench/results.csv, target/bench/summary.md and target/bench/results.svg (msgs/s as a ratio of the
# raw echo, and CPU µs per message). `--smoke` runs every part for a fraction of a second (CI checks the harness).
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0
pos=()
for a in "$@"; do
  if [[ $a == --smoke ]]; then smoke=1; else pos+=("$a"); fi
done
reps=${pos[0]:-3} secs=${pos[1]:-3} warm=1 idle_n=${IDLE:-10000}
if ((smoke)); then reps=1 secs=0.3 warm=0.2 idle_n=200; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench
out=target/bench; mkdir -p "$out"
csv=$out/results.csv
echo "scenario,server,rep,msgs_per_s,cpu_us_per_msg,p99_us,wire_ratio,syscalls_per_msg,bytes_per_idle,user_us_per_msg,bytes_per_idle_marginal" > "$csv"
# Round-trip histograms, every repetition of a cell appended to one file (report.py pools them for p99).
rm -rf "$out/hist"; mkdir -p "$out/hist"
tck=$(getconf CLK_TCK)
source bench/servers.sh
# scenario = "conns size kind"; kind: plain, deflate or wss (with the servers run for it).
scenarios=("100 20 plain" "10 1024 plain" "200 16384 plain" "1000 100 plain" "10 1048576 plain"
  "100 1024 deflate" "10 16384 deflate" "100 20 wss" "200 16384 wss")
if ((smoke)); then scenarios=("100 20 plain" "10 1048576 plain" "100 1024 deflate" "100 20 wss"); fi
servers_for() {
  case $1 in
    plain) echo "${plain[@]}" ;;
    deflate) echo "wskit-deflate wskit-deflate-reset wskit-deflate-ctx sockudo-ws-deflate tokio-websockets" ;;
    wss) echo "wskit-wss tokio-tungstenite-wss" ;;
  esac
}
# Listen ports below the kernel's ephemeral range (32768 on), where the load's own client sockets live.
port=$((20000 + RANDOM % 8000))
start_server() { # name -> sets $pid, $addr
  local try
  for try in 1 2 3; do
    port=$((port + 1)); addr=127.0.0.1:$port
    # shellcheck disable=SC2086
    taskset -c 0 ${servers[$1]//ADDR/$addr} > /dev/null 2>&1 &
    pid=$!
    for _ in $(seq 50); do
      if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
        # Listening, and still alive (a server that lost its port to another socket exits): use it.
        sleep 0.05
        kill -0 "$pid" 2>/dev/null && return
        break
      fi
      sleep 0.05
    done
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
    echo "server $1 did not start on $addr (try $try)" >&2
  done
  exit 1
}
stop_server() { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<" $2"; }
# Clock ticks (the expression $1) per echoed message in µs. CPU covers the warm-up too and messages ($msgs) are
# counted after it: scaled to the same span.
per_msg() { python3 -c "print(f'{($1)/$tck*1e6/max($msgs,1)*$secs/($secs+$warm):.2f}')"; }

for rep in $(seq "$reps"); do
  for sc in "${scenarios[@]}"; do
    read -r conns size kind <<<"$sc"
    for name in $(servers_for "$kind"); do
      start_server "$name"
      extra=(--latency --hist "$out/hist/${conns}x$size-$kind.$name.txt")
      [[ $kind == wss ]] && extra+=(--tls --ca tests/data/localhost-cert.pem)
      [[ $kind == deflate ]] && extra+=(--deflate)
      read -r user0 sys0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      line=$(taskset -c 1 target/release/load --addr "$addr" --conns "$conns" --size "$size" --secs "$secs" --warmup "$warm" "${extra[@]}")
      read -r user1 sys1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
      stop_server
      rate=$(field msgs_per_s "$line") msgs=$(field msgs "$line") p99=$(field p99_us "$line")
      ratio=$(field wire_ratio "$line"); ratio=${ratio:-1}
      # User-space CPU apart: the rest is the kernel's (system calls, loopback TCP), which no server's own code
      # can avoid.
      cpu=$(per_msg "$user1 + $sys1 - $user0 - $sys0") user=$(per_msg "$user1 - $user0")
      echo "$conns x $size $kind,$name,$rep,$rate,$cpu,$p99,$ratio,,,$user," >> "$csv"
      printf '%-22s %5s x %-8s %-7s rep %s: %8s msgs/s %7s µs CPU/msg  p99 %6s µs  wire %s\n' \
        "$name" "$conns" "$size" "$kind" "$rep" "$rate" "$cpu" "$p99" "$ratio" >&2
    done
  done
done

# System calls per echoed message at 100 × 20 B (strace slows the server; the ratio is what counts): every call
# of the server traced with its wall-clock time, and only those inside the load's measured span counted (it
# prints the span), so that the 100 connections' set-up (accept, registration, socket options, handshake) is left
# out as the load leaves their handshakes out. (Counted over the whole run, set-up added 0.03-0.05 a message to
# every server when the traced server echoed only ~3,500 messages a second.)
sys_secs=2; sys_warm=0.5; ((smoke)) && sys_secs=0.3 sys_warm=0.2
for name in "${plain[@]}"; do
  start_server "$name"
  strace -f -ttt -o "$out/strace-$name.txt" -p "$pid" 2>/dev/null &
  spid=$!
  sleep 0.5
  line=$(taskset -c 1 target/release/load --addr "$addr" --conns 100 --size 20 --secs "$sys_secs" --warmup "$sys_warm")
  kill -INT "$spid"; wait "$spid" 2>/dev/null || true
  stop_server
  msgs=$(field msgs "$line")
  # A call split by another thread's is counted once, at its start (its "resumed" half is not a new call).
  calls=$(python3 - "$out/strace-$name.txt" "$(field from_unix "$line")" "$(field to_unix "$line")" <<'PY'
import re, sys
path, lo, hi = sys.argv[1], float(sys.argv[2] or 0), float(sys.argv[3] or 0)
n = 0
for line in open(path, errors="replace"):
    m = re.match(r"(?:\d+ +)?(\d+\.\d+) (\w+)\(", line)
    if m and lo <= float(m.group(1)) < hi:
        n += 1
print(n)
PY
)
  per=$(python3 -c "print(f'{${calls:-0}/max(${msgs:-0},1):.2f}')")
  echo "syscalls 100 x 20,$name,1,,,,,$per,,," >> "$csv"
  printf '%-22s syscalls per message: %s (%s calls, %s msgs)\n' "$name" "$per" "${calls:-0}" "${msgs:-0}" >&2
done

# Bytes per idle connection and a new client's echo latency while they are held.
for name in "${plain[@]}"; do
  start_server "$name"
  sleep 0.2
  line=$(taskset -c 1 target/release/load --addr "$addr" --idle "$idle_n" --server-pid "$pid")
  stop_server
  echo "idle $idle_n,$name,1,,,$(field new_p99_us "$line"),,,$(field bytes_per_idle "$line"),,$(field \
    bytes_per_idle_marginal "$line")" >> "$csv"
  printf '%-22s idle: %s B per connection over %s (%s B each past the first half); new client p50/p99/max %s/%s/%s µs\n' \
    "$name" "$(field bytes_per_idle "$line")" "$idle_n" "$(field bytes_per_idle_marginal "$line")" \
    "$(field new_p50_us "$line")" "$(field new_p99_us "$line")" \
    "$(field new_max_us "$line")" >&2
done

python3 bench/report.py "$csv" "$out/summary.md" "$out/results.svg" "$out/hist"
cat "$out/summary.md"
