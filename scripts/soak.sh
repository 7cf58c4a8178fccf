#!/usr/bin/env bash
# Soak test: runs the release binary on the demo fixture under a sustained mixed
# load (socketmap lookups, policy requests, SASL logins) with tools/src/bin/soak.rs,
# samples its memory, file descriptors and latency over time, and plots the result.
#
#   scripts/soak.sh                               # 10 minutes of load
#   SOAK_DURATION=60s scripts/soak.sh             # a quick check
#   SOAK_ARGS="--socketmap-rate 5000" scripts/soak.sh   # more arguments for the soak
#   SOAK_UPDATE_DOCS=1 scripts/soak.sh             # plots into docs/img (the committed ones)
#   SOAK_FIXTURE=examples/fixtures/demo.toml scripts/soak.sh   # the fixture verbatim
#   SOAK_IDLE_CONNECTIONS=0 scripts/soak.sh       # without the 10,000 idle connections
#
# Writes target/soak/soak.csv (one row per sample, see tools/src/bin/soak.rs),
# target/soak/adapter.log (the adapter's warnings and errors) and the PNGs
# soak-rss.png and soak-latency.png (scripts/plot-soak.py, needs matplotlib).
#
# The adapter runs with SASL_FAILURE_DELAY=0 (wrong passwords in the load must not
# be throttled), POSTFIX_RECIPIENT_DELIMITER=+ (the load's `+tag` keys expect it)
# and a global sending quota of 10^9 per hour and day added to a copy of the demo
# fixture: the demo users have no quota, and without one the policy server answers
# DUNNO without touching its quota store; with it every request by a demo user
# is counted in the store (and saved to STATE_DIRECTORY every 5 s), yet can never
# be over quota.
#
# The adapter inherits the environment, so allocator experiments need no edit:
#   MALLOC_ARENA_MAX=2 scripts/soak.sh
#
# Exit status: 0 when the soak passed (no error, no unanswered or wrong reply), the
# adapter exited 0 on SIGTERM and the plots were written; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${SOAK_DURATION:-10m}"
# Held open through the whole soak besides the active load (Postfix keeps idle
# socketmap connections; 10,000 is the upstream default connection limit).
IDLE="${SOAK_IDLE_CONNECTIONS:-10000}"
# The committed plots change only when asked for.
if [ "${SOAK_UPDATE_DOCS:-0}" = 1 ]; then
    PLOT_DIR="${SOAK_PLOT_DIR:-docs/img}"
else
    PLOT_DIR="${SOAK_PLOT_DIR:-target/soak}"
fi
OUT_DIR=target/soak
CSV="$OUT_DIR/soak.csv"
LOG="$OUT_DIR/adapter.log"
read -r -a EXTRA_ARGS <<<"${SOAK_ARGS:-}"

echo "soak: building (release)..." >&2
scripts/install-deps.sh --soak
echo "soak: building (release; a few minutes the first time)..." >&2
cargo build --release -p postfix-adapter-tools --bin soak
cargo build --release --bin userli-postfix-adapter
SOAK=target/release/soak
ADAPTER=target/release/userli-postfix-adapter

mkdir -p "$OUT_DIR"
tmp="$(mktemp -d)"
adapter_pid=""
cleanup() {
    if [ -n "$adapter_pid" ] && kill -0 "$adapter_pid" 2>/dev/null; then
        kill -KILL "$adapter_pid" 2>/dev/null || true
        wait "$adapter_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

if [ -n "${SOAK_FIXTURE:-}" ]; then
    fixture="$SOAK_FIXTURE"
else
    fixture="$tmp/demo-with-quota.toml"
    sed -e 's/^smtp_quota_limit_per_hour = 0$/smtp_quota_limit_per_hour = 1000000000/' \
        -e 's/^smtp_quota_limit_per_day = 0$/smtp_quota_limit_per_day = 1000000000/' \
        examples/fixtures/demo.toml >"$fixture"
    if [ "$(grep -c '^smtp_quota_limit_per_[a-z]* = 1000000000$' "$fixture")" != 2 ]; then
        echo "soak: could not set the global quota in a copy of examples/fixtures/demo.toml" >&2
        exit 1
    fi
fi

# Four free loopback ports: bound together (so they differ) and released; the
# adapter binds them a moment later. With LOG_LEVEL=warn it does not log its
# addresses, so they are fixed here.
read -r SOCKETMAP_PORT METRICS_PORT POLICY_PORT SASL_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')

# As in production (LimitNOFILE), give the adapter room for its connection limits;
# below them it warns at start-up.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "soak: starting the adapter on $fixture" >&2
LOOKUP_BACKEND=fixture FIXTURE_PATH="$fixture" \
    SOCKETMAP_LISTEN_ADDR="127.0.0.1:$SOCKETMAP_PORT" \
    METRICS_LISTEN_ADDR="127.0.0.1:$METRICS_PORT" \
    POLICY_LISTEN_ADDR="127.0.0.1:$POLICY_PORT" \
    SASL_LISTEN_ADDR="127.0.0.1:$SASL_PORT" \
    SASL_FAILURE_DELAY=0 POSTFIX_RECIPIENT_DELIMITER=+ \
    MAX_CONNECTIONS=$((IDLE + 1000)) \
    STATE_DIRECTORY="$tmp/state" LOG_LEVEL=warn LOG_FORMAT=json \
    "$ADAPTER" >"$LOG" 2>&1 &
adapter_pid=$!

# Ready when every listener accepts a connection.
ready=""
for _ in $(seq 100); do
    if ! kill -0 "$adapter_pid" 2>/dev/null; then
        break
    fi
    ready=yes
    for port in "$SOCKETMAP_PORT" "$METRICS_PORT" "$POLICY_PORT" "$SASL_PORT"; do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            ready=""
            break
        fi
    done
    [ -n "$ready" ] && break
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "soak: the adapter did not come up; its log:" >&2
    cat "$LOG" >&2
    exit 1
fi

echo "soak: adapter pid $adapter_pid; loading for $DURATION" >&2
soak_rc=0
"$SOAK" \
    --socketmap "127.0.0.1:$SOCKETMAP_PORT" \
    --policy "127.0.0.1:$POLICY_PORT" \
    --sasl "127.0.0.1:$SASL_PORT" \
    --pid "$adapter_pid" \
    --duration "$DURATION" \
    --out "$CSV" \
    --idle-connections "$IDLE" \
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} || soak_rc=$?

# A clean stop: SIGTERM drains and exits 0 within SHUTDOWN_GRACE_PERIOD (10 s).
adapter_rc=""
if kill -0 "$adapter_pid" 2>/dev/null; then
    kill -TERM "$adapter_pid"
    for _ in $(seq 300); do
        kill -0 "$adapter_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$adapter_pid" 2>/dev/null; then
        echo "soak: the adapter did not exit within 30 s of SIGTERM" >&2
        kill -KILL "$adapter_pid" 2>/dev/null || true
    fi
fi
adapter_rc=0
wait "$adapter_pid" || adapter_rc=$?
adapter_pid=""

plot_rc=0
python3 scripts/plot-soak.py "$CSV" "$PLOT_DIR" || plot_rc=$?

log_lines="$(wc -l <"$LOG")"
echo >&2
echo "soak: CSV          $CSV" >&2
if [ "$plot_rc" = 0 ]; then
    echo "soak: plots        $PLOT_DIR/soak-rss.png $PLOT_DIR/soak-latency.png" >&2
else
    echo "soak: plots        NOT DRAWN (scripts/plot-soak.py exit $plot_rc; is python3-matplotlib installed?); the CSV has the data" >&2
fi
echo "soak: adapter log  $LOG ($log_lines lines at LOG_LEVEL=warn)" >&2
if [ "$log_lines" != 0 ]; then
    tail -n 5 "$LOG" | sed 's/^/    /' >&2
fi
echo "soak: soak exit $soak_rc, adapter exit $adapter_rc after SIGTERM" >&2
if [ "$soak_rc" != 0 ] || [ "$adapter_rc" != 0 ]; then
    echo "soak: FAIL (the load or the adapter failed)" >&2
    exit 1
fi
if [ "$plot_rc" != 0 ]; then
    # The adapter passed; only the pictures are missing: a different exit code.
    echo "soak: PASS, but the plots could not be drawn" >&2
    exit 2
fi
echo "soak: PASS" >&2
