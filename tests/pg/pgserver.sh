#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests (Debian's postgresql-15 binaries).
#   tests/pg/pgserver.sh start DIR [PORT]   initdb in DIR (if new), start the server on
#                                           127.0.0.1:PORT (default: a free port) and a unix
#                                           socket in DIR; prints the URL of database "chatd"
#   tests/pg/pgserver.sh stop DIR           fast shutdown (the data stays in DIR)
#   tests/pg/pgserver.sh restart DIR        stop, then start on the same port
#   tests/pg/pgserver.sh url DIR            prints the URL again
# The server runs as the postgres system user when started by root (PostgreSQL
# refuses to run as root); DIR must then be reachable by that user. Settings
# favour test speed (fsync off): never point this at data you want to keep.
# PGSERVER_DURABLE=1 (for start and restart) keeps PostgreSQL's default
# durability instead (fsync, synchronous_commit, full_page_writes on), as a
# production server has it: the benchmark measures with it.
# PGSERVER_STOP_MODE=immediate (for stop) kills every backend at once, as a
# crash would, instead of the default fast shutdown (which ends sessions one by
# one, so a lock holder may go first and let a waiter finish).
set -euo pipefail
cmd=${1:?usage: pgserver.sh start|stop|restart|url DIR [PORT]}
dir=${2:?usage: pgserver.sh start|stop|restart|url DIR [PORT]}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -x "$bin/postgres" ] || { echo "pgserver: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }

as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url() {
  echo "postgres://chatd@127.0.0.1:$(cat "$dir/port")/chatd"
}

start() {
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$dir/data" -U chatd --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  local port=${1:-}
  if [ -z "$port" ] && [ -f "$dir/port" ]; then port=$(cat "$dir/port"); fi
  if [ -z "$port" ]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fi
  echo "$port" | as_pg tee "$dir/port" >/dev/null
  local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if [ "${PGSERVER_DURABLE:-0}" = 1 ]; then durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"; fi
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir $durability -c max_connections=200" \
    start >/dev/null || { tail -n 20 "$dir/server.log" >&2; exit 1; }
  if ! as_pg "$bin/psql" -h "$dir" -p "$port" -U chatd -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='chatd'" | grep -q 1; then
    as_pg "$bin/createdb" -h "$dir" -p "$port" -U chatd chatd
  fi
  url
}

stop() {
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_pg "$bin/pg_ctl" -D "$dir/data" -m "${PGSERVER_STOP_MODE:-fast}" -w -t 30 stop >/dev/null
}

case "$cmd" in
  start) start "${3:-}" ;;
  stop) stop ;;
  restart) stop; start ;;
  url) url ;;
  *) echo "pgserver: unknown command $cmd" >&2; exit 2 ;;
esac
