#!/usr/bin/env bash
# Stress: what a hostile tester does to MemoBuild, with figures.
#
#   bash hack/stress.sh [KILLS] [BUILDS]     (default 20 kills, 8 concurrent builds)
#
# 1. kill -9 loop: a build is killed KILLS times at random points (0.1-3 s in), each time on
#    the same state directory; then a clean build must give the digest a build on a fresh state
#    directory gives, and no container, netns or temporary of the killed builds may remain.
# 2. BUILDS concurrent builds on one state directory and one remote cache server: the stamping
#    step must execute exactly once across all of them, and every image carries its stamp.
# 3. Slow clients against the team server (hack/stress/server-slow-clients.sh, if present).
set -eu -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib.sh
. hack/lib.sh
kills=${1:-20}
builds=${2:-8}

bash hack/setup.sh
ensure_cargo
work=$(mktemp -d /tmp/mb-stress.XXXXXX)
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
ns="stress-$$"

ctx="$work/ctx"
mkdir -p "$ctx/src"
for i in $(seq 200); do head -c 20000 /dev/urandom | base64 > "$ctx/src/f$i.txt"; done
cat > "$ctx/Dockerfile" <<'EOF'
ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
COPY src/ /src/
RUN cat /src/*.txt | md5sum > /sum && sleep 1
RUN tar -cf /src.tar /src && sleep 1
COPY src/f1.txt /last.txt
EOF

build() { # STATE-DIR [args...]
    "$mb" build --containerd "$MEMOBUILD_TEST_CONTAINERD" --namespace "$ns" --state-dir "$1" \
        --build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" --progress plain \
        --output "type=oci,dest=$work/out.tar" "${@:2}" "$ctx"
}

echo "== 1. kill -9 loop ($kills kills)"
clean=$(build "$work/clean-state" 2>/dev/null | tail -1)
state="$work/killed-state"
for i in $(seq "$kills"); do
    build "$state" >/dev/null 2>&1 &
    pid=$!
    sleep "$(awk -v s="$RANDOM" 'BEGIN { srand(s); printf "%.2f", 0.1 + rand() * 2.9 }')"
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
left_containers=$(ctr -a "$MEMOBUILD_TEST_CONTAINERD" -n "$ns" containers ls -q | wc -l)
after=$(build "$state" 2>/dev/null | tail -1)
left_after=$(ctr -a "$MEMOBUILD_TEST_CONTAINERD" -n "$ns" containers ls -q | wc -l)
netns_left=$(ls /run/netns 2>/dev/null | grep -c '^memobuild-' || true)
tmp_left=$( (find "$state/tmp" -type f; find "$state/blobs/sha256" -maxdepth 1 -name '.tmp-*') 2>/dev/null | wc -l)
echo "clean digest:          $clean"
echo "after $kills kills:     $after"
echo "containers left by the killed builds: $left_containers before the clean build, $left_after after it"
echo "netns left: $netns_left; temporaries left: $tmp_left"
[ "$clean" = "$after" ] || { echo "FAIL: digests differ"; exit 1; }

echo "== 2. $builds concurrent builds, one state dir, one remote cache"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token=stress-token
"$mb" server --listen "127.0.0.1:$port" --store "$work/l3" --token "$token" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
echo "stamp $RANDOM" > "$ctx/src/f1.txt"
pids=()
for i in $(seq "$builds"); do
    "$mb" build --containerd "$MEMOBUILD_TEST_CONTAINERD" --namespace "$ns" --state-dir "$work/shared" \
        --build-arg "REGISTRY=$MEMOBUILD_TEST_REGISTRY" --progress json \
        --remote-cache "http://127.0.0.1:$port" --remote-cache-token "$token" --no-build-report \
        --output "type=local,dest=$work/c$i" "$ctx" >"$work/c$i.out" 2>"$work/c$i.err" &
    pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
runs=$(cat "$work"/c*.err | grep '"state":"started"' | grep -c 'md5sum' || true)
sums=$(cat "$work"/c*/sum | sort -u | wc -l)
echo "builds failed: $failed; the md5sum step executed $runs time(s); distinct results: $sums"
[ "$failed" = 0 ] && [ "$runs" = 1 ] && [ "$sums" = 1 ] || { echo "FAIL"; exit 1; }
kill "$server_pid"; server_pid=

if [ -x hack/stress/server-slow-clients.sh ] || [ -f hack/stress/server-slow-clients.sh ]; then
    echo "== 3. slow clients against the team server"
    bash hack/stress/server-slow-clients.sh
fi
echo "stress: ok"
