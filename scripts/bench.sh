#!/usr/bin/env bash
# Measures what the engine costs, as figures (never asserted by a test):
#   1. a restart with nothing to do: `run` over the finished demo, which starts no process but
#      its one `terraform version -json`;
#   2. peak memory while terraform prints a lot: the same step printing 2 MB and 20 MB,
#      whose peak RSS should be about equal, since output is streamed line by line.
# Usage: scripts/bench.sh [RUNS]   (RUNS of the restart, default 20).
# Memory is the engine's own peak (VmHWM), sampled from /proc while it runs: terraform and its
# children are not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
cargo build --release --locked --quiet
bin=$PWD/target/release/bootstrapper
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Runs the engine with the given arguments; prints its peak RSS in KiB.
peak_rss() {
  "$bin" "$@" >/dev/null 2>&1 &
  local pid=$! hwm=0 now
  while kill -0 "$pid" 2>/dev/null; do
    now=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$now" ] && hwm=$now
    sleep 0.05
  done
  wait "$pid"
  echo "$hwm"
}

demo=(--workflow workflows/demo.toml --params workflows/demo.params.json --root "$work/demo")
"$bin" "${demo[@]}" run 2>/dev/null
# Each run timed on its own with bash's clock, which starts no process of its own.
times=()
for _ in $(seq "$runs"); do
  start=$EPOCHREALTIME
  "$bin" "${demo[@]}" run 2>/dev/null
  end=$EPOCHREALTIME
  times+=($(( (${end/./} - ${start/./}) )))
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{t[NR] = $1} END {print (NR % 2) ? t[(NR + 1) / 2] : int((t[NR / 2] + t[NR / 2 + 1]) / 2)}')
# A restart with nothing to do starts no process, so GNU time's peak is the engine's own.
rss=$( { /usr/bin/time -f %M "$bin" "${demo[@]}" run 2>&1 >/dev/null; } | tail -1)
echo "restart with 4 finished steps: ${median} us wall (median of $runs runs), peak RSS ${rss} KiB"
if command -v strace >/dev/null; then
  # Threads are clones too; a process is a clone without CLONE_THREAD, or a fork or exec.
  spawned=$(strace -f -e trace=execve,fork,vfork,clone,clone3 -o "$work/strace" "$bin" "${demo[@]}" run 2>/dev/null; \
    grep -E 'execve|fork|clone' "$work/strace" | grep -v CLONE_THREAD | grep -vc "execve(\"$bin\"" || true)
  echo "processes a restart starts: $spawned"
fi

mkdir -p "$work/loud/code/loud"
cat > "$work/loud/code/loud/main.tf" <<'TF'
variable "mb" { type = number }
resource "terraform_data" "loud" {
  input = var.mb
  provisioner "local-exec" {
    command = "head -c ${var.mb * 1048576} /dev/zero | tr '\\0' 'x' | fold -w 100"
  }
}
TF
cat > "$work/loud/workflow.toml" <<'TOML'
[source]
dir = "code"
[[step]]
name = "loud"
dir = "loud"
apply_args = ["-var=mb={{ params.mb }}"]
retries = 0
TOML
for mb in 2 20; do
  echo "{\"mb\": $mb}" > "$work/loud/params.json"
  rm -rf "$work/loud/root" && mkdir -p "$work/loud/root" && cp -r "$work/loud/code" "$work/loud/root/"
  start=$(date +%s%N)
  rss=$(peak_rss --workflow "$work/loud/workflow.toml" --params "$work/loud/params.json" --root "$work/loud/root" run)
  end=$(date +%s%N)
  echo "terraform printing ${mb} MB: engine peak RSS ${rss} KiB, $(( (end - start) / 1000000 )) ms"
done
