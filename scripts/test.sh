#!/usr/bin/env bash
# The whole test suite, including the tests that need Postfix, swaks and Redis
# (marked #[ignore = "needs ..."] so that plain `cargo test` stays self-contained).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --workspace --all-features --locked -- --include-ignored "$@"
