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
  [wskit-deflate-ctx]="target/release/examples/echo --max-payload $big --set deflate_server_no_context_takeover=false --set max_connections_per_ip=0 --addr ADDR"
  [sockudo-ws-deflate]="target/release/peer_sockudo ADDR --deflate"
  [wskit-wss]="target/release/examples/echo --no-deflate --pem tests/data/localhost.pem --set max_connections_per_ip=0 --addr ADDR"
  [tokio-tungstenite-wss]="target/release/peer_tungstenite ADDR --pem tests/data/localhost.pem"
)
# shellcheck disable=SC2034  # used by the scripts that source this file
plain=(raw-mio wskit fastwebsockets tokio-tungstenite tokio-websockets sockudo-ws)
