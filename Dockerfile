# Builds MemoBuild itself: a build stage with the Rust toolchain and protoc with the well-known
# types (containerd-client's build needs them), and a slim runtime stage with the binary plus
# the containerd and runc it drives, git (with ssh) for git contexts and sources, and ip and
# slirp4netns for RUN's default network; `memobuild k8s job` runs this image.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY frontend frontend
COPY worker worker
COPY src src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin memobuild \
 && cp target/release/memobuild /usr/local/bin/memobuild

# MemoBuild's Dockerfile frontend as a `# syntax=` image (`docker buildx build --target frontend`):
# a static `memobuild` on scratch that BuildKit runs as `memobuild frontend`, LLBBridge over its
# stdin/stdout. hack/frontend-image.sh builds the same stage from a binary built on the host.
FROM build AS frontend-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --bin memobuild \
      --target "$(rustc -vV | sed -n 's/^host: //p')" \
 && cp target/*/release/memobuild /memobuild-static

FROM scratch AS frontend
COPY --from=frontend-build /memobuild-static /bin/memobuild
LABEL moby.buildkit.frontend.network.none="true"
LABEL moby.buildkit.frontend.caps="moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests,moby.buildkit.frontend.contexts"
ENTRYPOINT ["/bin/memobuild", "frontend"]

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates containerd runc git openssh-client \
      iproute2 slirp4netns \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/memobuild /usr/local/bin/memobuild
ENTRYPOINT ["/usr/local/bin/memobuild"]
CMD ["--help"]
