#!/usr/bin/env bash
# Builds bootstrapper and runs the demo workflow into a local directory that stands in for the
# pod's PVC, then prints `status`. Needs only cargo and terraform (>= 1.4); works offline.
#   scripts/demo.sh [ROOT]        (ROOT defaults to ./demo-pvc; run it twice to see the skip)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-demo-pvc}
cargo build --locked --quiet
bin=target/debug/bootstrapper
args=(--workflow workflows/demo.toml --params workflows/demo.params.json --root "$root")
"$bin" "${args[@]}" run
echo
"$bin" "${args[@]}" status
echo
echo "Next: '$bin ${args[*]} plan --destroy' shows the teardown; '... destroy' does it."
