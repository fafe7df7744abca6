#!/usr/bin/env bash
# bench/deflate_small.sh [ROUNDS] [SECS]: the three ways a wskit server can compress, side by side with sockudo-ws
# on the harness's deflate workloads (`load --deflate`: JSON-like texts, 64 in turn, the client without context
# takeover; then the chat pages of 64 KiB, `--text pages`). wskit: the default (its own compressor, context kept per connection, 15-bit window: 120 KiB), the
# same at 12 bits (21 KiB, `deflate_dedicated_window_bits`), zlib-rs with its context kept per connection (380 KB
# each), and the context reset per message (a pooled zlib-rs compressor, `deflate_server_no_context_takeover`). Servers pinned to core 0, the load to core 1, interleaved per round. Per cell
# the median over ROUNDS of msgs/s, the answers' wire bytes per payload byte, and the server's CPU per message.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} secs=${2:-3}
cargo build -q --release --example echo
cargo build -q --release -p wskit-bench --bin load --bin peer_sockudo
source bench/servers.sh
tck=$(getconf CLK_TCK)
out=target/bench/deflate_small.txt pages=target/bench/deflate_pages.txt
interleave "$out" "$rounds" "$secs" "100x1024 10x16384" \
  "wskit-deflate wskit-deflate-small12 wskit-deflate-ctx wskit-deflate-reset sockudo-ws-deflate" --deflate
# Long text: deflate_curve's chat pages of 64 KiB (`load --text pages`).
interleave "$pages" "$rounds" "$secs" "10x65536" "wskit-deflate wskit-deflate-reset sockudo-ws-deflate" \
  --deflate --text pages
for f in "$out" "$pages"; do
python3 - "$f" "$secs" "$tck" <<'PY'
import sys
sys.path.insert(0, "bench")
from interleaved import table
secs, tck = float(sys.argv[2]), float(sys.argv[3])
table(sys.argv[1], "sockudo-ws-deflate", "× sockudo-ws", [
    ("wire / payload", "{:.4f}", lambda r: r["wire_ratio"]),
    # The CPU span includes the warm-up second, taken at the measured rate.
    ("server CPU per message (µs)", "{:.1f}", lambda r: r["cpu_ticks"] / tck / (r["msgs_per_s"] * (secs + 1)) * 1e6),
])
PY
done
