#!/usr/bin/env bash
# Formatting and clippy, exactly as CI runs them (warnings are errors).
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_cargo
cd "$REPO_ROOT"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
