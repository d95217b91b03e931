#!/usr/bin/env bash
# Runs a command against a throwaway PostgreSQL server:
#   tests/pg/with-pg.sh COMMAND [ARG...]
# starts a server with pgserver.sh in a fresh /tmp/chatd-pg.XXXXXX directory
# (not under a 0700 test temp dir: the server runs as the postgres user when
# we are root), exports CHATD_TEST_PG_URL (database "chatd", free to wipe),
# runs the command, then stops the server and removes the directory, also when
# the command fails or we are interrupted. Exits with the command's status.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: with-pg.sh COMMAND [ARG...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/chatd-pg.XXXXXX) || exit 1
cleanup() {
  "$here/pgserver.sh" stop "$dir" >/dev/null 2>&1 || echo "with-pg: could not stop the server in $dir" >&2
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
url=$("$here/pgserver.sh" start "$dir") || { echo "with-pg: cannot start PostgreSQL" >&2; exit 1; }
export CHATD_TEST_PG_URL="$url"
"$@"
exit $?
