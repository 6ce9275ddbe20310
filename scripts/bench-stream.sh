#!/usr/bin/env bash
# The engine's own streaming, as figures (never asserted by a test). Real terraform passes a
# provisioner's output on at about 1 MB/s, so it cannot measure the engine: a stand-in
# terraform prints SIZE of output on `apply`, as plain log lines and as `-json` events, and the
# engine's throughput (its log to /dev/null) is set against `cat` of the same bytes through a
# pipe (goal >= 80 %), with the engine's peak RSS (goal <= 16 MB; VmHWM sampled from /proc,
# the engine alone).
# Usage: scripts/bench-stream.sh [MIB]   (default 1024).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
cargo build --release --locked --quiet
bin=$PWD/target/release/bootstrapper
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

plain='terraform_data.loud (local-exec): 2026-12-01T15:00:00Z INFO a provisioner writing one line of its log, as they come'
event='{"@level":"info","@message":"terraform_data.loud: (local-exec): a provisioner writing one line of its log","@module":"terraform.ui","@timestamp":"2026-12-01T15:00:00.000000Z","hook":{"resource":{"addr":"terraform_data.loud","module":"","resource":"terraform_data.loud","implied_provider":"terraform","resource_type":"terraform_data","resource_name":"loud","resource_key":null},"provisioner":"local-exec","output":"a provisioner writing one line of its log"},"type":"provision_progress"}'
printf '%s\n' "$plain" > "$work/plain.line"
printf '%s\n' "$event" > "$work/json.line"

# The stand-in: answers `version`, does nothing for `init`, and on `apply` prints $LINE over
# and over, $BYTES in all.
cat > "$work/terraform" <<'SH'
#!/bin/sh
case "$1" in
  version) echo '{"terraform_version":"1.11.4"}' ;;
  output) echo '{}' ;;
  apply) yes "$(cat "$LINE")" | head -c "$BYTES" ;;
esac
exit 0
SH
chmod +x "$work/terraform"
mkdir -p "$work/image/loud"
echo 'resource "terraform_data" "loud" {}' > "$work/image/loud/main.tf"
printf '[source]\ndir = "code"\nimage_dir = "%s"\n[[step]]\nname = "loud"\ndir = "loud"\nretries = 0\n' \
  "$work/image" > "$work/workflow.toml"
echo '{}' > "$work/params.json"
bytes=$((mib * 1048576))

now() { echo "${EPOCHREALTIME/./}"; }
for kind in plain json; do
  export LINE=$work/$kind.line BYTES=$bytes
  start=$(now)
  { yes "$(cat "$LINE")" || true; } | head -c "$bytes" | cat > /dev/null
  cat_us=$(( $(now) - start ))
  rm -rf "$work/root"
  start=$(now)
  "$bin" --workflow "$work/workflow.toml" --params "$work/params.json" --root "$work/root" \
    --terraform "$work/terraform" run 2>/dev/null &
  pid=$! hwm=0
  while kill -0 "$pid" 2>/dev/null; do
    now_kb=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$now_kb" ] && hwm=$now_kb
    sleep 0.05
  done
  wait "$pid"
  engine_us=$(( $(now) - start ))
  awk -v kind="$kind" -v mib="$mib" -v c="$cat_us" -v e="$engine_us" -v rss="$hwm" 'BEGIN {
    printf "stand-in terraform printing %d MiB of %s lines: engine %.0f MiB/s, cat through a pipe %.0f MiB/s, engine/cat %.0f %% (goal >= 80 %%), engine peak RSS %d KiB (goal <= 16384)\n",
      mib, kind, mib / (e / 1e6), mib / (c / 1e6), 100 * c / e, rss }'
done
