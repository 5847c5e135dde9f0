#!/usr/bin/env bash
# Build MemoBuild's Dockerfile frontend image (a statically linked `memobuild` on scratch, run
# by BuildKit as `memobuild frontend` for `# syntax=REF`) from this checkout, with MemoBuild
# itself, and push it to REF.
#
#   hack/frontend-image.sh REF          e.g. 127.0.0.1:5000/memobuild/dockerfile:latest
#
# The binary is built here (static glibc, `-C target-feature=+crt-static`), then `memobuild
# build --tag REF` packs it (the embedded engine; a registry on loopback is spoken to over plain
# HTTP). The top-level Dockerfile's `frontend` target builds the same image where rust:1 can be
# pulled. Env: MEMOBUILD (a memobuild to build with; default: this checkout's release build),
# STATIC_MEMOBUILD (an already built static memobuild to pack instead of building one).
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# == 1 ]] || { echo "usage: $0 REF" >&2; exit 2; }
REF="$1"
ensure_cargo
cd "$REPO_ROOT"

static="${STATIC_MEMOBUILD:-}"
if [[ -z "$static" ]]; then
	host=$(rustc -vV | sed -n 's/^host: //p')
	log "building a static memobuild for $host"
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --bin memobuild --target "$host"
	static="target/$host/release/memobuild"
fi
if ldd "$static" 2>&1 | grep -q "=>"; then die "$static is not statically linked"; fi
mb="${MEMOBUILD:-}"
if [[ -z "$mb" ]]; then
	cargo build --release --locked --bin memobuild
	mb="target/release/memobuild"
fi

ctx="$(mktemp -d /tmp/memobuild-frontend-image.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
cp "$static" "$ctx/memobuild"
# The same stage as the top-level Dockerfile's `frontend` target, from the binary built here.
sed -n '/^FROM scratch AS frontend$/,/^ENTRYPOINT/p' Dockerfile \
	| sed 's|^COPY --from=frontend-build /memobuild-static /bin/memobuild$|COPY memobuild /bin/memobuild|' \
	>"$ctx/Dockerfile"
grep -q '^COPY memobuild /bin/memobuild$' "$ctx/Dockerfile" || die "the Dockerfile's frontend stage changed shape"
"$mb" build --tag "$REF" --push "$ctx"
log "pushed $REF"
