#!/usr/bin/env bash
# Push a stand-in for `debian:bookworm-slim`, made from Debian's own packages, to the test
# registry as REGISTRY/library/debian:bookworm-slim (nothing can be pulled from Docker Hub here).
#
#   hack/debian-base.sh DIR   DIR as for hack/services.sh (its env names the registry)
#
# `debootstrap --variant=minbase bookworm` from deb.debian.org gives the same package set the
# official image starts from (Essential + apt); docs, man pages, apt lists and caches are
# dropped as the slim variant drops them, and apt is set up as there (docker-clean). The root filesystem is kept in DIR/debian-rootfs.tar
# so a second run on the same DIR only packs and pushes. Nothing happens when the registry
# already has the image.
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

load_services_env "$@"

IMAGE="docker://$MEMOBUILD_TEST_REGISTRY/library/debian:bookworm-slim"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SKOPEO=(skopeo --insecure-policy)

if "${SKOPEO[@]}" inspect --tls-verify=false "$IMAGE" >/dev/null 2>&1; then
	log "already in the registry: $IMAGE"
	exit 0
fi
command -v debootstrap >/dev/null || die "debootstrap missing: run hack/setup.sh"

ROOTFS_TAR="$DIR/debian-rootfs.tar"
WORK="$DIR/debian-base"
rm -rf "$WORK"
mkdir -p "$WORK"

if [[ ! -s "$ROOTFS_TAR" ]]; then
	log "debootstrap --variant=minbase bookworm from $MIRROR"
	debootstrap --variant=minbase bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
		{ tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
	# What the slim image leaves out, and what only the machine that made it needs.
	rm -rf "$WORK"/rootfs/usr/share/{doc,man,info,locale}/* \
		"$WORK"/rootfs/var/lib/apt/lists/* "$WORK"/rootfs/var/cache/apt/*.bin \
		"$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/log/* \
		"$WORK"/rootfs/debootstrap
	# apt settings of the official image (debuerreotype's): no package caches or downloaded
	# .debs left in layers, no translations, compressed indexes.
	cat >"$WORK/rootfs/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	echo 'Acquire::Languages "none";' >"$WORK/rootfs/etc/apt/apt.conf.d/docker-no-languages"
	echo 'Acquire::GzipIndexes "true";' >"$WORK/rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
	# The image's own resolver settings come from the runtime, as in the official image.
	: >"$WORK/rootfs/etc/resolv.conf"
	echo bookworm-slim >"$WORK/rootfs/etc/hostname"
	tar -C "$WORK/rootfs" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
	mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
	rm -rf "$WORK/rootfs"
fi

LAYOUT="$WORK/oci"
BUNDLE="$WORK/bundle"
CREATED="2025-05-20T00:00:00Z"
umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:latest"
umoci unpack --image "$LAYOUT:latest" "$BUNDLE"
tar -C "$BUNDLE/rootfs" --numeric-owner -xpf "$ROOTFS_TAR"
umoci repack --image "$LAYOUT:latest" --history.created "$CREATED" \
	--history.created_by "hack/debian-base.sh: debootstrap --variant=minbase bookworm" "$BUNDLE"
umoci config --image "$LAYOUT:latest" --no-history --created "$CREATED" \
	--architecture "$(goarch)" --os linux \
	--config.cmd bash \
	--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci gc --layout "$LAYOUT"

"${SKOPEO[@]}" copy --quiet --dest-tls-verify=false "oci:$LAYOUT:latest" "$IMAGE"
digest="$("${SKOPEO[@]}" inspect --tls-verify=false --format '{{.Digest}}' "$IMAGE")"
rm -rf "$WORK"
log "pushed $IMAGE ($digest)"
