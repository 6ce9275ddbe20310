#!/usr/bin/env bash
# Measures how strong the tests are where the README's promises live: cargo-mutants changes
# one thing at a time in these modules (a condition negated, a return value replaced, a call
# removed) and runs the tests against each change; a change that no test notices is "missed".
# Not run by CI: a mutant costs a build and a test run, so the whole set takes hours.
#
# Usage: scripts/mutants.sh [FILE…] [-- CARGO-TEST-ARGS…]
#   scripts/mutants.sh                                   every module below, against the unit
#                                                        tests and the engine and controller tests
#   scripts/mutants.sh src/root/lock.rs -- --test engine -- races:: lifecycle::
#                                                        one module, against the tests that matter
# MUTANTS_TIMEOUT (seconds, default 600) bounds each test run; a mutant that hangs the tests
# is counted as "timeout". Results: mutants.out/ (caught.txt, missed.txt, timeout.txt).
# MUTANTS_ARGS passes more options to cargo-mutants, e.g. MUTANTS_ARGS=--iterate to test
# again only what the last run missed (after a new test), or MUTANTS_ARGS="--re started".
# The tree is mutated in place and restored after each mutant: do not edit it meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."

files=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do
    files+=("$1")
    shift
done
[ "${1:-}" = -- ] && shift
if [ ${#files[@]} -eq 0 ]; then
    files=(
        src/process/supervisor.rs
        src/root/lock.rs
        src/root/journal.rs
        src/base/durable.rs
        src/base/secrets.rs
        src/controller/reconcile.rs
    )
fi
tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
    tests=(--lib --test engine --test controller)
fi

command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked
args=()
for file in "${files[@]}"; do
    args+=(--file "$file")
done
# Two torture rounds instead of twenty: each mutant still meets kills mid-write.
export TORTURE_ROUNDS="${TORTURE_ROUNDS:-2}"
# A broken program mostly shows as a condition that never comes: wait a quarter of the
# tests' timeouts (sized for a slow, shared machine) before calling it caught.
export TEST_PATIENCE="${TEST_PATIENCE:-0.25}"
# shellcheck disable=SC2086 # MUTANTS_ARGS is words on purpose
exec nice cargo mutants --in-place --no-shuffle --timeout "${MUTANTS_TIMEOUT:-600}" \
    ${MUTANTS_ARGS:-} "${args[@]}" -- "${tests[@]}"
