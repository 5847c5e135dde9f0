#!/usr/bin/env bash
# The one command that runs every check, for people and CI alike (Debian 12, as root): installs
# what is missing, starts a private containerd + registry under a per-run state dir, pushes the
# base image, then runs hack/lint.sh and `cargo test`. Tests find the services through
# MEMOBUILD_TEST_CONTAINERD, MEMOBUILD_TEST_REGISTRY and MEMOBUILD_TEST_STATE, and the Python
# tools (hack/pytools.sh) through MEMOBUILD_TEST_PYTOOLS, a PostgreSQL (hack/postgres.sh) through
# MEMOBUILD_TEST_POSTGRES.
# Set MEMOBUILD_TEST_STATE_DIR to use (and keep) a given state dir; extra arguments go to
# `cargo test` (e.g. `hack/test.sh -- --nocapture`).
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

bash "$HACK_DIR/setup.sh"
ensure_cargo
cd "$REPO_ROOT"

make_state_dir
trap_cleanup
bash "$HACK_DIR/services.sh" start "$STATE_DIR"
bash "$HACK_DIR/base-image.sh" "$STATE_DIR"
# shellcheck source=/dev/null
. "$STATE_DIR/env"
# The team server's PostgreSQL backend is tested against a real server.
bash "$HACK_DIR/postgres.sh" start "$STATE_DIR"
# shellcheck source=/dev/null
. "$STATE_DIR/postgres.env"
export MEMOBUILD_TEST_POSTGRES
# Python tools the tests call (kubernetes-validate), kept under target/ between runs.
MEMOBUILD_TEST_PYTOOLS="$(bash "$HACK_DIR/pytools.sh" "$REPO_ROOT/target/pytools")"
export MEMOBUILD_TEST_PYTOOLS

# Run the tests even when lint fails, so one CI run reports both.
lint=0
bash "$HACK_DIR/lint.sh" || lint=$?
tests=0
cargo test --workspace --locked "$@" || tests=$?

log "lint: $( ((lint)) && echo FAILED || echo ok), tests: $( ((tests)) && echo FAILED || echo ok)"
if ((tests)); then exit "$tests"; fi
exit "$lint"
