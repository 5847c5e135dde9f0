#!/usr/bin/env bash
# Build the tests' base image from Debian's busybox-static and push it to the private registry as
# $MEMOBUILD_TEST_REGISTRY/library/busybox:latest. Needs `hack/services.sh start DIR` first.
# Does nothing if the registry already has the tag. File times and the config's dates are fixed,
# so the same busybox build gives the same image.
#
#   hack/base-image.sh DIR
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

load_services_env "$@"

IMAGE="docker://$MEMOBUILD_TEST_REGISTRY/library/busybox:latest"
CREATED="2024-01-01T00:00:00Z"
SKOPEO=(skopeo --insecure-policy)

if "${SKOPEO[@]}" inspect --tls-verify=false "$IMAGE" >/dev/null 2>&1; then
	log "already in the registry: $IMAGE"
	exit 0
fi

WORK="$DIR/base-image"
LAYOUT="$WORK/oci"
BUNDLE="$WORK/bundle"
rm -rf "$WORK"
mkdir -p "$WORK"

umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:latest"
umoci unpack --image "$LAYOUT:latest" "$BUNDLE"

# The root filesystem: busybox, a symlink per applet, users root/nobody/app.
ROOTFS="$BUNDLE/rootfs"
install -d -m 755 "$ROOTFS"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,var,home}
install -d -m 700 "$ROOTFS/root"
install -d -m 1777 "$ROOTFS/tmp"
install -d -m 755 -o 1000 -g 1000 "$ROOTFS/home/app"
install -m 755 /bin/busybox "$ROOTFS/bin/busybox"
while read -r applet; do
	[[ "$applet" == bin/busybox ]] && continue
	mkdir -p "$ROOTFS/$(dirname "$applet")"
	ln -sfn /bin/busybox "$ROOTFS/$applet"
done < <(/bin/busybox --list-full)
cat >"$ROOTFS/etc/passwd" <<-'EOF'
	root:x:0:0:root:/root:/bin/sh
	nobody:x:65534:65534:nobody:/nonexistent:/bin/false
	app:x:1000:1000:app:/home/app:/bin/sh
EOF
cat >"$ROOTFS/etc/group" <<-'EOF'
	root:x:0:
	nogroup:x:65534:
	app:x:1000:
EOF
chmod 644 "$ROOTFS/etc/passwd" "$ROOTFS/etc/group"
find "$ROOTFS" -exec touch -h -d "$CREATED" {} +

umoci repack --image "$LAYOUT:latest" --history.created "$CREATED" \
	--history.created_by "hack/base-image.sh: busybox $(dpkg-query -W -f='${Version}' busybox-static)" \
	"$BUNDLE"
umoci config --image "$LAYOUT:latest" --no-history --created "$CREATED" \
	--architecture "$(goarch)" --os linux \
	--config.cmd /bin/sh \
	--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
umoci gc --layout "$LAYOUT"

"${SKOPEO[@]}" copy --quiet --dest-tls-verify=false "oci:$LAYOUT:latest" "$IMAGE"
digest="$("${SKOPEO[@]}" inspect --tls-verify=false --format '{{.Digest}}' "$IMAGE")"
rm -rf "$WORK"
log "pushed $IMAGE ($digest)"
