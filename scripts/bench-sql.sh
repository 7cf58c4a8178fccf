#!/usr/bin/env bash
# The SQL backend against local PostgreSQL, next to Postfix's own pgsql: map,
# queried the same way: one `postmap -q -` process reading every key from stdin
# (so process start-up is paid once), against
#   - `pgsql:` (Postfix's client, one query per key, the floor),
#   - the adapter's socketmap, uncached (the first pass: every key a database query),
#   - the adapter's socketmap, cached (the same keys again).
# Both ask the same query, PostfixAdmin's mailbox lookup, of a throw-away
# PostgreSQL (its own data directory and port) holding KEYS mailboxes.
# Prints a Markdown table (also in target/bench/sql.md).
#
#   scripts/bench-sql.sh           # 20,000 keys
#   scripts/bench-sql.sh 50000
#
# Needs root (PostgreSQL runs as its own user), postgresql, postfix and
# postfix-pgsql (scripts/install-deps.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS="${1:-20000}"

cargo build --release -q --bin userli-postfix-adapter
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /tmp/bench-sql.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

mkdir "$work/data" && chown postgres: "$work/data"
runuser -u postgres -- "$pgbin/initdb" -A trust -U postgres --no-sync -D "$work/data" >/dev/null
pgport=$(free_port)
runuser -u postgres -- "$pgbin/postgres" -D "$work/data" -p "$pgport" -k "$work/data" \
  -c listen_addresses=127.0.0.1 -c fsync=off >"$work/postgres.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  psql -h 127.0.0.1 -p "$pgport" -U postgres -Atc 'SELECT 1' >/dev/null 2>&1 && break
  sleep 0.1
done
psql -q -h 127.0.0.1 -p "$pgport" -U postgres -c 'CREATE DATABASE postfixadmin'
psql -q -h 127.0.0.1 -p "$pgport" -U postgres -d postfixadmin <<SQL
CREATE TABLE mailbox (username varchar(255) PRIMARY KEY, password varchar(255) NOT NULL,
  local_part varchar(255), domain varchar(255), active boolean NOT NULL DEFAULT true);
INSERT INTO mailbox SELECT 'user' || i || '@example.org', 'x', 'user' || i, 'example.org', true
  FROM generate_series(1, $KEYS) i;
ANALYZE mailbox;
SQL
query="SELECT 1 FROM mailbox WHERE username='%s' AND active = '1'"
seq "$KEYS" | sed 's/^/user/; s/$/@example.org/' | shuf --random-source=<(yes) >"$work/keys"

mkdir "$work/postfix"
echo 'compatibility_level = 3.6' >"$work/postfix/main.cf"
cat >"$work/mailbox.cf" <<CF
hosts = 127.0.0.1:$pgport
user = postgres
password = unused
dbname = postfixadmin
query = $query
CF

aport=$(free_port)
LOOKUP_BACKEND=sql SQL_URL="postgres://postgres@127.0.0.1:$pgport/postfixadmin" \
  SQL_QUERY_MAILBOX="$query" SOCKETMAP_LISTEN_ADDR="127.0.0.1:$aport" \
  METRICS_LISTEN_ADDR=127.0.0.1:0 POLICY_LISTEN_ADDR=off STATE_DIRECTORY="$work/state" \
  LOOKUP_CACHE_PERSIST=false LOG_LEVEL=warn \
  target/release/userli-postfix-adapter >"$work/adapter.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$aport") 2>/dev/null && break; sleep 0.1; done

# One pass of postmap over every key: prints "seconds found".
pass() {
  local start end found
  start=$(date +%s.%N)
  found=$(postmap -c "$work/postfix" -q - "$1" <"$work/keys" | wc -l)
  end=$(date +%s.%N)
  echo "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }') $found"
}
row() {
  local name=$1 seconds=$2 found=$3
  [ "$found" -eq "$KEYS" ] || { echo "$name: only $found of $KEYS keys found" >&2; exit 1; }
  awk -v name="$name" -v n="$KEYS" -v s="$seconds" \
    'BEGIN { printf "| %s | %d | %.0f | %.1f µs |\n", name, n, n / s, s * 1000000 / n }'
}
read -r floor_s floor_n < <(pass "pgsql:$work/mailbox.cf")
read -r cold_s cold_n < <(pass "socketmap:inet:127.0.0.1:$aport:mailbox")
read -r warm_s warm_n < <(pass "socketmap:inet:127.0.0.1:$aport:mailbox")
mkdir -p target/bench
{
  echo "| Path (one \`postmap -q -\` process, $KEYS PostfixAdmin mailboxes in local PostgreSQL) | keys | lookups/s | per lookup |"
  echo "|---|---|---|---|"
  row "Postfix's \`pgsql:\` map (the floor)" "$floor_s" "$floor_n"
  row "adapter, \`LOOKUP_BACKEND=sql\`, uncached (every key a query)" "$cold_s" "$cold_n"
  row "adapter, cached (the same keys again)" "$warm_s" "$warm_n"
} | tee target/bench/sql.md
