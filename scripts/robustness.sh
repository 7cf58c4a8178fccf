#!/usr/bin/env bash
# Runs the robustness evidence behind docs/robustness.md and collects what each
# check observed (the `hostile:` and `faults:` lines the tests print):
#
#   hostile clients   tests/hostile_clients.rs   (real sockets, the adapter binary)
#   faults            tests/faults.rs            (backend, Redis, state file, signals)
#   fuzz findings     tests/fuzz_regressions.rs  (seeds from real Postfix + past findings)
#
#   scripts/robustness.sh                 # the above; needs redis-server for one fault
#   FUZZ_SECONDS=60 scripts/robustness.sh # also fuzz each target for 60 s
#   SOAK_DURATION=10m scripts/robustness.sh  # also the mixed-load soak with plots
#
# Output: target/robustness/observed.txt (one line per check) and the tests' verdicts.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/robustness
out=target/robustness/observed.txt
: > "$out"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

run() {
    echo "robustness: cargo test $*" >&2
    cargo test --quiet "$@" -- --include-ignored --nocapture --test-threads=1 2>&1 \
        | tee -a target/robustness/test-output.txt \
        | grep -oE '(hostile|faults): .*|^test result.*|.*FAILED.*|.*panicked.*' | tee -a "$out"
}
: > target/robustness/test-output.txt
run --test hostile_clients
run --test faults
run --test fuzz_regressions

if [ -n "${FUZZ_SECONDS:-}" ]; then
    scripts/fuzz.sh "$FUZZ_SECONDS" 2>&1 | grep -E '^fuzz: .*(clean|FINDINGS)' | tee -a "$out"
fi
if [ -n "${SOAK_DURATION:-}" ]; then
    SOAK_DURATION="$SOAK_DURATION" scripts/soak.sh 2>&1 | tail -20 | tee -a "$out"
fi
if grep -qE 'FAILED|panicked' "$out"; then
    echo "robustness: FAILURES, see target/robustness/test-output.txt" >&2
    exit 1
fi
echo "robustness: all checks passed; observations in $out" >&2
