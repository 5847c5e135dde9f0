#!/usr/bin/env bash
# Start or stop a private containerd and a private registry (CNCF Distribution) for one run.
#
#   hack/services.sh start DIR   start both (if not already running), then write DIR/env
#   hack/services.sh stop DIR    stop both, kill stray shims and containers, unmount what is left
#                                under DIR; safe to call twice
#
# All state lives under DIR (containerd/{config.toml,root,state,containerd.sock,containerd.log},
# registry/{config.yml,data,registry.log}); `. DIR/env` exports MEMOBUILD_TEST_CONTAINERD,
# MEMOBUILD_TEST_REGISTRY and MEMOBUILD_TEST_STATE. Several DIRs can run side by side.
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# == 2 && ($1 == start || $1 == stop) ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $1 == stop && ! -d $2 ]] && exit 0
DIR="$(abs_dir "$2")"
CTRD="$DIR/containerd"
SOCK="$CTRD/containerd.sock"
REG="$DIR/registry"

# Serialise start/stop on one DIR (tests may call us from several threads). Daemons must not
# inherit fd 9, or they would hold the lock forever.
exec 9>"$DIR/.services.lock"
flock 9

# Print the pid in PIDFILE if that process is alive and is ours (its command line names DIR).
alive() {
	local pid cmd
	pid="$(cat "$1" 2>/dev/null)" && [[ -n "$pid" ]] || return 1
	cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" && [[ "$cmd" == *"$DIR/"* ]] || return 1
	echo "$pid"
}

# spawn PIDFILE LOG CMD...: run CMD as a daemon in its own session, pid in PIDFILE.
spawn() {
	local pidfile=$1 logfile=$2
	shift 2
	rm -f "$pidfile"
	# shellcheck disable=SC2016 # $$, $0 and $@ are for the inner bash
	setsid nohup bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
		</dev/null >>"$logfile" 2>&1 9>&- &
	for _ in $(seq 50); do
		[[ -s "$pidfile" ]] && return 0
		sleep 0.1
	done
	die "$1 did not start"
}

# terminate PIDFILE: TERM, wait up to 10 s, then KILL.
terminate() {
	local pid
	if pid="$(alive "$1")"; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 50); do
			alive "$1" >/dev/null || break
			sleep 0.2
		done
		if alive "$1" >/dev/null; then
			log "$(basename "$1" .pid) ignored SIGTERM, killing"
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
		fi
	fi
	rm -f "$1"
}

start_containerd() {
	if alive "$CTRD/containerd.pid" >/dev/null; then
		log "containerd already running"
		return
	fi
	# sun_path holds 108 bytes; keep a margin.
	((${#SOCK} < 100)) || die "socket path too long (${#SOCK} bytes): $SOCK"
	mkdir -p "$CTRD/root" "$CTRD/state"
	# Config v2 for containerd 1.6. No CRI; no snapshotters that cannot work on a plain fs. The
	# default snapshotter is a client-side choice in 1.6: clients must ask for "overlayfs".
	cat >"$CTRD/config.toml" <<-EOF
		version = 2
		root = "$CTRD/root"
		state = "$CTRD/state"
		disabled_plugins = [
		  "io.containerd.grpc.v1.cri",
		  "io.containerd.snapshotter.v1.aufs",
		  "io.containerd.snapshotter.v1.btrfs",
		  "io.containerd.snapshotter.v1.devmapper",
		  "io.containerd.snapshotter.v1.zfs",
		]

		[grpc]
		  address = "$SOCK"

		[plugins."io.containerd.internal.v1.opt"]
		  path = "$CTRD/opt"
	EOF
	spawn "$CTRD/containerd.pid" "$CTRD/containerd.log" containerd --config "$CTRD/config.toml"
	local deadline=$((SECONDS + 20))
	while ((SECONDS < deadline)) && alive "$CTRD/containerd.pid" >/dev/null; do
		if [[ -S "$SOCK" ]] && timeout 5 ctr --address "$SOCK" --connect-timeout 2s version >/dev/null 2>&1; then
			log "containerd ready at $SOCK"
			return
		fi
		sleep 0.2
	done
	tail -n 30 "$CTRD/containerd.log" >&2
	die "containerd did not come up (log: $CTRD/containerd.log)"
}

port_in_use() {
	[[ -n "$(ss -ltnH "sport = :$1")" ]]
}

start_registry() {
	if alive "$REG/registry.pid" >/dev/null; then
		log "registry already running on port $(cat "$REG/port")"
		return
	fi
	mkdir -p "$REG/data"
	local port pid deadline
	# Reuse the port of an earlier start of this DIR if it is free, else try random ones.
	port="$(cat "$REG/port" 2>/dev/null || true)"
	for _ in $(seq 20); do
		if [[ -z "$port" ]] || port_in_use "$port"; then
			port=$((20000 + RANDOM % 20001))
			port_in_use "$port" && { port=; continue; }
		fi
		cat >"$REG/config.yml" <<-EOF
			version: 0.1
			log:
			  level: info
			  formatter: text
			storage:
			  filesystem:
			    rootdirectory: $REG/data
			  delete:
			    enabled: true
			  maintenance:
			    uploadpurging:
			      enabled: false
			http:
			  addr: 127.0.0.1:$port
		EOF
		spawn "$REG/registry.pid" "$REG/registry.log" docker-registry serve "$REG/config.yml"
		pid="$(cat "$REG/registry.pid")"
		deadline=$((SECONDS + 20))
		while ((SECONDS < deadline)) && alive "$REG/registry.pid" >/dev/null; do
			if curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$port/v2/" 2>/dev/null; then
				# Another run may have grabbed the port between our probe and our bind. ss
				# reads the owner from /proc, which can miss it on a busy machine: ask again.
				for _ in 1 2 3 4 5; do
					if [[ "$(ss -ltnpH "sport = :$port")" == *"pid=$pid,"* ]]; then
						echo "$port" >"$REG/port"
						log "registry ready at 127.0.0.1:$port"
						return
					fi
					sleep 0.2
				done
				break
			fi
			sleep 0.2
		done
		# Not ours or not up. Retry only if another process took the port between probe and bind.
		terminate "$REG/registry.pid"
		port_in_use "$port" || [[ "$(tail -n 5 "$REG/registry.log")" == *"address already in use"* ]] || break
		log "port $port taken, trying another"
		port=
	done
	terminate "$REG/registry.pid"
	tail -n 30 "$REG/registry.log" >&2
	die "registry did not come up (log: $REG/registry.log)"
}

write_env() {
	{
		printf 'export MEMOBUILD_TEST_CONTAINERD=%q\n' "$SOCK"
		printf 'export MEMOBUILD_TEST_REGISTRY=%q\n' "127.0.0.1:$(cat "$REG/port")"
		printf 'export MEMOBUILD_TEST_STATE=%q\n' "$DIR"
	} >"$DIR/env.tmp"
	mv "$DIR/env.tmp" "$DIR/env"
}

# Kill and delete every task, so the shims unmount their rootfs and exit on their own.
delete_tasks() {
	local c=(timeout 20 ctr --address "$SOCK" --connect-timeout 5s) ns task
	for ns in $("${c[@]}" namespaces ls -q 2>/dev/null); do
		for task in $("${c[@]}" -n "$ns" tasks ls -q 2>/dev/null); do
			"${c[@]}" -n "$ns" tasks kill -a -s SIGKILL "$task" >/dev/null 2>&1 || true
			"${c[@]}" -n "$ns" tasks delete -f "$task" >/dev/null 2>&1 || true
		done
		# runc leaves an empty state dir per namespace, shared by all containerds on the machine.
		rmdir "/run/containerd/runc/$ns" 2>/dev/null || true
	done
}

# Whatever survived containerd: shims serving our socket (and their containers), and any process
# whose root directory is under DIR (container processes).
kill_strays() {
	local p pid cmd ns id root
	for p in /proc/[0-9]*; do
		pid="${p#/proc/}"
		cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
		if [[ "$cmd" == *containerd-shim* && "$cmd" == *" -address $SOCK "* ]]; then
			ns="$(sed -n 's/.* -namespace \([^ ]*\) .*/\1/p' <<<"$cmd")"
			id="$(sed -n 's/.* -id \([^ ]*\) .*/\1/p' <<<"$cmd")"
			log "killing stray shim $pid ($ns/$id)"
			# The v2 runc shim keeps runc state in /run/containerd/runc/<namespace>; clear it so a
			# later container with the same namespace and id does not collide.
			if [[ -n "$ns" && -n "$id" ]]; then
				runc --root "/run/containerd/runc/$ns" delete --force "$id" >/dev/null 2>&1 || true
			fi
			kill -KILL "$pid" 2>/dev/null || true
			if [[ -n "$ns" && -n "$id" ]]; then
				# Its socket, named sha256(<containerd address>/<namespace>/<id>).
				rm -f "/run/containerd/s/$(printf '%s' "$SOCK/$ns/$id" | sha256sum | cut -d' ' -f1)"
			fi
		fi
	done
	for p in /proc/[0-9]*; do
		root="$(readlink "$p/root" 2>/dev/null)" || continue
		if [[ "$root" == "$DIR"/* ]]; then
			log "killing stray container process ${p#/proc/} (root $root)"
			kill -KILL "${p#/proc/}" 2>/dev/null || true
		fi
	done
}

# Mount points under DIR, deepest first (mountinfo escapes spaces etc. as octal).
mounts_under_dir() {
	local m
	while read -r _ _ _ _ m _; do
		m="$(printf '%b' "$m")"
		if [[ "$m" == "$DIR" || "$m" == "$DIR"/* ]]; then echo "$m"; fi
	done </proc/self/mountinfo | sort -r
}

unmount_all() {
	local m
	for _ in 1 2 3; do
		[[ -n "$(mounts_under_dir)" ]] || return 0
		while read -r m; do
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
		done < <(mounts_under_dir)
	done
	[[ -z "$(mounts_under_dir)" ]] || log "warning: still mounted under $DIR: $(mounts_under_dir | tr '\n' ' ')"
}

stop_all() {
	rm -f "$DIR/env"
	alive "$CTRD/containerd.pid" >/dev/null && delete_tasks
	terminate "$CTRD/containerd.pid"
	kill_strays
	terminate "$REG/registry.pid"
	unmount_all
}

case "$1" in
start)
	# A half-started run must not leak daemons.
	trap 'rc=$?; ((rc == 0)) || { log "start failed, stopping"; stop_all; }' EXIT
	start_containerd
	start_registry
	write_env
	;;
stop)
	stop_all
	log "stopped services in $DIR"
	;;
esac
