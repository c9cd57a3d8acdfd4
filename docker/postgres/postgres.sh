#!/bin/bash
# PostgreSQL 15 from Debian's package, for the payment service's SQL barrier. On first
# start it creates the cluster in the volume with POSTGRES_USER / POSTGRES_PASSWORD /
# POSTGRES_DB (as the official image does); clients on the container network log in with
# that password (scram-sha-256), local ones (the health check) through the socket.
set -euo pipefail
data=/var/lib/postgresql/data
bin=/usr/lib/postgresql/15/bin
: "${POSTGRES_USER:=choreo}" "${POSTGRES_DB:=$POSTGRES_USER}"
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"

if [ ! -s "$data/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 >/dev/null
    rm -f "$pwfile"
    echo "host all all 0.0.0.0/0 scram-sha-256" >>"$data/pg_hba.conf"
    echo "host all all ::/0 scram-sha-256" >>"$data/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        "$bin/postgres" -D "$data" -c listen_addresses= -k /tmp &
        until "$bin/pg_isready" -q -h /tmp; do sleep 0.2; done
        "$bin/createdb" -h /tmp -U "$POSTGRES_USER" "$POSTGRES_DB"
        "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -k /tmp "$@"
