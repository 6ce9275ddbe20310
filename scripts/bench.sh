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
start=$(date +%s%N)
for _ in $(seq "$runs"); do "$bin" "${demo[@]}" run 2>/dev/null; done
end=$(date +%s%N)
# GNU time reports the largest peak of the engine and its children: terraform's (its version
# check) would hide the engine's, so for this one figure a stub answers the version.
printf '#!/bin/sh\necho %s\n' "'{\"terraform_version\":\"1.11.4\"}'" > "$work/terraform-version"
chmod +x "$work/terraform-version"
rss=$( { /usr/bin/time -f %M "$bin" "${demo[@]}" --terraform "$work/terraform-version" run 2>&1 >/dev/null; } | tail -1)
echo "restart with 4 finished steps: $(( (end - start) / runs / 1000 )) us per run (mean of $runs), peak RSS ${rss} KiB"

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
