#!/usr/bin/env bash
# Team cache benchmark: a build on a fresh state directory (a fresh CI runner) with and without
# a warm remote cache (`memobuild server`) that another state directory filled.
#   bash hack/bench/remote-cache.sh [FILES]     (default 2000 source files)
# Prints wall times in seconds. Needs root (containerd).
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
    bash hack/services.sh stop "$work/svc" >/dev/null 2>&1 || true
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
bench_context "$ctx" "$files"
# Steps that cost something to run, which the team cache saves.
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

mbuild() {
    "$mb" build --containerd "$MEMOBUILD_TEST_CONTAINERD" --state-dir "$1" \
        --build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" --progress plain \
        --output "type=oci,dest=$work/mb.tar" "${@:2}" "$ctx"
}
edit() { echo "<h1>v$1</h1>" > "$ctx/static/index.html"; }

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

printf '%-34s %10.2f\n' "fresh state dir, warm remote cache" "$mb_l3"
printf '%-34s %10.2f\n' "fresh state dir, no remote cache" "$mb_fresh"
printf '%-34s %10.1fx\n' "speed-up from the remote cache" "$(echo "scale=1; $mb_fresh / $mb_l3" | bc)"
