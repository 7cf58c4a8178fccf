#!/usr/bin/env bash
# Installs the Debian packages the adapter's demo and test suite use, if missing.
#   --postfix-only: postfix (postmap), swaks, curl (the demo itself needs none)
#   --soak: python3-matplotlib only (scripts/soak.sh draws its plots with it)
#   tests: also redis-server, openssl (certificates for the rediss:// tests),
#          prometheus (promtool, for tests/operator_kit.rs), systemd
#          (systemd-analyze, for tests/deploy_files.rs), postgresql and
#          mariadb-server (the SQL backend's tests start throw-away servers of
#          their own) and postfix-pgsql (Postfix's pgsql: map, for the SQL
#          benchmark's floor)
set -euo pipefail

# What each use needs, by the command (or Python module) that shows it is there.
case "${1:-}" in
  --soak) wanted=(matplotlib) ;;
  --postfix-only) wanted=(postmap swaks curl) ;;
  *) wanted=(postmap swaks curl redis-server openssl promtool systemd-analyze pg_ctlcluster mariadbd postfix-pgsql) ;;
esac
package_of() {
  case "$1" in
    postmap) echo postfix ;;
    promtool) echo prometheus ;;
    systemd-analyze) echo systemd ;;
    matplotlib) echo python3-matplotlib ;;
    pg_ctlcluster) echo postgresql ;;
    mariadbd) echo mariadb-server ;;
    *) echo "$1" ;;
  esac
}
present() {
  if [ "$1" = matplotlib ]; then
    python3 -c 'import matplotlib' >/dev/null 2>&1
  elif [ "$1" = postfix-pgsql ]; then
    [ -e /usr/lib/postfix/postfix-pgsql.so ]
  elif [ "$1" = mariadbd ]; then
    [ -x /usr/sbin/mariadbd ]
  else
    command -v "$1" >/dev/null 2>&1
  fi
}
missing=()
for want in "${wanted[@]}"; do
  present "$want" || missing+=("$(package_of "$want")")
done
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
# Likewise the database servers: the tests start servers of their own.
for server in postgresql mariadb; do
  if printf '%s\n' "${missing[@]}" | grep -qx "$server\(-server\)\?" && command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl disable --now "$server" >/dev/null 2>&1 || true
  fi
done
