#!/usr/bin/env bash
# notify load run through the local stack (handlers in-process) on loopback:
# the server on core 0 with one tokio worker, wrk -t1 -c16 on core 1.
# Reports requests/s and p99 for validation echoes and for 10-notification POSTs (moto behind,
# started by the local stack on the server's core), and the server's RSS at rest and after load.
# Usage: make load   (needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT=${LOAD_PORT:-3300}
DURATION=${LOAD_DURATION:-15s}
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 1; }
[ -n "${LOAD_SKIP_BUILD:-}" ] || cargo build --release -p local-stack >&2
tmp=$(mktemp -d)
python3 dev/load/make_body.py > "$tmp/notifications.json"

TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 ./target/release/local-stack \
  --port "$PORT" --graph-sim-port $((PORT + 1)) --moto-port $((PORT + 2)) --stack load --no-demo > "$tmp/stack.out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 1 100); do grep -q "ready on" "$tmp/stack.out" && break; sleep 0.2; done
grep -q "ready on" "$tmp/stack.out" || { cat "$tmp/stack.out" >&2; exit 1; }
rss() { awk '/VmRSS/ {print $2 " kB"}' /proc/$pid/status; }
echo "RSS at rest: $(rss)"

token='Validation%3a+Testing+client+application+reachability+for+subscription+Request-Id%3a+5731e5c5-6b0d-4b9c-8a44-2f1e0d9c8b7a'
echo "== validation echoes (POST /notifications?validationToken=...) for $DURATION"
WRK_BODY= taskset -c 1 wrk -t1 -c16 -d"$DURATION" --latency -s dev/load/post.lua "http://127.0.0.1:$PORT/notifications?validationToken=$token" \
  | grep -E "Requests/sec|requests in|99%|Non-2xx|Socket errors"
echo "RSS after validation run: $(rss)"

echo "== 10-notification POSTs, SQS (moto) behind, for $DURATION"
WRK_BODY="$tmp/notifications.json" taskset -c 1 wrk -t1 -c16 -d"$DURATION" --latency -s dev/load/post.lua "http://127.0.0.1:$PORT/notifications" \
  | grep -E "Requests/sec|requests in|99%|Non-2xx|Socket errors"
echo "RSS after both runs: $(rss)"
