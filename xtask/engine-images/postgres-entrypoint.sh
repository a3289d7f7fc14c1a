#!/bin/sh
# The entrypoint of the tests' PostgreSQL 15 image, built from Debian's
# packages by `cargo xtask setup`. It honours what the official image's
# entrypoint does for docker-compose.yml: POSTGRES_USER (default postgres),
# POSTGRES_DB (default the user), POSTGRES_PASSWORD (required), PGDATA;
# an empty data directory is initialised once, then postgres is PID 1.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA

if [ "$(id -u)" = 0 ]; then
	# As root: own the data directory and the socket directory (a fresh
	# volume and tmpfs are root's), then run this script again as postgres.
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required, as in the official image}"
	user=${POSTGRES_USER:-postgres}
	db=${POSTGRES_DB:-$user}
	pwfile=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb --username="$user" --pwfile="$pwfile" --auth-local=trust \
		--auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
	if [ "$db" != postgres ]; then
		printf 'CREATE DATABASE "%s" OWNER "%s";\n' "$db" "$user" |
			postgres --single -j -D "$PGDATA" postgres >/dev/null
	fi
	echo "entrypoint: initialised $PGDATA for user $user, database $db"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
