#!/usr/bin/env bash
# The engine's own streaming, as figures (never asserted by a test). Real terraform passes a
# provisioner's output on at about 1 MB/s, so it cannot measure the engine: a stand-in
# terraform prints SIZE of output on `apply`, as plain log lines and as `-json` events
# (provisioner output), and the engine (its log to /dev/null) is set against `cat` of the same
# bytes through a pipe: the same producer, `cat` as the consumer. The producer is `cat` of a
# file in memory (/dev/shm), so that it takes little of the CPU the two consumers are measured
# on and no disk is written meanwhile. Engine and `cat` alternate, PAIRS times per kind; the figures are medians, the ratio
# the median of the pairs' ratios (goal >= 80 %), with the engine's peak RSS (goal <= 16 MB;
# VmHWM sampled from /proc, the engine alone).
# Usage: scripts/bench-stream.sh [MIB] [PAIRS]   (default 1024 MiB, 7 pairs).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
pairs=${2:-7}
cargo build --release --locked --quiet
bin=$PWD/target/release/bootstrapper
work=$(mktemp -d)
shm=/dev/shm
[ -d "$shm" ] && [ -w "$shm" ] || shm=$work
export OUTPUT=$shm/bootstrapper-bench-stream.$$
trap 'rm -rf "$work" "$OUTPUT"' EXIT

plain='terraform_data.loud (local-exec): 2026-12-01T15:00:00Z INFO a provisioner writing one line of its log, as they come'
event='{"@level":"info","@message":"terraform_data.loud: (local-exec): a provisioner writing one line of its log","@module":"terraform.ui","@timestamp":"2026-12-01T15:00:00.000000Z","hook":{"resource":{"addr":"terraform_data.loud","module":"","resource":"terraform_data.loud","implied_provider":"terraform","resource_type":"terraform_data","resource_name":"loud","resource_key":null},"provisioner":"local-exec","output":"a provisioner writing one line of its log"},"type":"provision_progress"}'
bytes=$((mib * 1048576))

# The stand-in: answers `version`, does nothing for `init`, and on `apply` prints $OUTPUT.
cat > "$work/terraform" <<'SH'
#!/bin/sh
case "$1" in
  version) echo '{"terraform_version":"1.11.4"}' ;;
  output) echo '{}' ;;
  apply) cat "$OUTPUT" ;;
esac
exit 0
SH
chmod +x "$work/terraform"
mkdir -p "$work/image/loud"
echo 'resource "terraform_data" "loud" {}' > "$work/image/loud/main.tf"
printf '[source]\ndir = "code"\nimage_dir = "%s"\n[[step]]\nname = "loud"\ndir = "loud"\nretries = 0\n' \
  "$work/image" > "$work/workflow.toml"
echo '{}' > "$work/params.json"

now() { echo "${EPOCHREALTIME/./}"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for kind in plain json; do
  line=$plain
  [ "$kind" = json ] && line=$event
  { yes "$line" || true; } | head -c "$bytes" > "$OUTPUT"
  : > "$work/engine" && : > "$work/cat" && : > "$work/ratio" && : > "$work/rss"
  for _ in $(seq "$pairs"); do
    start=$(now)
    cat "$OUTPUT" | cat > /dev/null
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
    echo "$engine_us" >> "$work/engine"
    echo "$cat_us" >> "$work/cat"
    echo "$hwm" >> "$work/rss"
    awk -v c="$cat_us" -v e="$engine_us" 'BEGIN { print 100 * c / e }' >> "$work/ratio"
  done
  rm -f "$OUTPUT"
  awk -v kind="$kind" -v mib="$mib" -v pairs="$pairs" -v e="$(median < "$work/engine")" \
    -v c="$(median < "$work/cat")" -v r="$(median < "$work/ratio")" \
    -v rss="$(sort -n "$work/rss" | tail -1)" 'BEGIN {
    printf "%d MiB of %s lines, %d pairs: engine %.0f MiB/s, cat through a pipe %.0f MiB/s (medians), engine/cat %.0f %% (median of pairs; goal >= 80 %%), engine peak RSS %d KiB (largest; goal <= 16384)\n",
      mib, kind, pairs, mib / (e / 1e6), mib / (c / 1e6), r, rss }'
done
