#!/usr/bin/env bash
# Starts the controller on the demo tenant workflow, creates a cluster through the API, waits
# until it is ready, prints its NameServer address, deletes it, and stops the controller.
# Needs cargo, terraform (>= 1.4) and curl; works offline.
#   scripts/serve-demo.sh [ROOT]      (ROOT defaults to ./serve-demo-pvc)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-serve-demo-pvc}
port=${BOOTSTRAPPER_DEMO_PORT:-18080}
cargo build --locked --quiet
mkdir -p "$root"
tokens="$root/tokens" && token="demo-$(date +%s%N)"
(umask 077 && echo "$token" > "$tokens")
target/debug/bootstrapper serve --listen "127.0.0.1:$port" --workflow workflows/tenant-demo.toml \
  --root "$root" --tokens "$tokens" 2> "$root/serve.log" &
serve=$!
trap 'kill -TERM $serve 2>/dev/null; wait $serve 2>/dev/null || true' EXIT
api() { curl -sS -H "Authorization: Bearer $token" "$@"; }
phase() { api "http://127.0.0.1:$port/v1/clusters/demo-1" | grep -o '"phase":"[a-z]*"' | cut -d'"' -f4; }
wait_for() {
  for _ in $(seq 600); do
    [ "$(phase)" = "$1" ] && return 0
    [ "$(phase)" = failed ] && { api "http://127.0.0.1:$port/v1/clusters/demo-1/log"; exit 1; }
    sleep 0.2
  done
  echo "demo-1 never became $1" >&2; exit 1
}
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done

api -X PUT "http://127.0.0.1:$port/v1/clusters/demo-1" -d '{"params": {"broker_count": 2}}' >/dev/null
echo "created demo-1; waiting for it to be ready"
wait_for ready
address=$(api "http://127.0.0.1:$port/v1/clusters/demo-1" | grep -o '"address":"[^"]*"' | cut -d'"' -f4)
echo "demo-1 is ready: its NameServer is at $address"
api -X DELETE "http://127.0.0.1:$port/v1/clusters/demo-1" >/dev/null
wait_for destroyed
echo "demo-1 destroyed; the controller's log is in $root/serve.log"
