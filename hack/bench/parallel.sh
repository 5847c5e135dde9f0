#!/usr/bin/env bash
# Parallelism benchmark: three independent stages that each `RUN sleep 3`, and a final stage that
# copies a file from each, built with --no-cache against a private containerd and registry. The
# solver runs independent vertices concurrently, so the three RUNs should take about 3 s of wall
# time together, not 9. Prints the build's wall time, the RUN vertices' summed durations and the
# RUN wall time (first RUN start to last RUN end, from --progress json as it streams).
#
#   hack/bench/parallel.sh
#
# Environment: MEMOBUILD_BIN (binary to time; default: `cargo build --release`, then
# target/release/memobuild), BENCH_RUNS (builds to time, default 1), BENCH_SLEEP (seconds each RUN
# sleeps, default 3). Needs what hack/setup.sh installs; starts and stops its own services in a
# temporary directory.
set -eu -o pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

RUNS="${BENCH_RUNS:-1}"
SLEEP="${BENCH_SLEEP:-3}"

if [[ -n "${MEMOBUILD_BIN:-}" ]]; then
	BIN="$(cd "$(dirname "$MEMOBUILD_BIN")" && pwd -P)/$(basename "$MEMOBUILD_BIN")"
else
	ensure_cargo
	(cd "$REPO_ROOT" && cargo build --release --quiet --bin memobuild)
	BIN="$REPO_ROOT/target/release/memobuild"
fi
[[ -x "$BIN" ]] || die "no memobuild binary at $BIN"

STATE_DIR="$(mktemp -d /tmp/memobuild-bench.XXXXXX)"
# shellcheck disable=SC2034 # read by cleanup_state_dir (lib.sh)
STATE_DIR_OWNED=1
trap_cleanup
bash "$HACK_DIR/services.sh" start "$STATE_DIR"
bash "$HACK_DIR/base-image.sh" "$STATE_DIR"
# shellcheck disable=SC1091 # written by services.sh
. "$STATE_DIR/env"

CTX="$STATE_DIR/context"
mkdir -p "$CTX"
{
	echo 'ARG REGISTRY'
	for s in a b c; do
		echo "FROM \${REGISTRY}/library/busybox:latest AS $s"
		echo "RUN sleep $SLEEP && echo $s > /$s"
	done
	echo "FROM \${REGISTRY}/library/busybox:latest"
	for s in a b c; do echo "COPY --from=$s /$s /$s"; done
} >"$CTX/Dockerfile"

# Prefix each line with the time it arrived (bash 5's EPOCHREALTIME: no fork per line).
stamp() {
	local line
	while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done
}

for run in $(seq "$RUNS"); do
	events="$STATE_DIR/events.$run"
	start="$EPOCHREALTIME"
	if ! "$BIN" build --containerd "$MEMOBUILD_TEST_CONTAINERD" --state-dir "$STATE_DIR/state" \
		--build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" --no-cache --progress json \
		--output "type=oci,dest=$STATE_DIR/out.tar" "$CTX" 2>&1 >"$STATE_DIR/digest" | stamp >"$events"; then
		cut -d' ' -f2- "$events" >&2
		die "build failed"
	fi
	end="$EPOCHREALTIME"
	# serde_json writes keys in order: duration_ms, name, state, vertex.
	awk -v start="$start" -v end="$end" -v run="$run" '
		/"name":"[^"]*RUN / && /"state":"started"/ { if (first == "" || $1 < first) first = $1 }
		/"name":"[^"]*RUN / && /"state":"completed"/ {
			n++
			if ($1 > last) last = $1
			if (match($0, /"duration_ms":[0-9]+/)) sum += substr($0, RSTART + 14, RLENGTH - 14) / 1000
		}
		END {
			if (n == 0) { print "no RUN vertex completed" > "/dev/stderr"; exit 1 }
			printf "run %d: build wall time %.2f s; %d RUNs, summed RUN durations %.2f s; RUN wall time %.2f s (overlap %.1fx)\n",
				run, end - start, n, sum, last - first, sum / (last - first)
		}' "$events"
done
