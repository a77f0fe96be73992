#!/bin/sh
# PostgreSQL for the team servers without Docker: a throwaway cluster (initdb) in DIR on 127.0.0.1, no system
# service. The same users and databases as the compose service (init-databases.sh runs once, on a new cluster).
#   POSTGRES_PASSWORD=... PGPORT=5432 sh infra/postgres/local.sh start DIR   # initdb on first use, then start
#   sh infra/postgres/local.sh stop DIR
# Reads POSTGRES_USER (medrov), POSTGRES_PASSWORD (required for start), MLFLOW_DB (mlflow), PREFECT_DB (prefect),
# PGPORT (5432) and PG_BINDIR (default: the newest /usr/lib/postgresql/*/bin). As root, the server runs as the
# `postgres` user (PostgreSQL refuses to run as root), which then owns DIR.
set -eu
PATH=$PATH:/usr/sbin:/sbin  # runuser, for root
cmd=${1:?usage: local.sh start|stop DIR}
dir=${2:?usage: local.sh start|stop DIR}
here=$(cd "$(dirname "$0")" && pwd)
bindir=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
[ -x "$bindir/initdb" ] || bindir=$(dirname "$(command -v initdb || echo /missing/initdb)")
[ -x "$bindir/initdb" ] || { echo "local.sh: PostgreSQL not found (apt-get install postgresql, or set PG_BINDIR)" >&2; exit 2; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
data=$dir/data
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$dir"
  as_owner test -w "$dir" || { echo "local.sh: $dir: not writable by the postgres user (is a parent folder private?)" >&2; exit 2; }
fi

case $cmd in
start)
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  export POSTGRES_USER=${POSTGRES_USER:-medrov} MLFLOW_DB=${MLFLOW_DB:-mlflow} PREFECT_DB=${PREFECT_DB:-prefect}
  export PGPORT=${PGPORT:-5432}
  new=no
  if [ ! -s "$data/PG_VERSION" ]; then
    # the password goes through a file readable by the server's user only, never the command line
    (umask 077 && printf '%s\n' "$POSTGRES_PASSWORD" > "$dir/pwfile")
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/pwfile"
    as_owner "$bindir/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile="$dir/pwfile" --auth=scram-sha-256 \
      -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -f "$dir/pwfile"; exit 1; }
    rm -f "$dir/pwfile"
    new=yes
  fi
  if ! as_owner "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    # TCP on loopback only; the socket stays in DIR, not in the system's /var/run/postgresql
    as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 120 \
      -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $dir" start >/dev/null \
      || { tail -n 20 "$dir/postgres.log" >&2; exit 1; }
  fi
  if [ $new = yes ]; then
    PGHOST=127.0.0.1 PGPASSWORD=$POSTGRES_PASSWORD POSTGRES_DB=postgres sh "$here/init-databases.sh"
  fi
  echo "postgres on 127.0.0.1:$PGPORT (data $data; databases $MLFLOW_DB, $PREFECT_DB)"
  ;;
stop)
  as_owner "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null
  echo "postgres in $data stopped"
  ;;
*)
  echo "local.sh: unknown command $cmd (start|stop)" >&2; exit 2
  ;;
esac
