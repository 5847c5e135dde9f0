#!/usr/bin/env bash
# Install what the tests and the demo need on a Debian 12 machine (run as root). Idempotent: does
# nothing, not even `apt-get update`, when everything is already there. Does not install Rust.
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(ca-certificates containerd runc docker-registry busybox-static skopeo umoci buildah docker.io protobuf-compiler jq curl iproute2 apache2-utils git openssh-client xz-utils bzip2 zstd slirp4netns nginx postgresql chromium chromium-driver debootstrap)

missing=()
for pkg in "${PACKAGES[@]}"; do
	status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
	[[ "$status" == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
	[[ "$(id -u)" == 0 ]] || die "need root to install: ${missing[*]}"
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Keep the packages' system-wide containerd and registry services from starting: tests run
	# private instances (hack/services.sh) and must not depend on, or race with, global ones.
	# invoke-rc.d and deb-systemd-invoke both honour policy-rc.d (exit 101 = "don't start").
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e "$policy" ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	# A fresh machine's apt-daily may hold the dpkg lock for a while; mirrors may hiccup.
	apt_opts=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=5)
	apt-get "${apt_opts[@]}" update -q
	apt-get "${apt_opts[@]}" install -y -q "${missing[@]}"
fi

ensure_cargo
log "ok: system packages present, $(cargo --version)"
