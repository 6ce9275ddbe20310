#!/usr/bin/env bash
# Measures what the engine costs, as figures (never asserted by a test):
#   1. a restart with nothing to do: `run` over the finished demo, which starts no process (the
#      terraform binary found good by the first run is on record);
#   2. peak memory while terraform prints a lot: the same step printing 2 MB and 20 MB,
#      whose peak RSS should be about equal, since output is streamed line by line;
#   3. the controller (`serve` on the demo tenant workflow): clusters created per minute at
#      concurrency 1 and 8 (20 clusters each), and the p50/p99 latency of GET /v1/clusters/{id}
#      while 8 operations run.
#   4. independent steps at once: two branches of equal cost (each a provisioner sleeping 2 s),
#      run with --parallelism 2 against --parallelism 1, in pairs on fresh roots; the ratio of
#      their wall times (goal: at most 0.55).
#   5. a thousand tenants (`list`): N clusters on record (one created by `serve`, its records
#      copied under N-1 other ids), then the median time of GET /v1/clusters, of a filtered
#      list that matches none (?phase=failed) and of the full list with 8 clients at once
#      (goals: 50 ms and 5 ms for 1,000); and how long `serve` takes to start over them.
#   7. a rollout (`rollout`): N clusters on the demo tenant's code, then a new version of it
#      (a new output), moved there by one rollout at max_parallel P, against the same N
#      upgrades issued as plain PUTs ("upgrade": true) at --concurrency P on a twin root; the
#      ratio of their wall times (goal: at most 1.10), and GET /v1/clusters/{id} p99 meanwhile.
#   6. a long operation log (`log`): the controller's peak RSS (VmHWM) before and after
#      GET /v1/clusters/{id}/log over a log of MIB MiB, and the worst /healthz latency meanwhile.
#   8. a fleet through Kubernetes Jobs (`jobs`), simulated: N clusters created, then destroyed,
#      by `serve --executor kubernetes` against the fake API server of the controller's tests,
#      whose kubelet runs each pod as a process of the real engine, with room for 200 pods (50
#      nodes of 4: a pod beyond that stays Pending until one ends), over a stand-in terraform
#      whose apply or destroy sleeps 2 s. Prints the time to converge against the ideal (each
#      batch of 200 operations one step), the API requests per operation, the controller's CPU
#      time and peak RSS; fails if an intent is lost or a cluster ever had two pods. It is the
#      test jobs_load::simulation_… (run small by `cargo test`) at full size, in release.
# Usage: scripts/bench.sh [RUNS]   (RUNS of the restart, default 20).
#        scripts/bench.sh parallel [PAIRS]   (only 4., PAIRS default 5).
#        scripts/bench.sh list [N]   (5., not in the default run; N default 1000).
#        scripts/bench.sh log [MIB]   (6., not in the default run; MIB default 150).
#        scripts/bench.sh rollout [N] [P]   (7., not in the default run; N 100, P 8).
#        scripts/bench.sh jobs [N] [SLOTS] [STEP] [POLL]   (8., not in the default run; N 1000,
#          SLOTS 200, STEP 2 s, POLL the controller's --job-poll (its safety-net relist), 1m).
#   BENCH_BIN=path measures that binary instead of building this tree's (e.g. another
#   version's, for a before/after).
#   Then the seed comparison (scripts/bench-seed.sh) and the streaming throughput
#   (scripts/bench-stream.sh).
# Memory is the engine's own peak (VmHWM), sampled from /proc while it runs: terraform and its
# children are not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
if [ "${1:-}" = jobs ]; then
  # 200 pods' processes and their log files, and the controller's connections.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  BOOTSTRAPPER_SIM_CLUSTERS=${2:-1000} BOOTSTRAPPER_SIM_SLOTS=${3:-200} \
    BOOTSTRAPPER_SIM_STEP=${4:-2} BOOTSTRAPPER_SIM_POLL=${5:-1m} \
    cargo test --release --locked --test controller \
    jobs_load::simulation_of_a_fleet_on_a_full_cluster_loses_no_intent -- --exact --nocapture
  exit 0
fi
if [ -n "${BENCH_BIN:-}" ]; then
  bin=$(realpath "$BENCH_BIN")
else
  cargo build --release --locked --quiet
  bin=$PWD/target/release/bootstrapper
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- 4. Independent steps at once ----------------------------------------------------------------
bench_parallel() { # PAIRS
  local pairs=$1 dir=$work/branches
  mkdir -p "$dir/code/left" "$dir/code/right"
  for side in left right; do
    cat > "$dir/code/$side/main.tf" <<'TF'
resource "terraform_data" "branch" {
  provisioner "local-exec" {
    command = "sleep 2"
  }
}
TF
  done
  cat > "$dir/workflow.toml" <<'TOML'
[source]
dir = "code"
image_dir = "code"
[[step]]
name = "left"
dir = "left"
needs = []
[[step]]
name = "right"
dir = "right"
needs = []
TOML
  echo '{}' > "$dir/params.json"
  local ratios=() one=() two=()
  for i in $(seq "$pairs"); do
    local t=()
    for p in 1 2; do
      rm -rf "$dir/root-$p" && mkdir "$dir/root-$p"
      local start=$EPOCHREALTIME
      "$bin" --workflow "$dir/workflow.toml" --params "$dir/params.json" --root "$dir/root-$p" \
        --parallelism "$p" run 2>/dev/null
      local end=$EPOCHREALTIME
      t+=($(( (${end/./} - ${start/./}) / 1000 )))
    done
    one+=("${t[0]}") two+=("${t[1]}")
    ratios+=("$(awk -v a="${t[1]}" -v b="${t[0]}" 'BEGIN {printf "%.3f", a / b}')")
    echo "pair $i: parallelism 1 ${t[0]} ms, parallelism 2 ${t[1]} ms, ratio ${ratios[-1]}"
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
  echo "two independent 2 s branches: parallelism 1 $(median "${one[@]}") ms, parallelism 2 $(median "${two[@]}") ms (medians of $pairs pairs); ratio $(median "${ratios[@]}") (median; goal <= 0.55)"
}
if [ "${1:-}" = parallel ]; then
  bench_parallel "${2:-5}"
  exit 0
fi

# --- 5. and 6. The controller over many clusters, and over a long log --------------------------
median_of() { sort -n | awk '{v[NR] = $1} END {printf "%.1f", ((NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) * 1000}'; }
# Starts serve over ROOT on the demo tenant workflow; serve_ms: how long it took to answer.
serve_at() { # ROOT PORT
  local start=$EPOCHREALTIME
  "$bin" serve --listen "127.0.0.1:$2" --workflow "$PWD/workflows/tenant-demo.toml" --root "$1" \
    --insecure-no-auth >/dev/null 2>>"$1/serve.log" &
  serve_pid=$!
  for _ in $(seq 1200); do
    if curl -sf "http://127.0.0.1:$2/healthz" >/dev/null; then
      serve_ms=$(( (${EPOCHREALTIME/./} - ${start/./}) / 1000 ))
      return
    fi
    sleep 0.05
  done
  echo "serve did not start" >&2; cat "$1/serve.log" >&2; exit 1
}
# One cluster created by serve itself, ready, and the controller stopped: the records a real
# controller writes, to copy.
seed_cluster() { # ROOT PORT ID
  serve_at "$1" "$2"
  curl -sf -X PUT "http://127.0.0.1:$2/v1/clusters/$3" -d '{"params": {}}' >/dev/null
  until curl -s "http://127.0.0.1:$2/v1/clusters/$3" | grep -q '"phase":"ready"'; do sleep 0.2; done
  kill -TERM "$serve_pid"; wait "$serve_pid" || true
}
bench_list() { # N
  local n=$1 root=$work/list port=$(( 20000 + RANDOM % 20000 ))
  mkdir -p "$root"
  seed_cluster "$root" "$port" bench-0
  # Hard links: the copies cost no space; the records that name the id are rewritten.
  for i in $(seq 1 $(( n - 1 ))); do
    cp -al "$root/clusters/bench-0" "$root/clusters/bench-$i"
    for f in intent.json params.json; do
      sed "s/\"bench-0\"/\"bench-$i\"/" "$root/clusters/bench-0/$f" > "$root/clusters/bench-$i/$f.new"
      mv "$root/clusters/bench-$i/$f.new" "$root/clusters/bench-$i/$f"
    done
  done
  local listed
  serve_at "$root" "$port"
  listed=$(curl -s "http://127.0.0.1:$port/v1/clusters" | grep -o '"phase":"ready"' | wc -l)
  local url=http://127.0.0.1:$port/v1/clusters all failed eight
  all=$(for _ in $(seq 21); do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done | median_of)
  failed=$(for _ in $(seq 21); do curl -s -o /dev/null -w '%{time_total}\n' "$url?phase=failed"; done | median_of)
  eight=$(for _ in $(seq 8); do
    (for _ in $(seq 10); do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done) &
  done | median_of)
  wait_serve_stop
  echo "serve over $n clusters ($listed listed ready): started in ${serve_ms} ms; GET /v1/clusters median ${all} ms (goal <= 50), ?phase=failed ${failed} ms (goal <= 5), with 8 clients ${eight} ms"
}
wait_serve_stop() { kill -TERM "$serve_pid"; wait "$serve_pid" || true; }
bench_log() { # MIB
  local mib=$1 root=$work/log port=$(( 20000 + RANDOM % 20000 ))
  mkdir -p "$root"
  seed_cluster "$root" "$port" big
  # Lines of about 120 bytes, as terraform's are.
  (yes "bootstrapper: info: [broker] terraform_data.broker: Still creating... [10s elapsed] padding padding padding" || true) \
    | head -c $(( mib * 1048576 )) > "$root/clusters/big/operation.log"
  serve_at "$root" "$port"
  local before after worst
  before=$(awk '/^VmHWM/ {print $2}' "/proc/$serve_pid/status")
  (for _ in $(seq 3); do curl -s -o /dev/null "http://127.0.0.1:$port/v1/clusters/big/log"; done; touch "$work/log-done") &
  local reader=$!
  worst=$(while [ ! -e "$work/log-done" ]; do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/healthz"; done \
    | sort -n | tail -1 | awk '{printf "%.1f", $1 * 1000}')
  wait "$reader"
  after=$(awk '/^VmHWM/ {print $2}' "/proc/$serve_pid/status")
  wait_serve_stop
  echo "GET /v1/clusters/{id}/log over a ${mib} MiB log (3 times): serve's peak RSS ${before} KiB before, ${after} KiB after; worst /healthz meanwhile ${worst} ms"
}
bench_rollout() { # N P
  local n=$1 p=$2 dir=$work/rollout port=$(( 20000 + RANDOM % 20000 ))
  mkdir -p "$dir"
  cp -r demo/tenant "$dir/code"
  sed -e "s|image_dir = \"../demo/tenant\"|image_dir = \"$dir/code\"|" \
      -e "s|\"../templates/|\"$PWD/templates/|" workflows/tenant-demo.toml > "$dir/workflow.toml"
  serve_over() { # ROOT
    mkdir -p "$1"
    "$bin" serve --listen "127.0.0.1:$port" --workflow "$dir/workflow.toml" --root "$1" \
      --concurrency "$p" --insecure-no-auth 2>>"$1/serve.log" &
    serve_pid=$!
    for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.05; done
    echo "serve did not start" >&2; cat "$1/serve.log" >&2; exit 1
  }
  count() { curl -s "http://127.0.0.1:$port/v1/clusters?$1" | grep -o '"id":' | wc -l; }
  for side in rollout puts; do
    serve_over "$dir/$side"
    for i in $(seq "$n"); do
      curl -sf -X PUT "http://127.0.0.1:$port/v1/clusters/r-$i" -d '{"params": {}}' >/dev/null
    done
    until [ "$(count phase=ready)" -eq "$n" ]; do sleep 0.2; done
    wait_serve_stop
  done
  # Version 2: a new output in the broker module.
  printf '\noutput "version" {\n  value = "v2"\n}\n' >> "$dir/code/broker/main.tf"

  serve_over "$dir/rollout"
  [ "$(count outdated=true)" -eq "$n" ] || { echo "not every cluster is outdated" >&2; exit 1; }
  rm -f "$work/rollout-done"
  (while [ ! -e "$work/rollout-done" ]; do
     curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/v1/clusters/r-1"
   done > "$work/rollout-latency") &
  local reader=$! start end id
  start=$EPOCHREALTIME
  id=$(curl -sf -X POST "http://127.0.0.1:$port/v1/rollouts" -d "{\"max_parallel\": $p}" \
    | grep -o '"id":"[0-9a-f]*"' | cut -d'"' -f4)
  until curl -s "http://127.0.0.1:$port/v1/rollouts/$id" | grep -q '"phase":"done"'; do sleep 0.1; done
  end=$EPOCHREALTIME
  touch "$work/rollout-done"; wait "$reader"
  local rollout_ms=$(( (${end/./} - ${start/./}) / 1000 ))
  local upgraded
  upgraded=$(curl -s "http://127.0.0.1:$port/v1/rollouts/$id" | grep -o '"upgraded":[0-9]*' | head -1)
  wait_serve_stop
  local requests p99
  requests=$(wc -l < "$work/rollout-latency")
  p99=$(sort -n "$work/rollout-latency" | awk -v n="$requests" 'NR == int(n * 0.99 + 0.5) {printf "%.1f", $1 * 1000}')

  serve_over "$dir/puts"
  start=$EPOCHREALTIME
  for i in $(seq "$n"); do
    curl -sf -X PUT "http://127.0.0.1:$port/v1/clusters/r-$i" -d '{"params": {}, "upgrade": true}' >/dev/null
  done
  until [ "$(count outdated=true)" -eq 0 ] && [ "$(count phase=ready)" -eq "$n" ]; do sleep 0.1; done
  end=$EPOCHREALTIME
  wait_serve_stop
  local puts_ms=$(( (${end/./} - ${start/./}) / 1000 ))
  echo "upgrading $n clusters: one rollout at max_parallel $p ${rollout_ms} ms ($upgraded), plain PUTs at --concurrency $p ${puts_ms} ms; ratio $(awk -v a="$rollout_ms" -v b="$puts_ms" 'BEGIN {printf "%.3f", a / b}') (goal <= 1.10); GET /v1/clusters/{id} during the rollout p99 ${p99} ms ($requests requests)"
}
if [ "${1:-}" = rollout ]; then
  bench_rollout "${2:-100}" "${3:-8}"
  exit 0
fi
if [ "${1:-}" = list ]; then
  bench_list "${2:-1000}"
  exit 0
fi
if [ "${1:-}" = log ]; then
  bench_log "${2:-150}"
  exit 0
fi

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

# --- 3. The controller ------------------------------------------------------------------------
port=$(( 20000 + RANDOM % 20000 ))
serve_pid=
start_serve() { # ROOT WORKFLOW CONCURRENCY
  mkdir -p "$1"
  "$bin" serve --listen "127.0.0.1:$port" --workflow "$2" --root "$1" --concurrency "$3" \
    --insecure-no-auth 2>"$1/serve.log" &
  serve_pid=$!
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.05; done
  echo "serve did not start" >&2; cat "$1/serve.log" >&2; exit 1
}
stop_serve() { kill -TERM "$serve_pid"; wait "$serve_pid" || true; }
metric() { curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
ready_count() {
  curl -s "http://127.0.0.1:$port/v1/clusters?phase=ready" | grep -o '"phase":"ready"' | wc -l
}

for concurrency in 1 8; do
  start_serve "$work/serve-$concurrency" workflows/tenant-demo.toml "$concurrency"
  start=$(date +%s%N)
  for i in $(seq 20); do
    curl -sf -X PUT "http://127.0.0.1:$port/v1/clusters/bench-$i" -d '{"params": {}}' >/dev/null
  done
  until [ "$(ready_count)" -eq 20 ]; do sleep 0.1; done
  end=$(date +%s%N)
  stop_serve
  ms=$(( (end - start) / 1000000 ))
  echo "serve, concurrency $concurrency: 20 clusters ready in ${ms} ms, $(( 20 * 60000 / ms )) clusters per minute"
done

# Eight operations held running by a step that sleeps, while one cluster is read again and again.
mkdir -p "$work/slow"
cp -r demo/tenant "$work/slow/code"
mkdir -p "$work/slow/code/hold"
cat > "$work/slow/code/hold/main.tf" <<'TF'
resource "terraform_data" "hold" {
  provisioner "local-exec" {
    command = "sleep 60"
  }
}
TF
sed -e "s|image_dir = \"../demo/tenant\"|image_dir = \"$work/slow/code\"|" \
    -e "s|\"../templates/|\"$PWD/templates/|" workflows/tenant-demo.toml > "$work/slow/workflow.toml"
printf '\n[[step]]\nname = "hold"\ndir = "hold"\nworkspace = "{{ params.cluster_id }}"\n' >> "$work/slow/workflow.toml"
start_serve "$work/serve-slow" "$work/slow/workflow.toml" 8
for i in $(seq 8); do
  curl -sf -X PUT "http://127.0.0.1:$port/v1/clusters/slow-$i" -d '{"params": {}}' >/dev/null
done
until [ "$(metric bootstrapper_operations_running)" = 8 ]; do sleep 0.1; done
for _ in $(seq 500); do
  curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/v1/clusters/slow-1"
done | sort -n > "$work/latency"
running=$(metric bootstrapper_operations_running)
p50=$(awk 'NR == 250 {printf "%.1f", $1 * 1000}' "$work/latency")
p99=$(awk 'NR == 495 {printf "%.1f", $1 * 1000}' "$work/latency")
stop_serve
echo "serve, GET /v1/clusters/{id} with 8 operations running (still $running at the end): p50 ${p50} ms, p99 ${p99} ms (500 requests)"

bench_parallel 5

# The engine against the seed's sh script on a four-step PostgreSQL workflow, and the engine's
# own streaming against `cat`: scripts/bench-seed.sh [PAIRS], scripts/bench-stream.sh [MIB].
if [ "$(id -u)" = 0 ]; then scripts/bench-seed.sh 7; fi
scripts/bench-stream.sh 1024
