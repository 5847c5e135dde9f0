#!/usr/bin/env bash
# Rebuild benchmark (issue 14): MemoBuild, as `memobuild build` on a running containerd, as
# `memobuild build` with its embedded containerd (the default where none runs), and through
# `memobuild daemon`, against buildkitd when one is given and buildah --layers (Debian's)
# otherwise, on the same Dockerfile and generated contexts.
#
#   bash hack/bench/rebuild.sh [SIZE...]     SIZE: files in the context; default "3 2000"
#                                            (2,000 files are 16 MB; 100000 gives 100,000 / 1 GB)
#   RUNS=N                                   runs per rebuild scenario (default 3; medians)
#
# Against BuildKit: BUILDCTL=/path/to/buildctl BUILDKIT_ADDR=unix:///path/buildkitd.sock and
# REGISTRY=host:port, a registry holding library/busybox:latest that the buildkitd reaches over
# plain HTTP (`http = true` in its buildkitd.toml). buildctl is then also the client of
# `memobuild daemon`, so both daemons are driven alike. This script never builds BuildKit.
#
# Scenarios: a cold build, a no-op rebuild, an edit of one file only the last COPY reads, and
# an edit of one file under `COPY src/` (that COPY and the RUN after it run again). Every build
# writes an OCI archive. Cold builds are run RUNS times too, each from nothing: buildkitd
# pruned, MemoBuild on a new state directory and containerd namespace (so the base image is
# unpacked again), the embedded containerd a new one; the daemon's cold build is its first. The floor of a no-op is a bare parallel walk that lstats every entry
# of the context (worker/examples/fingerprint.rs --floor): what a no-op cannot go below.
set -eu -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=hack/lib.sh
. hack/lib.sh
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(3 2000)
runs=${RUNS:-3}

bash hack/setup.sh >&2
ensure_cargo
# Everything (containerd root, state directories, contexts) goes under BENCH_TMP, /var/tmp by
# default. Give the compared builder's root the same file system: on some machines making an
# inode costs far more in one directory tree than another (on the development VM, 0.55 ms in
# /tmp against 0.02 ms in /var/tmp), which alone moves a cold build by 0.1 s.
work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/mb-bench.XXXXXX")
cleanup() {
    [ -n "${daemon_pid:-}" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    # The embedded containerds linger after their builds (--containerd-linger): stop them.
    for pid in "$work"/mbe-state-*/containerd/containerd.pid; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
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
registry=${REGISTRY:-$MEMOBUILD_TEST_REGISTRY}
cargo build --release --locked -q
cargo build --release --locked -q -p memobuild-worker --example fingerprint
mb="$PWD/target/release/memobuild"
fp="$PWD/target/release/examples/fingerprint"

bk=""
if [ -n "${BUILDCTL:-}" ] && [ -n "${BUILDKIT_ADDR:-}" ]; then bk=buildkitd; fi
other=${bk:-buildah}

sock="$work/mb.sock"
"$mb" daemon --addr "unix://$sock" --state-dir "$work/daemon-state" \
    --containerd "$MEMOBUILD_TEST_CONTAINERD" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

# The builders: NAME CONTEXT. `gen` numbers a builder's state: each cold build starts one.
gen=0
build_mb() {
    "$mb" build --containerd "$MEMOBUILD_TEST_CONTAINERD" --namespace "mb-$size-$gen" \
        --state-dir "$work/mb-state-$size-$gen" \
        --build-arg "REGISTRY=$registry" --progress plain --output "type=oci,dest=$work/out.tar" "$1"
}
buildctl_on() {
    "$BUILDCTL" --addr "$1" build --frontend dockerfile.v0 --local "context=$2" \
        --local "dockerfile=$2" --opt "build-arg:REGISTRY=$registry" \
        --output "type=oci,dest=$work/out.tar"
}
build_embedded() {
    "$mb" build --containerd embedded --state-dir "$work/mbe-state-$size-$gen" \
        --build-arg "REGISTRY=$registry" --progress plain --output "type=oci,dest=$work/out.tar" "$1"
}
build_daemon() {
    if [ -n "$bk" ]; then
        buildctl_on "unix://$sock" "$1"
    else
        "$mb" build --addr "unix://$sock" --build-arg "REGISTRY=$registry" --progress plain \
            --output "type=oci,dest=$work/out.tar" "$1"
    fi
}
build_other() {
    if [ -n "$bk" ]; then
        buildctl_on "$BUILDKIT_ADDR" "$1"
    else
        buildah --root "$work/buildah" --runroot "$work/buildah-run" --storage-driver overlay \
            bud --layers --tls-verify=false --build-arg "REGISTRY=$registry" \
            -t bench:latest -f "$1/Dockerfile" "$1"
    fi
}

# scenarios BUILDER CONTEXT: "cold noop edit-last edit-src" medians.
scenarios() {
    local b=$1 ctx=$2 cold=() noop=() last=() src=() i colds=$runs pid
    # The daemon's state is the running daemon's: its cold build is its first.
    [ "$b" = build_daemon ] && colds=1
    for i in $(seq "$colds"); do
        gen=$((gen + 1))
        # Cold means cold: buildkitd's cache is emptied first (MemoBuild's state is new).
        if [ "$b" = build_other ] && [ -n "$bk" ]; then
            "$BUILDCTL" --addr "$BUILDKIT_ADDR" prune --all >/dev/null
        fi
        # The previous cold build's embedded containerd is not needed any more.
        pid="$work/mbe-state-$size-$((gen - 1))/containerd/containerd.pid"
        if [ "$b" = build_embedded ] && [ -f "$pid" ]; then kill "$(cat "$pid")" 2>/dev/null || true; fi
        cold+=("$(timed "$b" "$ctx")")
    done
    for i in $(seq "$runs"); do noop+=("$(timed "$b" "$ctx")"); done
    for i in $(seq "$runs"); do
        echo "<h1>$b $i</h1>" >"$ctx/static/index.html"
        last+=("$(timed "$b" "$ctx")")
    done
    local victim
    victim=$(find "$ctx/src" -type f | sort | head -1)
    for i in $(seq "$runs"); do
        echo "$b $i" >>"$victim"
        src+=("$(timed "$b" "$ctx")")
    done
    echo "$(printf '%s\n' "${cold[@]}" | median) $(printf '%s\n' "${noop[@]}" | median) $(printf '%s\n' "${last[@]}" | median) $(printf '%s\n' "${src[@]}" | median)"
}

ratio() { echo "scale=2; $1 / $2" | bc | sed 's/^\./0./'; }
client=$([ -n "$bk" ] && echo buildctl || echo "memobuild build --addr")
printf 'medians of %s runs; daemon client: %s; against: %s\n' "$runs" "$client" "$other"
printf '%-16s %-26s %9s %9s %9s %9s %6s %6s %6s\n' context scenario memobuild embedded daemon \
    "$other" mb/x emb/x dmn/x
for n in "${sizes[@]}"; do
    size=$n
    ctx="$work/ctx-$n"
    # Each builder gets its own copy: edits of one run do not reach another's cache.
    bench_context "$ctx-mb" "$n"
    cp -a "$ctx-mb" "$ctx-emb"
    cp -a "$ctx-mb" "$ctx-daemon"
    cp -a "$ctx-mb" "$ctx-other"
    # Real contexts are older than the stat cache's racy window (files changed within 2 s of
    # being hashed are hashed again next time); so are these.
    sleep 2.1
    read -r m0 m1 m2 m3 <<<"$(scenarios build_mb "$ctx-mb")"
    read -r e0 e1 e2 e3 <<<"$(scenarios build_embedded "$ctx-emb")"
    read -r d0 d1 d2 d3 <<<"$(scenarios build_daemon "$ctx-daemon")"
    read -r o0 o1 o2 o3 <<<"$(scenarios build_other "$ctx-other")"
    floor=$("$fp" --floor "$ctx-mb" | sed 's/.*seconds=//')
    label="$n files"
    for row in "cold:$m0:$e0:$d0:$o0" "no-op:$m1:$e1:$d1:$o1" \
        "edit read by the last COPY:$m2:$e2:$d2:$o2" "edit under COPY src/:$m3:$e3:$d3:$o3"; do
        IFS=: read -r name m e d o <<<"$row"
        printf '%-16s %-26s %9.3f %9.3f %9.3f %9.3f %6s %6s %6s\n' "$label" "$name" "$m" "$e" \
            "$d" "$o" "$(ratio "$m" "$o")" "$(ratio "$e" "$o")" "$(ratio "$d" "$o")"
        label=""
    done
    times="n/a"
    if [ "$(echo "$floor > 0" | bc)" = 1 ]; then times="$(echo "scale=1; $m1 / $floor" | bc)x"; fi
    printf '%-16s %-26s %9.3f   (memobuild no-op: %s the floor)\n' "" "floor: parallel lstat walk" \
        "$floor" "$times"
done
