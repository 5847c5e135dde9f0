#!/usr/bin/env bash
# Rebuild benchmark: MemoBuild against buildah --layers (Debian's) on the same Dockerfile and
# context: a cold build, a no-op rebuild, a rebuild after editing one file that only the last
# COPY reads, and (MemoBuild only) a fresh state directory against a warm remote cache.
#   bash hack/bench/rebuild.sh [FILES]     (default 2000 source files)
# Prints wall times in seconds and the ratios. Needs root (containerd, buildah).
set -eu -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=hack/lib.sh
. hack/lib.sh
files=${1:-2000}

bash hack/setup.sh
ensure_cargo
work=$(mktemp -d /tmp/mb-bench.XXXXXX)
cleanup() {
    [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
    buildah --root "$work/buildah" --runroot "$work/buildah-run" rm -a >/dev/null 2>&1 || true
    bash hack/services.sh stop "$work/svc" >/dev/null 2>&1 || true
    umount -R "$work/buildah" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
bash hack/services.sh start "$work/svc" >&2
bash hack/base-image.sh "$work/svc" >&2
# shellcheck disable=SC1091
. "$work/svc/env"
cargo build --release --locked -q
mb="$PWD/target/release/memobuild"

ctx="$work/ctx"
mkdir -p "$ctx/src" "$ctx/static"
python3 - "$ctx" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, "src", f"pkg{i % 50}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"mod{i}.txt"), "w") as f:
        f.write(f"module {i}\n" * 200)
with open(os.path.join(root, "static", "index.html"), "w") as f:
    f.write("<h1>v1</h1>\n")
PY
cat > "$ctx/Dockerfile" <<'EOF'
ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
WORKDIR /app
COPY src/ /app/src/
RUN find /app/src -type f | sort | xargs md5sum > /app/sums && sleep 1
RUN tar -cf /app/src.tar -C /app src
COPY static/ /app/static/
CMD ["cat", "/app/static/index.html"]
EOF

now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >/dev/null 2>&1; echo "$(now) - $t0" | bc; }

mbuild() {
    "$mb" build --containerd "$MEMOBUILD_TEST_CONTAINERD" --state-dir "$1" \
        --build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" --progress plain \
        --output "type=oci,dest=$work/mb.tar" "${@:2}" "$ctx"
}
bbuild() {
    buildah --root "$work/buildah" --runroot "$work/buildah-run" --storage-driver overlay \
        bud --layers --tls-verify=false --build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" \
        -t bench:latest -f "$ctx/Dockerfile" "$ctx"
}
edit() { echo "<h1>v$1</h1>" > "$ctx/static/index.html"; }

edit 1; mb_cold=$(timed mbuild "$work/mb-state")
mb_noop=$(timed mbuild "$work/mb-state")
edit 2; mb_edit=$(timed mbuild "$work/mb-state")

edit 1; bh_cold=$(timed bbuild)
bh_noop=$(timed bbuild)
edit 2; bh_edit=$(timed bbuild)

# Remote cache: machine A fills it, machine B (fresh state dir) builds from it.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Writes need a token (a server without one refuses them).
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
MEMOBUILD_SERVER_TOKEN=$token "$mb" server --listen "127.0.0.1:$port" --store "$work/l3" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
edit 3
export MEMOBUILD_REMOTE_CACHE_TOKEN=$token
mbuild "$work/mb-a" --remote-cache "http://127.0.0.1:$port" >/dev/null 2>&1
mb_l3=$(timed mbuild "$work/mb-b" --remote-cache "http://127.0.0.1:$port")
mb_fresh=$(timed mbuild "$work/mb-c")

ratio() { echo "scale=1; $1 / $2" | bc; }
printf '%-34s %10s %10s %8s\n' "" memobuild buildah "ratio"
printf '%-34s %10.2f %10.2f %7sx\n' "cold build" "$mb_cold" "$bh_cold" "$(ratio "$bh_cold" "$mb_cold")"
printf '%-34s %10.2f %10.2f %7sx\n' "no-op rebuild" "$mb_noop" "$bh_noop" "$(ratio "$bh_noop" "$mb_noop")"
printf '%-34s %10.2f %10.2f %7sx\n' "one-file edit (last COPY)" "$mb_edit" "$bh_edit" "$(ratio "$bh_edit" "$mb_edit")"
printf '%-34s %10.2f\n' "fresh state dir, warm remote cache" "$mb_l3"
printf '%-34s %10.2f\n' "fresh state dir, no remote cache" "$mb_fresh"
