#!/usr/bin/env bash
# Runs the adapter on the bundled demo data (userli's `basic` fixture set):
# socketmap on 127.0.0.1:10001, metrics/health on 127.0.0.1:10002.
# Try it from another shell:
#   postmap -q user@example.org socketmap:inet:127.0.0.1:10001:mailbox
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --postfix-only
cargo build --release --locked
export LOOKUP_BACKEND=fixture
export FIXTURE_PATH="${FIXTURE_PATH:-examples/fixtures/demo.toml}"
export SOCKETMAP_LISTEN_ADDR="${SOCKETMAP_LISTEN_ADDR:-127.0.0.1:10001}"
export METRICS_LISTEN_ADDR="${METRICS_LISTEN_ADDR:-127.0.0.1:10002}"
export POSTFIX_RECIPIENT_DELIMITER="${POSTFIX_RECIPIENT_DELIMITER:-+}"
export POLICY_LISTEN_ADDR="${POLICY_LISTEN_ADDR:-127.0.0.1:10003}"
export STATE_DIRECTORY="${STATE_DIRECTORY:-target/demo-state}"
export SASL_LISTEN_ADDR="${SASL_LISTEN_ADDR:-127.0.0.1:10004}"
export LOG_FORMAT="${LOG_FORMAT:-text}"
cat <<MSG >&2
Demo adapter on socketmap ${SOCKETMAP_LISTEN_ADDR}, policy ${POLICY_LISTEN_ADDR},
SASL ${SASL_LISTEN_ADDR} (every demo user's password is "password"), metrics ${METRICS_LISTEN_ADDR}. Try:
  postmap -q user@example.org  socketmap:inet:${SOCKETMAP_LISTEN_ADDR}:mailbox
  postmap -q example.org       socketmap:inet:${SOCKETMAP_LISTEN_ADDR}:domain
  postmap -q alias@example.org socketmap:inet:${SOCKETMAP_LISTEN_ADDR}:alias
  postmap -q alias@example.org socketmap:inet:${SOCKETMAP_LISTEN_ADDR}:senders
Stop with Ctrl-C; reload the fixture with: kill -HUP <pid>
MSG
exec target/release/userli-postfix-adapter "$@"
