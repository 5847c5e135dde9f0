#!/usr/bin/env bash
# The demo: build hack/demo/ with MemoBuild on a private containerd, import the OCI archive it
# writes into that containerd and run the image. Everything lives in a throwaway state dir
# (set MEMOBUILD_TEST_STATE_DIR to keep it). Debian 12, as root.
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

cargo build --release --locked
memobuild="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/memobuild"

log "building hack/demo"
"$memobuild" build \
	--containerd "$MEMOBUILD_TEST_CONTAINERD" \
	--state-dir "$STATE_DIR/memobuild" \
	--build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" \
	--progress plain \
	--output "type=oci,dest=$STATE_DIR/demo.tar" \
	hack/demo

# ctr 1.6 silently imports nothing from an OCI archive whose index has no ref-name annotation
# unless it is told a name: --index-name names the whole index, whatever the archive holds.
ctr=(ctr --address "$MEMOBUILD_TEST_CONTAINERD" --namespace memobuild-demo)
"${ctr[@]}" images import --index-name memobuild/demo:latest "$STATE_DIR/demo.tar"
log "running memobuild/demo:latest"
# stdin from /dev/null: ctr 1.6 never passes EOF on, so a command reading stdin would hang.
"${ctr[@]}" run --rm memobuild/demo:latest memobuild-demo </dev/null
