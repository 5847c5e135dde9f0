#!/usr/bin/env bash
# Formatting and clippy, exactly as CI runs them (warnings are errors). Runs both, fails if either fails.
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_cargo
cd "$REPO_ROOT"
rc=0
cargo fmt --all -- --check || rc=1
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings || rc=1
exit "$rc"
