#!/usr/bin/env bash
# Installs the Debian packages the adapter's demo and test suite use, if missing:
# postfix (postmap, smtpd for interop tests), swaks (SMTP client), redis-server.
set -euo pipefail

missing=()
command -v postmap >/dev/null 2>&1 || missing+=(postfix)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
if [ "${1:-}" != "--postfix-only" ]; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
fi
command -v curl >/dev/null 2>&1 || missing+=(curl)
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
