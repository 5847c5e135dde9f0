#!/usr/bin/env bash
# Layer compression benchmark: one image whose big layer is a typical context (a Python standard
# library, text and compiled files, plus this repository's sources; ~60 MB of tar), built once,
# then exported to an OCI layout with each compression setting. For each setting it prints the
# size of that layer, the time MemoBuild took to convert it (from its `layers as …: N
# compressed in S` line: decompress the stored gzip-6 blob, check the diff ID, compress), the
# time a second, remembered export of it took, and how long `gzip -dc`/`zstd -dc` (what a
# runtime pays when it pulls) take to decompress it. gzip-6 is the build-time default: nothing
# to convert.
#
#   bash hack/bench/compression.sh [DIR]     (default: /usr/lib/python3.<N>)
#
# Environment: MEMOBUILD_BIN (binary to time; default: `cargo build --release`, then
# target/release/memobuild). Needs what hack/setup.sh installs (and root, for containerd);
# starts and stops its own services in a temporary directory.
set -eu -o pipefail
# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

SRC="${1:-$(find /usr/lib -maxdepth 1 -name 'python3.*' -type d | sort | tail -n 1)}"
[[ -d "$SRC" ]] || die "no directory to use as the context (give one as the first argument)"

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
bash "$HACK_DIR/services.sh" start "$STATE_DIR" >&2
bash "$HACK_DIR/base-image.sh" "$STATE_DIR" >&2
# shellcheck disable=SC1091 # written by services.sh
. "$STATE_DIR/env"

CTX="$STATE_DIR/context"
mkdir -p "$CTX/lib" "$CTX/src"
cp -a "$SRC/." "$CTX/lib/"
(cd "$REPO_ROOT" && git ls-files -z | xargs -0 cp --parents -t "$CTX/src" 2>/dev/null) || true
cat >"$CTX/Dockerfile" <<'EOF'
ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
COPY . /app
EOF

build() {
	"$BIN" build --containerd "$MEMOBUILD_TEST_CONTAINERD" --state-dir "$STATE_DIR/state" \
		--build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" --progress plain "$@" "$CTX"
}

# The biggest layer of the OCI layout in $1: "digest size media-type".
big_layer() {
	python3 - "$1" <<'PY'
import json, sys, os
d = sys.argv[1]
blob = lambda dg: os.path.join(d, "blobs/sha256", dg.split(":", 1)[1])
idx = json.load(open(os.path.join(d, "index.json")))
m = json.load(open(blob(idx["manifests"][0]["digest"])))
l = max(m["layers"], key=lambda l: l["size"])
print(blob(l["digest"]), l["size"], l["mediaType"])
PY
}

now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

log "first build (makes the layers, gzip-6)"
build --output "type=oci,tar=false,dest=$STATE_DIR/out-first" >/dev/null 2>"$STATE_DIR/first.log" ||
	{ cat "$STATE_DIR/first.log" >&2; die "build failed"; }
read -r first_blob _ _ < <(big_layer "$STATE_DIR/out-first")
tar_size="$(gzip -dc "$first_blob" | wc -c)"
printf 'context: %s + repository sources; layer tar %.1f MB; %s cores\n' "$SRC" \
	"$(awk -v s="$tar_size" 'BEGIN { print s / 1e6 }')" "$(nproc)"
printf '%-14s %10s %7s %12s %12s %12s\n' setting "size MB" ratio "convert s" "again s" "decompress s"

for setting in gzip:6 gzip:1 gzip:9 zstd:1 zstd:3 zstd:9 zstd:19 uncompressed:0; do
	algo="${setting%%:*}"
	level="${setting#*:}"
	opts="compression=$algo"
	[[ "$algo" == uncompressed ]] || opts="$opts,compression-level=$level"
	out="$STATE_DIR/out-$algo-$level"
	build --output "type=oci,tar=false,dest=$out,$opts" >/dev/null 2>"$out.log" ||
		{ cat "$out.log" >&2; die "export $opts failed"; }
	convert="$(sed -n 's/.* compressed in \([0-9.]*\)s.*/\1/p' "$out.log" | head -n 1)"
	t0="$(now)"
	build --output "type=oci,tar=false,dest=$out.again,$opts" >/dev/null 2>"$out.again.log"
	t1="$(now)"
	read -r path size _ < <(big_layer "$out")
	case "$algo" in
	gzip) dec=(gzip -dc) ;;
	zstd) dec=(zstd -dcq) ;;
	*) dec=(cat) ;;
	esac
	d0="$(now)"
	"${dec[@]}" "$path" >/dev/null
	d1="$(now)"
	printf '%-14s %10.1f %7.2f %12s %12s %12s\n' "$algo-$level" \
		"$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" \
		"$(awk -v s="$size" -v t="$tar_size" 'BEGIN { print s / t }')" \
		"${convert:-0 (none)}" "$(elapsed "$t0" "$t1")" "$(elapsed "$d0" "$d1")"
done
echo "(again s: the whole second \`memobuild build\` with that output, every step cached and the conversion remembered)"
