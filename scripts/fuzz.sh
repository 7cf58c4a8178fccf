#!/usr/bin/env bash
# Runs the libFuzzer targets in fuzz/ for a bounded time each, starting from the
# seeds captured from real Postfix traffic (fuzz/seeds/) and the findings so far
# (fuzz/regressions/); the growing working corpus lives in fuzz/corpus/ (not
# committed).
#
#   scripts/fuzz.sh                 # 60 s per target, all four targets
#   scripts/fuzz.sh 600             # 10 minutes per target
#   scripts/fuzz.sh 30 netstring    # one target
#
# Works on the stable toolchain: cargo-fuzz builds with `--sanitizer none` (the
# adapter's code is `unsafe_code = forbid`; the checks in fuzz/checks.rs assert its
# promises, which is what a sanitizer could not see anyway). Builds keep debug
# assertions and overflow checks on, so an arithmetic overflow is a finding too.
# cargo-fuzz is installed from crates.io when missing.
#
# A finding is minimised and copied to fuzz/regressions/<target>/, where
# `cargo test --test fuzz_regressions` replays it from then on; the script then
# exits 1. A clean run appends one line to target/fuzz/runs.log; with
# FUZZ_RECORD=1 to the committed fuzz/runs.log instead (the project's record).
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(netstring socketmap_request policy_request dovecot_line)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz..." >&2
    cargo install --locked cargo-fuzz
fi

cd fuzz
echo "fuzz: building the targets (release with debug assertions and overflow checks, no sanitizer)..." >&2
cargo fuzz build --sanitizer none --release --debug-assertions
failed=()
total_runs=0
for target in "${TARGETS[@]}"; do
    mkdir -p "corpus/$target" "regressions/$target" "artifacts/$target"
    echo "fuzz: $target for ${SECONDS_PER_TARGET}s" >&2
    log="$(mktemp)"
    if cargo fuzz run --sanitizer none --release --debug-assertions "$target" \
        "corpus/$target" "seeds/$target" "regressions/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        echo "fuzz: $target clean, ${runs:-?} executions" >&2
        total_runs=$((total_runs + ${runs:-0}))
    else
        tail -40 "$log" >&2
        for crash in artifacts/"$target"/crash-*; do
            [ -f "$crash" ] || continue
            # Writes a minimised-from-* file next to the crash.
            cargo fuzz tmin --sanitizer none --release --debug-assertions "$target" "$crash" >/dev/null 2>&1 || true
        done
        # Keep each crash and the smallest input tmin reduced it to.
        cp artifacts/"$target"/crash-* "regressions/$target/" 2>/dev/null || true
        smallest=$(ls -S artifacts/"$target"/minimized-from-* 2>/dev/null | tail -1)
        [ -z "$smallest" ] || cp "$smallest" "regressions/$target/"
        failed+=("$target")
    fi
    rm -f "$log"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FINDINGS in ${failed[*]}: inputs copied to fuzz/regressions/; fix, then commit them" >&2
    exit 1
fi
if [ "${FUZZ_RECORD:-0}" = 1 ]; then
    runs_log=runs.log
else
    mkdir -p ../target/fuzz
    runs_log=../target/fuzz/runs.log
fi
echo "$(date -u +%F) ${SECONDS_PER_TARGET}s x ${#TARGETS[@]} targets (${TARGETS[*]}): clean, $total_runs executions" >> "$runs_log"
echo "fuzz: all clean ($total_runs executions); logged to ${runs_log#../}" >&2
