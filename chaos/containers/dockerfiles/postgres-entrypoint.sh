#!/bin/sh
# initdb on an empty PGDATA, then run the command as the postgres user (the official image's contract).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
if [ "${1#-}" != "$1" ]; then set -- postgres "$@"; fi
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    others=reject
    if [ -n "${POSTGRES_HOST_AUTH_METHOD:-}" ]; then
        others=$POSTGRES_HOST_AUTH_METHOD
    elif [ -n "${POSTGRES_PASSWORD:-}" ]; then
        others=scram-sha-256
    fi
    pwfile=
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    fi
    initdb -D "$PGDATA" -U "$POSTGRES_USER" -E UTF8 --locale=C --auth-local=trust \
        --auth-host=trust ${pwfile:+--pwfile="$pwfile"} --no-instructions >/dev/null
    [ -n "$pwfile" ] && rm -f "$pwfile"
    {
        echo "# written by docker-entrypoint.sh (fastport-lab)"
        echo "local all all trust"
        echo "host all all samenet trust"
        echo "host all all all $others"
    } >"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "docker-entrypoint.sh: initialised $PGDATA (user $POSTGRES_USER; samenet trust, others $others)"
fi
exec "$@"
