#!/usr/bin/env bash
# bench/h2.sh [REPS] [SECS]: echo over HTTP/2 (RFC 8441) against echo over HTTP/1.1, both on TLS, on one wskit
# echo server (`--set http2=true`, compression off) pinned to core 0, the load on core 1.
#
# - HTTP/1.1: `load --tls`, N connections (ALPN http/1.1), one message in flight each.
# - HTTP/2: `load_h2 --tls`, one connection (ALPN h2) carrying N WebSocket sessions, one message in flight each.
# The two alternate REPS times per scenario (machine noise hits both alike); each cell is the median, with the
# server's CPU µs per message (/proc/PID/stat). Prints a markdown table (docs/benchmarks.md keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=${1:-5} secs=${2:-3} warm=1
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench
tck=$(getconf CLK_TCK)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
addr=127.0.0.1:$port
taskset -c 0 target/release/examples/echo --no-deflate --pem tests/data/localhost.pem \
  --set http2=true --set max_connections_per_ip=0 --addr "$addr" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<" $2"; }
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
scenarios=("1 20" "100 20" "100 1024" "100 16384")
declare -A rate cpu
for rep in $(seq "$reps"); do
  for sc in "${scenarios[@]}"; do
    read -r conns size <<<"$sc"
    for proto in h1 h2; do
      bin=target/release/load
      [[ $proto == h2 ]] && bin=target/release/load_h2
      t0=$(ticks)
      line=$(taskset -c 1 "$bin" --addr "$addr" --conns "$conns" --size "$size" --secs "$secs" --warmup "$warm" \
        --tls --ca tests/data/localhost-cert.pem)
      t1=$(ticks)
      r=$(field msgs_per_s "$line")
      c=$(python3 -c "print(f'{($t1-$t0)/$tck*1e6/max($r*$secs,1)*$secs/($secs+$warm):.2f}')")
      rate[$sc,$proto]+="$r " cpu[$sc,$proto]+="$c "
      printf '%-4s %4s x %-6s rep %s: %8s msgs/s %7s µs CPU/msg\n' "$proto" "$conns" "$size" "$rep" "$r" "$c" >&2
    done
  done
done
echo "| sessions × size | HTTP/1.1 msgs/s (connections) | HTTP/2 msgs/s (one connection) | HTTP/2 ÷ HTTP/1.1 | CPU µs/msg h1 | CPU µs/msg h2 |"
echo "|---|---:|---:|---:|---:|---:|"
for sc in "${scenarios[@]}"; do
  read -r conns size <<<"$sc"
  h1=$(tr ' ' '\n' <<<"${rate[$sc,h1]}" | grep . | median)
  h2=$(tr ' ' '\n' <<<"${rate[$sc,h2]}" | grep . | median)
  c1=$(tr ' ' '\n' <<<"${cpu[$sc,h1]}" | grep . | median)
  c2=$(tr ' ' '\n' <<<"${cpu[$sc,h2]}" | grep . | median)
  ratio=$(python3 -c "print(f'{$h2/$h1:.2f}')")
  echo "| $conns × $size B | $h1 | $h2 | ${ratio}× | $c1 | $c2 |"
done
