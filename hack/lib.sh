#!/usr/bin/env bash
# Shared helpers for hack/*.sh. Source it; it defines functions and a few variables only.
set -eu -o pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck disable=SC2034 # used by the scripts that source this file
REPO_ROOT="$(cd "$HACK_DIR/.." && pwd -P)"
# runc, containerd and friends live in sbin; CI shells do not always have it on PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Make cargo (installed with rustup) reachable without installing anything.
ensure_cargo() {
	if ! command -v cargo >/dev/null 2>&1; then
		local env="${CARGO_HOME:-${HOME:-/root}/.cargo}/env"
		# shellcheck disable=SC1090
		[[ -f "$env" ]] && . "$env"
	fi
	command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup first)"
}

# Absolute, symlink-free path of a directory, creating it if needed.
abs_dir() {
	mkdir -p "$1"
	(cd "$1" && pwd -P)
}

# For scripts that take the one argument DIR of a `hack/services.sh start DIR`: sets DIR and
# exports what DIR/env names (MEMOBUILD_TEST_CONTAINERD, MEMOBUILD_TEST_REGISTRY, …).
load_services_env() {
	[[ $# == 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
	DIR="$(abs_dir "$1")"
	[[ -f "$DIR/env" ]] || die "$DIR/env missing: run hack/services.sh start $DIR first"
	# shellcheck source=/dev/null
	. "$DIR/env"
}

# Per-run state dir for test.sh and demo.sh: $MEMOBUILD_TEST_STATE_DIR if set (kept afterwards),
# otherwise a fresh temporary dir (removed afterwards). Sets STATE_DIR and STATE_DIR_OWNED.
make_state_dir() {
	if [[ -n "${MEMOBUILD_TEST_STATE_DIR:-}" ]]; then
		STATE_DIR="$(abs_dir "$MEMOBUILD_TEST_STATE_DIR")"
		STATE_DIR_OWNED=0
	else
		STATE_DIR="$(mktemp -d /tmp/memobuild-test.XXXXXX)"
		STATE_DIR_OWNED=1
	fi
}

# EXIT trap for test.sh and demo.sh: stop the services, then drop the state dir if we made it.
cleanup_state_dir() {
	local rc=$?
	set +e
	bash "$HACK_DIR/postgres.sh" stop "$STATE_DIR"
	bash "$HACK_DIR/services.sh" stop "$STATE_DIR"
	if [[ "$STATE_DIR_OWNED" == 1 ]]; then
		rm -rf --one-file-system "$STATE_DIR"
	else
		log "state kept in $STATE_DIR"
	fi
	exit "$rc"
}

# Install cleanup_state_dir for normal exit and for the usual signals (which then exit through it).
trap_cleanup() {
	trap cleanup_state_dir EXIT
	trap 'exit 129' HUP
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# GOARCH for this machine, as OCI image configs want it.
goarch() {
	local arch
	arch="$(dpkg --print-architecture)"
	case "$arch" in
	amd64 | arm64 | s390x | riscv64) echo "$arch" ;;
	i386) echo 386 ;;
	armhf | armel) echo arm ;;
	ppc64el) echo ppc64le ;;
	mips64el) echo mips64le ;;
	*) die "unknown dpkg architecture $arch" ;;
	esac
}

# ----- benchmarks (hack/bench/*.sh) -----

now() { date +%s.%N; }
# timed CMD...: CMD's wall time in seconds; its output is dropped (stderr shown if it fails).
timed() {
    local t0 log
    log=$(mktemp)
    t0=$(now)
    "$@" >/dev/null 2>"$log" || { cat "$log" >&2; rm -f "$log"; return 1; }
    echo "$(now) - $t0" | bc
    rm -f "$log"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# bench_context DIR FILES (the benchmarks' context, issue 14's shape): FILES source files (8 KiB each up to 10,000 files, 10 KiB above),
# plus static/index.html and the Dockerfile.
bench_context() {
    mkdir -p "$1/src" "$1/static"
    python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
n = max(1, n - 2) if n <= 3 else n
size = 8192 if n <= 10000 else 10240
block = os.urandom(1 << 20)
for i in range(n):
    d = os.path.join(root, "src", f"pkg{i % 100}", f"sub{(i // 100) % 100}")
    os.makedirs(d, exist_ok=True)
    off = (i * 7919) % (len(block) - size)
    with open(os.path.join(d, f"mod{i}.txt"), "wb") as f:
        f.write(block[off:off + size])
with open(os.path.join(root, "static", "index.html"), "w") as f:
    f.write("<h1>v0</h1>\n")
PY
    cat >"$1/Dockerfile" <<'EOF'
ARG REGISTRY
FROM ${REGISTRY}/library/busybox:latest
WORKDIR /app
COPY src/ /app/src/
RUN find /app/src -type f | wc -l > /app/count
COPY static/ /app/static/
CMD ["cat", "/app/static/index.html"]
EOF
}
