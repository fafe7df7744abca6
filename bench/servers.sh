# bench/servers.sh: the servers of the harness, sourced by run.sh and profile.sh. Each command takes its listen
# address where ADDR stands. `plain` lists the ones that serve ws without compression, the set every scenario
# compares. WSKIT_BIN runs another build of the echo example as `wskit` (two builds side by side).
big=$((64 << 20))  # every server accepts 64 MiB messages (the tokio peers' default)
declare -A servers=(
  [raw-mio]="target/release/raw_echo ADDR"
  [wskit]="${WSKIT_BIN:-target/release/examples/echo} --no-deflate --max-payload $big --set max_connections_per_ip=0 --addr ADDR"
  [fastwebsockets]="target/release/peer_fastwebsockets ADDR"
  [tokio-tungstenite]="target/release/peer_tungstenite ADDR"
  [tokio-websockets]="target/release/peer_tokio_websockets ADDR"
  [sockudo-ws]="target/release/peer_sockudo ADDR"
  [wskit-busy-poll]="${WSKIT_BIN:-target/release/examples/echo} --no-deflate --max-payload $big --set max_connections_per_ip=0 --set busy_poll_us=50 --addr ADDR"
  [wskit-deflate]="target/release/examples/echo --max-payload $big --set max_connections_per_ip=0 --addr ADDR"
  [wskit-deflate-reset]="target/release/examples/echo --max-payload $big --set deflate_server_no_context_takeover=true --set max_connections_per_ip=0 --addr ADDR"
  [wskit-deflate-ctx]="target/release/examples/echo --max-payload $big --set deflate_dedicated_window_bits=0 --set max_connections_per_ip=0 --addr ADDR"
  [wskit-deflate-small12]="target/release/examples/echo --max-payload $big --set deflate_dedicated_window_bits=12 --set max_connections_per_ip=0 --addr ADDR"
  [sockudo-ws-deflate]="target/release/peer_sockudo ADDR --deflate"
  [wskit-wss]="target/release/examples/echo --no-deflate --pem tests/data/localhost.pem --set max_connections_per_ip=0 --addr ADDR"
  [tokio-tungstenite-wss]="target/release/peer_tungstenite ADDR --pem tests/data/localhost.pem"
)
# shellcheck disable=SC2034  # used by the scripts that source this file
plain=(raw-mio wskit fastwebsockets tokio-tungstenite tokio-websockets sockudo-ws)

# cell NAME CONNS SIZE SECS [LOAD ARGS…]: serves NAME on core 0 (a fresh port), runs `load` against it on core 1
# for SECS after a second of warm-up, and prints load's line with `,cpu_ticks=N` (the server's user + system
# clock ticks over the run). Used by the scripts that interleave servers per round.
cell() {
  local name=$1 conns=$2 size=$3 secs=$4 port addr pid line u0 s0 u1 s1
  shift 4
  port=$((20000 + RANDOM % 8000)); addr=127.0.0.1:$port
  # shellcheck disable=SC2086
  taskset -c 0 ${servers[$name]//ADDR/$addr} >/dev/null 2>&1 & pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  line=$(taskset -c 1 target/release/load --addr "$addr" --conns "$conns" --size "$size" --secs "$secs" --warmup 1 "$@")
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$line,cpu_ticks=$((u1 + s1 - u0 - s0))"
}

# interleave OUT ROUNDS SECS "SCENARIOS" "NAMES" [LOAD ARGS…]: for each round, each scenario (CONNSxSIZE, space
# separated) and each server in NAMES, one cell, appended to OUT (emptied first) as `CONNS x SIZE,NAME,ROUND,line`.
interleave() {
  local out=$1 rounds=$2 secs=$3 scenarios=$4 names=$5 round sc name line
  shift 5
  mkdir -p "$(dirname "$out")"; : > "$out"
  for round in $(seq "$rounds"); do
    for sc in $scenarios; do
      for name in $names; do
        line=$(cell "$name" "${sc%x*}" "${sc#*x}" "$secs" "$@")
        echo "${sc%x*} x ${sc#*x},$name,$round,$line" >> "$out"
        echo "round $round ${sc%x*} x ${sc#*x} $name: $line" >&2
      done
    done
  done
}
