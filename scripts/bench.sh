#!/usr/bin/env bash
# Runs the load scenarios of tools/src/bin/loadgen.rs and prints a Markdown table, one
# row per scenario, ready to paste into the README. Progress and the human-readable
# summaries go to stderr; the table goes to stdout and to target/bench/results.md.
#
#   scripts/bench.sh                      # about 1.5 minutes after the build
#   BENCH_DURATION=5s scripts/bench.sh    # shorter measured windows
#   BENCH_IDLE_CONNECTIONS=20000 scripts/bench.sh
#
# Scenarios:
#   floor / adapter   `loadgen compare`: a trivial netstring server answering `OK 1`,
#                     then the real engine with a 0-latency fake backend over 1000
#                     keys (after warm-up every answer can come from the cache)
#   backend 1 ms      the engine, every backend call taking 1 ms, 1000 keys
#   miss-overhead     every request a never-seen key, backend 1 ms: engine overhead
#   cold-key          1000 concurrent lookups of one cold key (backend 50 ms), 3 rounds:
#                     backend calls per round (1 = coalesced)
#   backend down      every backend call fails: all answers TEMP
#   idle              the release binary (fixture backend) holding N idle connections
#                     that each did one lookup: server RSS per connection
#
# The load generator and the servers share the machine; see the module docs of
# tools/src/bin/loadgen.rs for the runtime/thread layout. Numbers vary by a few tens of
# percent from run to run on a busy or small machine: compare rows of one run.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${BENCH_DURATION:-10s}"
IDLE_CONNECTIONS="${BENCH_IDLE_CONNECTIONS:-10000}"

# Sockets need file descriptors: raise the soft limit as far as allowed (the idle
# scenario needs IDLE_CONNECTIONS in the load generator and as many in the server).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNECTIONS + 256)) ]; then
    echo "bench: open-files limit $(ulimit -n) is too low for $IDLE_CONNECTIONS idle connections" >&2
    IDLE_CONNECTIONS=$(($(ulimit -n) - 256))
fi

echo "bench: building (release)..." >&2
cargo build --release -p postfix-adapter-tools --bin loadgen
cargo build --release --bin userli-postfix-adapter
L=target/release/loadgen
ADAPTER=target/release/userli-postfix-adapter

rows=()
run() {
    echo "bench: loadgen $*" >&2
    local out
    out="$("$L" --markdown "$@")"
    while IFS= read -r line; do
        rows+=("$line")
    done <<<"$out"
}

start=$(date +%s)

run --label "1000 keys, backend 0 ms" compare --duration "$DURATION" --keys 1000
run --label "adapter, backend 1 ms (1000 keys)" adapter --duration "$DURATION" --keys 1000 --backend-latency 1ms
run --label "miss-overhead (fresh keys, backend 1 ms)" miss-overhead --duration "$DURATION" --backend-latency 1ms
run --label "cold-key (1000 concurrent, backend 50 ms, 3 rounds)" cold-key --concurrency 1000 --rounds 3 --backend-latency 50ms
run --label "backend down (mixed maps)" adapter --duration "$DURATION" --backend-down --map mix

# Idle connections against the release binary on the demo fixture, as its own process.
log="$(mktemp)"
LOOKUP_BACKEND=fixture FIXTURE_PATH=examples/fixtures/demo.toml \
    SOCKETMAP_LISTEN_ADDR=127.0.0.1:0 METRICS_LISTEN_ADDR=127.0.0.1:0 \
    MAX_CONNECTIONS=$((IDLE_CONNECTIONS + 100)) LOG_FORMAT=json LOG_LEVEL=info \
    "$ADAPTER" >"$log" 2>&1 &
adapter_pid=$!
cleanup() {
    kill "$adapter_pid" 2>/dev/null || true
    wait "$adapter_pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT
addr=""
for _ in $(seq 100); do
    addr="$(sed -n 's/.*"addr":"\([^"]*\)".*"msg":"socketmap server listening".*/\1/p; s/.*"msg":"socketmap server listening".*"addr":"\([^"]*\)".*/\1/p' "$log" | head -n1)"
    [ -n "$addr" ] && break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "bench: the adapter did not report its socketmap address:" >&2
    cat "$log" >&2
    exit 1
fi
run --label "idle (release binary, fixture backend)" idle --addr "$addr" --server-pid "$adapter_pid" \
    --connections "$IDLE_CONNECTIONS" --probe "mailbox user@example.org"
cleanup
trap - EXIT

echo "bench: scenarios took $(($(date +%s) - start)) s on $(nproc) CPUs" >&2
mkdir -p target/bench
{
    "$L" markdown-header
    printf '%s\n' "${rows[@]}"
} | tee target/bench/results.md
