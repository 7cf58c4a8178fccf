#!/usr/bin/env bash
# Builds the Debian package: target/debian/userli-postfix-adapter_<version>_<arch>.deb
#
#   scripts/package-deb.sh
#   dpkg -i target/debian/userli-postfix-adapter_*.deb
#
# It holds the binary (/usr/bin), the systemd unit and the socket units (not
# enabled: set the token first), the env file /etc/userli-postfix-adapter/
# userli-postfix-adapter.env (a conffile: never overwritten on upgrade), the
# README, the docs and the `--help` text under /usr/share/doc, and the license.
# The package creates the system user userli-postfix-adapter and, when Postfix is
# installed, its SASL socket directory /var/spool/postfix/userli-postfix-adapter.
# Uses cargo-deb (installed from crates.io when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deb --version >/dev/null 2>&1; then
    echo "package-deb: installing cargo-deb (a few minutes, once)..." >&2
    cargo install --locked cargo-deb
fi
echo "package-deb: building the release binary..." >&2
cargo build --release --locked --bin userli-postfix-adapter

# The files the package installs that differ from the repository's: the unit with
# the package's paths, and the --help text.
assets=target/debian-assets
rm -rf "$assets"
mkdir -p "$assets"
sed -e 's|/usr/local/bin/userli-postfix-adapter|/usr/bin/userli-postfix-adapter|' \
    -e 's|^EnvironmentFile=/etc/userli-postfix-adapter.env|EnvironmentFile=/etc/userli-postfix-adapter/userli-postfix-adapter.env|' \
    -e 's|^# User=userli-postfix-adapter|User=userli-postfix-adapter|' \
    -e 's|^# ReadWritePaths=/var/spool/postfix/userli-postfix-adapter|ReadWritePaths=-/var/spool/postfix/userli-postfix-adapter|' \
    deploy/systemd/userli-postfix-adapter.service >"$assets/userli-postfix-adapter.service"
cp deploy/systemd/userli-postfix-adapter-*.socket "$assets/"
sed -e 's|^# /etc/userli-postfix-adapter.env|# /etc/userli-postfix-adapter/userli-postfix-adapter.env|' \
    deploy/systemd/userli-postfix-adapter.env >"$assets/userli-postfix-adapter.env"
target_dir="${CARGO_TARGET_DIR:-target}"
"$target_dir/release/userli-postfix-adapter" --help >"$assets/userli-postfix-adapter.help.txt"

cargo deb --no-build --locked -p userli-postfix-adapter
ls "$target_dir"/debian/userli-postfix-adapter_*.deb
