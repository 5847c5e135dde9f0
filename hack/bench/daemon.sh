#!/usr/bin/env bash
# Rebuild benchmark through `memobuild daemon`, and against a buildkitd when one is given.
#
#   bash hack/bench/daemon.sh [FILES] [RUNS]      (default 2000 files, 5 runs per scenario)
#
# Scenarios (issue 14's Dockerfile): a cold build, a no-op rebuild, and a rebuild after editing
# one file that only the last COPY reads; wall-time medians over RUNS runs, the context sent
# over the session each time (the daemon keeps the client's copy and asks only for what
# changed). The client is `memobuild build --addr`, or buildctl when BUILDCTL names one.
#
# Against BuildKit: with BUILDCTL=/path/to/buildctl and BUILDKIT_ADDR=unix:///path/buildkitd.sock
# (a buildkitd you started, which reaches this script's registry over plain HTTP: pass
# REGISTRY=host:port of a registry holding library/busybox:latest and mark it `http = true` in
# its buildkitd.toml), the same scenarios run on it with buildctl and the ratios are printed.
# With BUILDX=1 instead of BUILDCTL, the client is `docker buildx build` (the buildx plugin of
# the docker CLI), with a temporary remote builder for each daemon.
# This script never builds BuildKit.
set -eu -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=hack/lib.sh
. hack/lib.sh
files=${1:-2000}
runs=${2:-5}

bash hack/setup.sh
ensure_cargo
work=$(mktemp -d /tmp/mb-bench-daemon.XXXXXX)
cleanup() {
    if [ -n "${BUILDX:-}" ]; then
        docker buildx rm "mbbench-mb-$$" >/dev/null 2>&1 || true
        docker buildx rm "mbbench-bk-$$" >/dev/null 2>&1 || true
    fi
    [ -n "${daemon_pid:-}" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    bash hack/services.sh stop "$work/svc" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
bash hack/services.sh start "$work/svc" >&2
bash hack/base-image.sh "$work/svc" >&2
# shellcheck disable=SC1091
. "$work/svc/env"
registry=${REGISTRY:-$MEMOBUILD_TEST_REGISTRY}
cargo build --release --locked -q
mb="$PWD/target/release/memobuild"

sock="$work/mb.sock"
MEMOBUILD_LOG=memobuild::daemon=debug "$mb" daemon --addr "unix://$sock" --state-dir "$work/state" \
    --containerd "$MEMOBUILD_TEST_CONTAINERD" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

ctx="$work/ctx"
bench_context "$ctx" "$files"

edit() { echo "<h1>v$1</h1>" > "$ctx/static/index.html"; }

if [ -n "${BUILDX:-}" ]; then
    docker buildx create --name "mbbench-mb-$$" --driver remote "unix://$sock" >/dev/null
    if [ -n "${BUILDKIT_ADDR:-}" ]; then
        docker buildx create --name "mbbench-bk-$$" --driver remote "$BUILDKIT_ADDR" >/dev/null
    fi
fi

# build ADDR: one build of the context on the daemon at ADDR, exported as an OCI tar.
build() {
    if [ -n "${BUILDX:-}" ]; then
        local builder="mbbench-bk-$$"
        [ "$1" = "unix://$sock" ] && builder="mbbench-mb-$$"
        docker buildx build --builder "$builder" --progress plain \
            --build-arg "REGISTRY=$registry" --output "type=oci,dest=$work/out.tar" "$ctx"
    elif [ -n "${BUILDCTL:-}" ]; then
        "$BUILDCTL" --addr "$1" build --frontend dockerfile.v0 --local "context=$ctx" \
            --local "dockerfile=$ctx" --opt "build-arg:REGISTRY=$registry" \
            --output "type=oci,dest=$work/out.tar"
    else
        "$mb" build --addr "$1" --build-arg "REGISTRY=$registry" --progress plain \
            --output "type=oci,dest=$work/out.tar" "$ctx"
    fi
}

# scenario ADDR: prints "cold noop edit" medians for the daemon at ADDR.
scenario() {
    local addr=$1 cold noop=() edits=() i
    edit 0
    cold=$(timed build "$addr")
    for i in $(seq "$runs"); do noop+=("$(timed build "$addr")"); done
    for i in $(seq "$runs"); do edit "$i"; edits+=("$(timed build "$addr")"); done
    echo "$cold $(printf '%s\n' "${noop[@]}" | median) $(printf '%s\n' "${edits[@]}" | median)"
}

read -r mb_cold mb_noop mb_edit <<<"$(scenario "unix://$sock")"
client=${BUILDCTL:+buildctl}
[ -n "${BUILDX:-}" ] && client="docker buildx build"
printf 'context: %s files; client: %s; medians of %s runs\n' "$files" "${client:-memobuild build --addr}" "$runs"
if [ -n "${BUILDKIT_ADDR:-}" ] && [ -n "${BUILDCTL:-}${BUILDX:-}" ]; then
    read -r bk_cold bk_noop bk_edit <<<"$(scenario "$BUILDKIT_ADDR")"
    ratio() { echo "scale=2; $1 / $2" | bc; }
    printf '%-28s %10s %10s %8s\n' "" memobuild buildkitd "mb/bk"
    printf '%-28s %10.3f %10.3f %8s\n' "cold build" "$mb_cold" "$bk_cold" "$(ratio "$mb_cold" "$bk_cold")"
    printf '%-28s %10.3f %10.3f %8s\n' "no-op rebuild" "$mb_noop" "$bk_noop" "$(ratio "$mb_noop" "$bk_noop")"
    printf '%-28s %10.3f %10.3f %8s\n' "one-file edit (last COPY)" "$mb_edit" "$bk_edit" "$(ratio "$mb_edit" "$bk_edit")"
else
    printf '%-28s %10s\n' "" memobuild
    printf '%-28s %10.3f\n' "cold build" "$mb_cold"
    printf '%-28s %10.3f\n' "no-op rebuild" "$mb_noop"
    printf '%-28s %10.3f\n' "one-file edit (last COPY)" "$mb_edit"
fi
grep -o 'synced `context` in [^)]*)' "$work/daemon.log" | tail -1 | sed 's/^/last context sync: /' || true
