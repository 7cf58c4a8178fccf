#!/usr/bin/env bash
# Installs the Debian packages the adapter's demo and test suite use, if missing.
#   --postfix-only: postfix (postmap), swaks, curl (the demo itself needs none)
#   tests: also redis-server, openssl (certificates for the rediss:// tests),
#          prometheus (promtool, for tests/operator_kit.rs) and systemd
#          (systemd-analyze, for tests/deploy_files.rs)
set -euo pipefail

missing=()
command -v postmap >/dev/null 2>&1 || missing+=(postfix)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${1:-}" != "--postfix-only" ]; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}" >&2
# Preseed so the postfix package installs without asking questions; "Local only"
# keeps the system instance off the network.
printf '%s\n' \
  "postfix postfix/main_mailer_type select Local only" \
  "postfix postfix/mailname string localhost" | $sudo debconf-set-selections
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
# Only promtool is wanted from the prometheus package: do not leave a Prometheus
# server running (it would also hold port 9090) on hosts where systemd starts it.
if printf '%s\n' "${missing[@]}" | grep -qx prometheus && command -v systemctl >/dev/null 2>&1; then
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
