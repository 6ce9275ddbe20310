#!/usr/bin/env bash
# The engine against the seed's way, as figures (never asserted by a test): the four-step
# fixture (tests/fixtures/four-step; a local first step, three more in a real PostgreSQL
# backend, workspace c1), applied by `bootstrapper run` and by a plain sh script doing what the
# seed's bootstrap.sh.tplt did (copy the code; per step write tfvars, `init`,
# `workspace select -or-create`, `apply`, `touch inited`; read the outputs the next step needs
# with `terraform output`). The two alternate, each on a fresh root and a fresh database (so
# fresh workspaces); the figure is the median of the per-pair ratios engine ÷ script.
# Usage: scripts/bench-seed.sh [PAIRS]   (default 7). Needs root (PostgreSQL runs as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-7}
cargo build --release --locked --quiet
bin=$PWD/target/release/bootstrapper
fixtures=$PWD/tests/fixtures/four-step
work=$(mktemp -d)
chmod 755 "$work"
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pg=$work/pg
mkdir -p "$pg" && chown postgres "$pg"
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$pg_bin/initdb" -D "$pg/data" --auth=trust --username=postgres --no-sync >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = off\n" \
  "$port" "$pg" >> "$pg/data/postgresql.conf"
as_pg "$pg_bin/pg_ctl" -D "$pg/data" -l "$pg/log" -w start >/dev/null
trap 'as_pg "$pg_bin/pg_ctl" -D "$pg/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
database() { "$pg_bin/psql" -qAt -h 127.0.0.1 -p "$port" -U postgres -c "CREATE DATABASE $1" >/dev/null; echo "postgres://postgres@127.0.0.1:$port/$1?sslmode=disable"; }

tera() { printf '%s' "$fixtures/templates/$1.tfvars.tera"; }
cat > "$work/workflow.toml" <<TOML
[source]
dir = "code"
image_dir = "$fixtures"
[settings]
retries = 0
[[step]]
name = "control-network"
dir = "control-network"
vars = "$(tera control-network)"
TOML
for step in network hosts system-job; do
  # As workflows/bootstrap.toml has it: the system jobs run on the hosts.
  needs=
  [ "$step" = system-job ] && needs='needs = ["hosts"]'
  cat >> "$work/workflow.toml" <<TOML
[[step]]
name = "$step"
dir = "$step"
$needs
workspace = "{{ params.cluster_id }}"
backend_config = { conn_str = "{{ steps.control_network.outputs.conn_str }}", schema_name = "$step" }
vars = "$(tera $step)"
TOML
done

# The seed's way: raw terraform and `inited` files.
cat > "$work/seed.sh" <<'SH'
#!/bin/sh
set -e
root=$1 fixtures=$2 conn=$3 ledger=$4
[ -d "$root/code" ] || { cp -r "$fixtures" "$root/code.tmp"; mv "$root/code.tmp" "$root/code"; }
vars() { printf 'ledger = "%s"\nsleep_seconds = 0\ndestroy_sleep_seconds = 0\ntag = ""\n%s' "$ledger" "$1" > bootstrapper.tfvars; }
cd "$root/code/control-network"
if [ ! -f inited ]; then
  vars "pg_conn_str = \"$conn\"
admin_token = \"adm-bench-secret\"
"
  terraform init -input=false >/dev/null
  terraform apply -auto-approve -input=false -var-file=bootstrapper.tfvars >/dev/null
  touch inited
fi
conn_str=$(terraform output -raw conn_str)
for step in network hosts system-job; do
  cd "$root/code/$step"
  [ -f inited ] && continue
  extra=
  [ "$step" = hosts ] && extra="network_id = \"$network_id\"
"
  vars "$extra"
  terraform init -input=false -backend-config="conn_str=$conn_str" -backend-config="schema_name=$step" >/dev/null
  terraform workspace select -or-create c1 >/dev/null
  terraform apply -auto-approve -input=false -var-file=bootstrapper.tfvars >/dev/null
  [ "$step" = network ] && network_id=$(terraform output -raw network_id)
  touch inited
done
SH
chmod +x "$work/seed.sh"

now() { echo "${EPOCHREALTIME/./}"; }
ratios=() engine_times=() script_times=()
for i in $(seq "$pairs"); do
  for who in engine script; do
    dir=$work/$who-$i
    mkdir -p "$dir/root"
    conn=$(database "${who}_$i")
    if [ "$who" = engine ]; then
      printf '{"ledger": "%s", "pg_conn_str": "%s", "admin_token": "adm-bench-secret", "cluster_id": "c1"}' \
        "$dir/ledger" "$conn" > "$dir/params.json"
      start=$(now)
      "$bin" --workflow "$work/workflow.toml" --params "$dir/params.json" --root "$dir/root" run 2>"$dir/log"
      engine=$(( $(now) - start ))
    else
      start=$(now)
      "$work/seed.sh" "$dir/root" "$fixtures" "$conn" "$dir/ledger" 2>"$dir/log"
      script=$(( $(now) - start ))
    fi
  done
  engine_times+=("$engine") script_times+=("$script")
  ratios+=("$(awk -v e="$engine" -v s="$script" 'BEGIN {printf "%.3f", e / s}')")
  echo "pair $i: engine $((engine / 1000)) ms, script $((script / 1000)) ms, ratio ${ratios[-1]}"
done
median() { sort -g | awk '{t[NR] = $1} END {print (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2}'; }
echo "seed-shaped 4 steps, pg backend, $pairs pairs: engine median $(( $(printf '%s\n' "${engine_times[@]}" | median) / 1000 )) ms, script median $(( $(printf '%s\n' "${script_times[@]}" | median) / 1000 )) ms, median ratio engine/script $(printf '%s\n' "${ratios[@]}" | median) (goal <= 0.90)"

# Where the time goes: one more of each, with every terraform call timed by a wrapper.
real_tf=$(command -v terraform)
mkdir -p "$work/timed"
cat > "$work/timed/terraform" <<SH
#!/bin/sh
s=\$(date +%s%N); "$real_tf" "\$@"; rc=\$?; e=\$(date +%s%N)
echo "\$1 \$(( (e - s) / 1000 ))" >> "\$TIMED_LOG"; exit \$rc
SH
chmod +x "$work/timed/terraform"
for who in engine script; do
  dir=$work/$who-timed
  mkdir -p "$dir/root"
  conn=$(database "${who}_timed")
  export TIMED_LOG=$dir/calls
  start=$(now)
  if [ "$who" = engine ]; then
    printf '{"ledger": "%s", "pg_conn_str": "%s", "admin_token": "adm-bench-secret", "cluster_id": "c1"}' \
      "$dir/ledger" "$conn" > "$dir/params.json"
    "$bin" --workflow "$work/workflow.toml" --params "$dir/params.json" --root "$dir/root" \
      --terraform "$work/timed/terraform" run 2>"$dir/log"
  else
    PATH=$work/timed:$PATH "$work/seed.sh" "$dir/root" "$fixtures" "$conn" "$dir/ledger" 2>"$dir/log"
  fi
  total=$(( $(now) - start ))
  awk -v who="$who" -v total="$total" '{n[$1]++; t[$1] += $2; all += $2; calls++}
    END {printf "%s: %d ms in all, %d terraform processes taking %d ms, %d ms outside terraform;", who, total / 1000, calls, all / 1000, (total - all) / 1000
         for (c in n) printf " %s %dx %d ms", c, n[c], t[c] / 1000; printf "\n"}' "$dir/calls"
done
