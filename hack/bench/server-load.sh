#!/usr/bin/env bash
# Load on `memobuild server` (issue 16): CLIENTS concurrent clients (8) for SECONDS (60), each
# doing what a build does against the team server, on loopback: look a step up (a miss),
# upload a 256 KiB layer and its record, look it up again (a hit) and read the layer back,
# report the build, and every tenth round read the stats. Prints requests per second, p50/p99/
# max latency per kind of request and the errors (none allowed: exit 1 if any).
#
#   bash hack/bench/server-load.sh [CLIENTS [SECONDS]]
#
# The server runs from this checkout's release build over a fresh store, with a token.
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
CLIENTS="${1:-8}"
SECONDS_="${2:-60}"
ensure_cargo
cd "$REPO_ROOT"
cargo build --release --locked --bin memobuild -p memobuild -q
cargo build --release --locked -p memobuild-worker --example server_load -q
work="$(mktemp -d /tmp/memobuild-load.XXXXXX)"
server=""
cleanup() {
	[[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
target/release/memobuild server --listen 127.0.0.1:0 --store "$work/store" --token load-token \
	>"$work/out" 2>"$work/log" &
server=$!
for _ in $(seq 100); do
	url="$(sed -n 's/^listening on //p' "$work/out")"
	[[ -n "$url" ]] && break
	sleep 0.1
done
[[ -n "$url" ]] || die "the server did not start: $(cat "$work/log")"
log "server at $url, $CLIENTS clients for $SECONDS_ s"
rc=0
target/release/examples/server_load "$url" load-token "$CLIENTS" "$SECONDS_" || rc=$?
log "server RSS at the end: $(ps -o rss= -p "$server") KiB, store: $(du -sh "$work/store" | cut -f1)"
exit "$rc"
