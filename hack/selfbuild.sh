#!/usr/bin/env bash
# Build MemoBuild's own image from the top-level Dockerfile with MemoBuild, every stage as
# written, the Rust build stage included (issue 16), then build it again (nothing runs).
#
#   hack/selfbuild.sh DIR    DIR as for hack/services.sh (its env names containerd and the
#                            registry); pushes REGISTRY/memobuild/memobuild:self
#
# Nothing can be pulled from Docker Hub here, so the two public bases are made on this
# machine: `debian:bookworm-slim` by hack/debian-base.sh (debootstrap, Debian's packages) and
# `rust:1-bookworm` by MemoBuild from that base with Debian's compiler packages, this
# machine's Rust toolchain (`rustc --print sysroot`) and its extra CA certificates (a proxy
# that intercepts TLS to crates.io needs them, as cargo on this machine does). The context is
# `git archive HEAD`, so edits in progress do not leak in. The cargo build inside took 400 s
# of a 406 s cold build on 2 cores (the no-op after it, 0.14 s); tests/k8s_job.rs covers the
# rest of the Dockerfile in the suite.
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

load_services_env "$@"
REG="$MEMOBUILD_TEST_REGISTRY"

bash "$HACK_DIR/debian-base.sh" "$DIR"
cd "$REPO_ROOT"
ensure_cargo
cargo build --release --locked --bin memobuild
MB="$REPO_ROOT/target/release/memobuild"
WORK="$DIR/selfbuild"
rm -rf "$WORK/rust-standin" "$WORK/ctx"
mkdir -p "$WORK/rust-standin/ca" "$WORK/ctx"
build() {
	"$MB" build --progress plain --state-dir "$WORK/state" --containerd "$MEMOBUILD_TEST_CONTAINERD" \
		--build-context "debian:bookworm-slim=docker-image://$REG/library/debian:bookworm-slim" "$@"
}

cp /usr/local/share/ca-certificates/*.crt "$WORK/rust-standin/ca/" 2>/dev/null || true
cat >"$WORK/rust-standin/Dockerfile" <<-'EOF'
	FROM debian:bookworm-slim
	RUN apt-get update \
	 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates pkg-config make git \
	 && rm -rf /var/lib/apt/lists/*
	COPY ca/ /usr/local/share/ca-certificates/
	RUN update-ca-certificates
	COPY --from=toolchain / /usr/local/rust/
	ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	RUN rustc -vV && cargo -V
EOF
log "making the rust:1-bookworm stand-in"
build --build-context "toolchain=$(rustc --print sysroot)" -t "$REG/library/rust:1-bookworm" --push \
	"$WORK/rust-standin"

git archive HEAD | tar -x -C "$WORK/ctx"
image="$REG/memobuild/memobuild:self"
for run in cold no-op; do
	log "building the top-level Dockerfile ($run)"
	start=$(date +%s.%N)
	build --build-context "rust:1-bookworm=docker-image://$REG/library/rust:1-bookworm" \
		-t "$image" --push "$WORK/ctx" 2>&1 | tee "$WORK/$run.log" | grep -E '^#[0-9]+ (\[|DONE|CACHED|ERROR)|^pushed|^error' || true
	[[ ${PIPESTATUS[0]} == 0 ]] || die "the $run build failed: $WORK/$run.log"
	log "$run build: $(echo "$(date +%s.%N) - $start" | bc) s"
done
log "pushed $image; \`ctr run\` it with \`memobuild --version\` to try it"
