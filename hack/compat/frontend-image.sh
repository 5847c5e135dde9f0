#!/usr/bin/env bash
# Compatibility check of MemoBuild's frontend image under a stock BuildKit (by hand; CI has
# none): every case of the frontend's golden corpus (frontend/testdata/lower/*) is built by the
# buildkitd at BUILDKIT_ADDR with buildctl (BUILDCTL) twice, as written and with
# `# syntax=IMAGE` on top, and the two results are compared: manifest digest, image config
# (without `created`) and every layer's entries (name, mode, owner, size, type).
#
#   BUILDCTL=/path/buildctl BUILDKIT_ADDR=unix:///…/buildkitd.sock REGISTRY=127.0.0.1:PORT \
#   IMAGE=127.0.0.1:PORT/memobuild/dockerfile:latest bash hack/compat/frontend-image.sh
#
# REGISTRY holds library/busybox:latest (hack/base-image.sh), which stands in for `busybox` in
# the cases; the buildkitd must reach it over plain HTTP. Cases whose Dockerfile needs what this
# machine has not (other images, the internet, ssh agents, secrets) fail on buildkitd as written
# and are listed as skipped. This script never builds BuildKit.
set -eu -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
: "${BUILDCTL:?path of buildctl}" "${BUILDKIT_ADDR:?address of a buildkitd}" "${REGISTRY:?registry host:port}" "${IMAGE:?frontend image}"
work=$(mktemp -d /tmp/memobuild-compat.XXXXXX)
trap 'rm -rf "$work"' EXIT

summary() { # summary TAR → the manifest digest, then the config and layer entries
	python3 - "$1" <<'PY'
import gzip, io, json, sys, tarfile
t = tarfile.open(sys.argv[1])
blob = lambda d: t.extractfile("blobs/sha256/" + d.split(":")[1]).read()
idx = json.loads(t.extractfile("index.json").read())
desc = idx["manifests"][0]
m = json.loads(blob(desc["digest"]))
if "manifests" in m:
    desc = m["manifests"][0]
    m = json.loads(blob(desc["digest"]))
print("manifest", desc["digest"])
c = json.loads(blob(m["config"]["digest"]))
c.pop("created", None)
for h in c.get("history", []):
    h.pop("created", None)
print(json.dumps(c, sort_keys=True))
for l in m["layers"]:
    data = blob(l["digest"])
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    for e in tarfile.open(fileobj=io.BytesIO(data)).getmembers():
        print("L", e.name, oct(e.mode), e.uid, e.gid, e.size, e.type)
PY
}

same=0 differ=0 skipped=0
for case in frontend/testdata/lower/*/; do
	name=$(basename "$case")
	ctx="$work/$name"
	cp -r "$case" "$ctx"
	sed -i -E "s#^((FROM|from)( --platform=[^ ]+)? )busybox#\1$REGISTRY/library/busybox#" "$ctx/Dockerfile"
	opts=()
	if [[ -f "$ctx/options" ]]; then
		while IFS= read -r line; do
			case "$line" in
			target=*) opts+=(--opt "$line") ;;
			build-arg=*) opts+=(--opt "build-arg:${line#build-arg=}") ;;
			attr=*) opts+=(--opt "${line#attr=}") ;;
			esac
		done <"$ctx/options"
	fi
	{ echo "# syntax=$IMAGE"; cat "$ctx/Dockerfile"; } >"$ctx/Dockerfile.syntax"
	out="$work/out-$name"
	mkdir -p "$out"
	build() { # build FILE: the case built by the buildkitd from FILE into $out/FILE.tar
		timeout 300 "$BUILDCTL" --addr "$BUILDKIT_ADDR" build --frontend dockerfile.v0 \
			--local context="$ctx" --local dockerfile="$ctx" --opt filename="$1" "${opts[@]}" \
			--output "type=oci,dest=$out/$1.tar" >"$out/$1.log" 2>&1
	}
	if ! build Dockerfile; then
		echo "skip    $name: buildkitd fails on it as written: $(grep -m1 -i error "$out/Dockerfile.log" | cut -c1-120)"
		skipped=$((skipped + 1))
		continue
	fi
	if ! build Dockerfile.syntax; then
		echo "DIFFER  $name: fails through the image: $(grep -m1 -i error "$out/Dockerfile.syntax.log" | cut -c1-160)"
		differ=$((differ + 1))
		continue
	fi
	if diff <(summary "$out/Dockerfile.tar") <(summary "$out/Dockerfile.syntax.tar") >"$out/diff"; then
		echo "same    $name"
		same=$((same + 1))
	else
		echo "DIFFER  $name:"
		head -20 "$out/diff" | cut -c1-300 | sed 's/^/          /'
		differ=$((differ + 1))
	fi
done
echo "same: $same, different: $differ, skipped: $skipped"
[[ $differ == 0 ]]
