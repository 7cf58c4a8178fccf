#!/usr/bin/env bash
# Runs the adapter on the bundled demo data (userli's `basic` fixture set), with
# every listener on loopback: socketmap 127.0.0.1:10001, metrics/health
# 127.0.0.1:10002, policy 127.0.0.1:10003, SASL 127.0.0.1:10004.
#
# Needs nothing but Rust (1.88 or newer): the first build takes a few minutes.
# Before serving it shows what the demo data answers, with the adapter's own
# `query` command; Postfix's `postmap -q` is the real client (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: building the adapter (release; the first build takes a few minutes)..." >&2
cargo build --release --locked --bin userli-postfix-adapter
adapter="${CARGO_TARGET_DIR:-target}/release/userli-postfix-adapter"

export LOOKUP_BACKEND=fixture
export FIXTURE_PATH="${FIXTURE_PATH:-examples/fixtures/demo.toml}"
export SOCKETMAP_LISTEN_ADDR="${SOCKETMAP_LISTEN_ADDR:-127.0.0.1:10001}"
export METRICS_LISTEN_ADDR="${METRICS_LISTEN_ADDR:-127.0.0.1:10002}"
export POSTFIX_RECIPIENT_DELIMITER="${POSTFIX_RECIPIENT_DELIMITER:-+}"
export POLICY_LISTEN_ADDR="${POLICY_LISTEN_ADDR:-127.0.0.1:10003}"
export STATE_DIRECTORY="${STATE_DIRECTORY:-target/demo-state}"
export SASL_LISTEN_ADDR="${SASL_LISTEN_ADDR:-127.0.0.1:10004}"
export LOG_FORMAT="${LOG_FORMAT:-text}"

echo "demo: what the demo data answers ($adapter query MAP KEY):" >&2
for question in "mailbox user@example.org" "mailbox user+tag@example.org" \
  "domain example.org" "alias alias@example.org" "senders alias@example.org" \
  "mailbox nobody@example.org"; do
  # shellcheck disable=SC2086 # MAP and KEY are two words on purpose
  # Exit 1 is NOTFOUND, an answer too; anything else shows what went wrong.
  answer="$("$adapter" query $question 2>/tmp/demo-query.err)" || {
    rc=$?
    [ "$rc" = 1 ] || answer="query failed (exit $rc): $(tail -1 /tmp/demo-query.err)"
  }
  printf '  %-30s %s\n' "$question" "$answer" >&2
done

cat <<MSG >&2

demo: serving on socketmap ${SOCKETMAP_LISTEN_ADDR}, policy ${POLICY_LISTEN_ADDR},
SASL ${SASL_LISTEN_ADDR} (every demo user's password is "password"), metrics
${METRICS_LISTEN_ADDR}. Ask it from another shell the way Postfix does:
  postmap -q user@example.org socketmap:inet:${SOCKETMAP_LISTEN_ADDR}:mailbox
  curl -s http://${METRICS_LISTEN_ADDR}/ready
(postmap comes with Debian's postfix package; see the README if it says
"open /etc/postfix/main.cf".) Stop with Ctrl-C; reload the data with kill -HUP <pid>.

MSG
exec "$adapter" "$@"
