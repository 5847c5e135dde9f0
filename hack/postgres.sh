#!/usr/bin/env bash
# A private PostgreSQL (Debian's `postgresql` package) for one test run, under DIR/postgres, on
# a free loopback port, trusting local connections (a throwaway test server).
#
#   hack/postgres.sh start DIR   initdb (first time), start, write DIR/postgres.env, which
#                                exports MEMOBUILD_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres
#   hack/postgres.sh stop DIR    stop it (immediate shutdown); safe to call twice
#
# PostgreSQL refuses to run as root: it runs as the package's `postgres` user, which must be
# able to reach DIR (made traversable, not readable, for it).
set -eu -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $# == 2 && ($1 == start || $1 == stop) ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[[ $1 == stop && ! -d $2/postgres ]] && exit 0
DIR="$(abs_dir "$2")"
PG="$DIR/postgres"
BIN="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)"
[[ -x "$BIN/pg_ctl" ]] || die "PostgreSQL not installed (hack/setup.sh installs Debian's postgresql)"
as_pg() { runuser -u postgres -- "$@"; }

if [[ $1 == stop ]]; then
	if [[ -f "$PG/data/postmaster.pid" ]]; then
		as_pg "$BIN/pg_ctl" -D "$PG/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
	exit 0
fi

chmod o+x "$DIR"
mkdir -p "$PG"
chown postgres:postgres "$PG"
if [[ ! -f "$PG/data/PG_VERSION" ]]; then
	as_pg "$BIN/initdb" -D "$PG/data" -U postgres -A trust --no-sync >"$PG/initdb.log" 2>&1 ||
		{ cat "$PG/initdb.log" >&2; die "initdb failed"; }
fi
for _ in $(seq 20); do
	port=$((20000 + RANDOM % 20001))
	[[ -n "$(ss -ltnH "sport = :$port")" ]] && continue
	if as_pg "$BIN/pg_ctl" -D "$PG/data" -l "$PG/postgres.log" -w -t 30 \
		-o "-p $port -k $PG -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null; then
		printf 'export MEMOBUILD_TEST_POSTGRES=%q\n' "postgres://postgres@127.0.0.1:$port/postgres" >"$DIR/postgres.env"
		log "postgres ready at 127.0.0.1:$port"
		exit 0
	fi
	tail -n 5 "$PG/postgres.log" >&2
done
die "postgres did not come up (log: $PG/postgres.log)"
