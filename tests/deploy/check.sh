#!/usr/bin/env bash
# tests/deploy/check.sh: checks the deployment files in deploy/ as far as a
# machine without a container engine allows (run by ctest as "deploy").
#
#   1. consistency of the deploy files with each other and with the binary
#      (checks.py static): sizes and timeouts that must agree, compose vs
#      nginx, the Dockerfile's package lists vs what the binary links against;
#   2. chatd.env.example is accepted by chatd itself;
#   3. the image's build context (the .dockerignore allow-list) builds chatd
#      with the builder stage's own cmake command from deploy/Dockerfile;
#   4. `nginx -t` on deploy/nginx.conf (upstreams rewritten to 127.0.0.1);
#   5. `systemd-analyze verify` and `security --offline` on deploy/chatd.service
#      (ExecStart rewritten to the built binary), skipped without systemd-analyze;
#   6. `docker compose config`, only where compose exists (not on these machines);
#   7. a live smoke test mirroring the compose stack: a throwaway PostgreSQL
#      (tests/pg/pgserver.sh, password authentication as in the postgres image)
#      and Redis, `chatd migrate`, then two chatd with compose's DATABASE_URL and
#      REDIS_URL (hosts rewritten to 127.0.0.1) behind nginx with
#      deploy/nginx.conf, and the fake provider (checks.py smoke). Without
#      PostgreSQL or redis-server installed it falls back to one shared SQLite
#      file with per-instance limits, and says so.
#
# Everything runs on 127.0.0.1 under temporary directories; every process is
# stopped by PID, the PostgreSQL server by pgserver.sh. Needs: nginx, node,
# /usr/bin/python3 with python3-yaml, cmake and the build dependencies;
# postgresql and redis-server for the full smoke test. CHATD_BIN: the binary
# (default build/chatd).
set -euo pipefail

SRC=${CHATD_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${CHATD_BIN:-$SRC/build/chatd}
DEPLOY=$SRC/deploy
HERE=$SRC/tests/deploy
PY=/usr/bin/python3

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
skip() { echo "skip: $*"; }

[ -x "$BIN" ] || fail "chatd binary not found at $BIN (set CHATD_BIN)"
BIN=$(realpath "$BIN")
command -v nginx >/dev/null || fail "nginx not installed (Debian package nginx, see scripts/deps.sh)"
command -v node >/dev/null || fail "node not installed"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatd-deploy.XXXXXX")
PIDS=()
PG_DIR=""

# Stops one process we started (SIGTERM), waits for it, forgets its PID (so a
# later cleanup never signals a reused PID) and leaves its exit code in STOP_RC.
stop_pid() {
  local pid=$1 keep=() p
  STOP_RC=0
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || STOP_RC=$?
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}

cleanup() {
  local rc=$? f
  while [ "${#PIDS[@]}" -gt 0 ]; do stop_pid "${PIDS[0]}"; done
  if [ "$rc" -ne 0 ]; then
    for f in "$TMP"/chatd1.log "$TMP"/chatd2.log "$TMP"/nginx.err "$TMP"/fake.err "$TMP"/redis.log \
             ${PG_DIR:+"$PG_DIR"/server.log}; do
      [ -s "$f" ] && { echo "--- last lines of $(basename "$f")"; tail -n 15 "$f"; }
    done
  fi
  if [ -n "$PG_DIR" ]; then
    "$SRC/tests/pg/pgserver.sh" stop "$PG_DIR" >/dev/null 2>&1 || echo "could not stop PostgreSQL in $PG_DIR" >&2
    rm -rf "$PG_DIR"
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits up to $3 seconds for an extended regex $2 in file $1; prints the match.
wait_for() {
  local i
  for ((i = 0; i < $3 * 20; i++)); do
    grep -m1 -oE "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# deploy/nginx.conf with the compose names and paths replaced for this machine:
# render_nginx DIR UPSTREAM1_PORT UPSTREAM2_PORT LISTEN_PORT -> DIR/nginx.conf
render_nginx() {
  local dir=$1
  mkdir -p "$dir"
  # Run as root, nginx's workers are "nobody": they must reach the temp paths.
  chmod 0711 "$TMP" "$dir"
  sed -e "s/^\( *server \)chatd1:8000 /\1127.0.0.1:$2 /" \
      -e "s/^\( *server \)chatd2:8000 /\1127.0.0.1:$3 /" \
      -e "s/^\( *\)listen 8080;/\1listen 127.0.0.1:$4;/" \
      -e "s|^pid .*;|pid $dir/nginx.pid;|" \
      -e "s|^http {|http {\n    client_body_temp_path $dir/body;\n    proxy_temp_path $dir/proxy;\n    fastcgi_temp_path $dir/fastcgi;\n    uwsgi_temp_path $dir/uwsgi;\n    scgi_temp_path $dir/scgi;|" \
      "$DEPLOY/nginx.conf" >"$dir/nginx.conf"
  if grep -vE '^ *#' "$dir/nginx.conf" | grep -qE 'chatd[12]:8000|listen 8080;|^pid /var' ||
     [ "$(grep -cE '^ *(server|listen) 127\.0\.0\.1:' "$dir/nginx.conf")" -ne 3 ] ||
     ! grep -q "^pid $dir/nginx.pid;" "$dir/nginx.conf"; then
    fail "could not rewrite deploy/nginx.conf for the test (did its server/listen/pid lines change shape?)"
  fi
}

nginx_test() {
  local out
  out=$(nginx -t -p "$1/" -c "$1/nginx.conf" -e "$1/error.log" 2>&1) || fail "nginx -t: $out"
}

# ------------------------------------------------------------------ 1. static
"$PY" "$HERE/checks.py" static "$BIN" "$SRC"

# ------------------------------------------------------------------ 2. env file
out=$(cd "$TMP" && env DATABASE_URL="sqlite:///$TMP/envcheck/chatd.db" \
      "$BIN" migrate --env-file "$DEPLOY/chatd.env.example" 2>&1) || fail "chatd rejects chatd.env.example: $out"
ok "chatd accepts deploy/chatd.env.example ($out)"

# ------------------------------------------------------------------ 3. build context
grep -qx '\*' "$SRC/.dockerignore" || fail ".dockerignore is expected to be an allow-list starting with '*'"
ctx=$TMP/context
while IFS= read -r path; do
  [ -e "$SRC/$path" ] || fail ".dockerignore re-includes $path, which does not exist"
  mkdir -p "$ctx/$(dirname "$path")"
  cp -a "$SRC/$path" "$ctx/$path"
done < <(sed -n 's/^!\(.*\)$/\1/p' "$SRC/.dockerignore")
# A directory missing from the context would still build (CMake globs find
# nothing) but the image would lack sources or embedded assets: compare.
embedded=$(sed -n '/chatd_embed_files(/,/)/p' "$SRC/CMakeLists.txt" | grep -o 'CMAKE_CURRENT_SOURCE_DIR}/[^ )]*' |
           cut -d/ -f2-)
[ -n "$embedded" ] || fail "no chatd_embed_files directories found in CMakeLists.txt"
for dir in src cmake $embedded; do
  diff <(cd "$SRC/$dir" && find . -type f | sort) <(cd "$ctx/$dir" 2>/dev/null && find . -type f | sort) \
    >/dev/null || fail ".dockerignore leaves (part of) $dir out of the build context"
done
# The builder stage's own build command (RUN cmake ... with its continuations).
build_cmd=$(awk '/^RUN cmake /{on=1} on{sub(/^RUN /,""); if (sub(/\\$/,"")) printf "%s ", $0; else {print; exit}}' \
            "$DEPLOY/Dockerfile")
[ -n "$build_cmd" ] || fail "no 'RUN cmake' build command in deploy/Dockerfile"
if ! (cd "$ctx" && bash -ec "$build_cmd") >"$TMP/context-build.log" 2>&1; then
  tail -n 30 "$TMP/context-build.log"
  fail "the image's build command failed on the .dockerignore build context"
fi
ok "build context ($(du -sh --apparent-size "$ctx" --exclude=build | cut -f1)) builds chatd with the Dockerfile's command"
rm -rf "$ctx"

# ------------------------------------------------------------------ 4. nginx -t
render_nginx "$TMP/nginx-t" 18001 18002 18003
nginx_test "$TMP/nginx-t"
ok "nginx -t accepts deploy/nginx.conf ($(nginx -v 2>&1 | sed 's/.*: //'))"

# ------------------------------------------------------------------ 5. systemd
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$TMP/unit"
  unit=$TMP/unit/chatd.service
  sed "s|^ExecStart=/usr/local/bin/chatd |ExecStart=$BIN |" "$DEPLOY/chatd.service" >"$unit"
  grep -qx "ExecStart=$BIN serve" "$unit" || fail "chatd.service: ExecStart=/usr/local/bin/chatd serve expected"
  # verify exits 0 on "ignoring" warnings (unknown keys, bad values): any output fails.
  out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify reported: $out"
  out=$(systemd-analyze security --offline=true --threshold=20 "$unit" 2>&1) ||
    fail "systemd-analyze security: exposure above 2.0: $(echo "$out" | tail -n 1)"
  ok "systemd-analyze verify is silent; $(echo "$out" | tail -n 1 | sed 's/^→ //')"
else
  skip "systemd-analyze not available: deploy/chatd.service not verified"
fi

# ------------------------------------------------------------------ 6. compose
compose=()
if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif command -v docker-compose >/dev/null; then compose=(docker-compose); fi
if [ "${#compose[@]}" -gt 0 ]; then
  mkdir -p "$TMP/compose/deploy"
  cp "$DEPLOY/docker-compose.yml" "$DEPLOY/nginx.conf" "$TMP/compose/deploy/"
  cp "$DEPLOY/chatd.env.example" "$TMP/compose/deploy/chatd.env"
  sed 's/^POSTGRES_PASSWORD=$/POSTGRES_PASSWORD=0123abcd/' "$DEPLOY/.env.example" >"$TMP/compose/deploy/.env"
  out=$("${compose[@]}" -f "$TMP/compose/deploy/docker-compose.yml" config -q 2>&1) || fail "compose config: $out"
  ok "${compose[*]} config accepts deploy/docker-compose.yml"
else
  skip "no docker compose here: deploy/docker-compose.yml checked for consistency only (step 1)"
fi

# ------------------------------------------------------------------ 7. smoke test
node "$SRC/tests/fake_llm/server.mjs" --port 0 --host 127.0.0.1 >"$TMP/fake.out" 2>"$TMP/fake.err" &
PIDS+=($!)
fake_port=$(wait_for "$TMP/fake.out" 'LISTENING [0-9]+' 10 | cut -d' ' -f2) || fail "fake provider did not start"

# The store and the limiter, as compose has them: its own DATABASE_URL and
# REDIS_URL with the service names replaced by this machine's servers.
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 && command -v redis-server >/dev/null &&
   command -v redis-cli >/dev/null; then
  mapfile -t urls < <("$PY" "$HERE/checks.py" urls "$SRC")
  # Not under $TMP: as root the server runs as the postgres user, which must reach it.
  PG_DIR=$(mktemp -d /tmp/chatd-pg.XXXXXX)
  "$SRC/tests/pg/pgserver.sh" start "$PG_DIR" >"$TMP/pg.url" || fail "PostgreSQL did not start"
  pg_port=$(cat "$PG_DIR/port")
  pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  # pgserver.sh trusts every connection; the postgres image checks a password
  # on TCP (scram-sha-256). Do the same, so that the password in compose's
  # URL shape is really used.
  pg_password=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
  as_pg "$pg_bin/psql" -h "$PG_DIR" -p "$pg_port" -U chatd -d chatd -qc \
    "ALTER ROLE chatd PASSWORD '$pg_password'" || fail "psql: cannot set the password"
  as_pg sed -i -E 's/^(host[[:space:]].*)trust$/\1scram-sha-256/' "$PG_DIR/data/pg_hba.conf"
  as_pg "$pg_bin/pg_ctl" -D "$PG_DIR/data" reload >/dev/null
  DB_URL=${urls[0]//'${POSTGRES_PASSWORD}'/$pg_password}
  DB_URL=${DB_URL/@postgres:5432\//@127.0.0.1:$pg_port/}
  [[ "$DB_URL" == postgres://*"$pg_password"@127.0.0.1:"$pg_port"/* ]] ||
    fail "cannot rewrite compose's DATABASE_URL ${urls[0]} for the test"

  redis_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    >"$TMP/redis.log" 2>&1 &
  PIDS+=($!)
  REDIS_PID=$!
  for ((i = 0; i < 100; i++)); do
    [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$REDIS_PID" 2>/dev/null || fail "redis-server exited: $(tail -n 5 "$TMP/redis.log")"
    sleep 0.05
  done
  R_URL=${urls[1]/redis:6379/127.0.0.1:$redis_port}
  [[ "$R_URL" == redis://127.0.0.1:"$redis_port"/* ]] || fail "cannot rewrite compose's REDIS_URL ${urls[1]}"
  STORE="PostgreSQL :$pg_port, Redis :$redis_port"
else
  # Two instances need a shared store: a SQLite file has one server (a
  # second chatd serve on it is refused), so without PostgreSQL there is
  # nothing left to check here.
  skip "postgresql or redis-server not installed (scripts/deps.sh installs them): the two-instance smoke test needs them"
  exit 0
fi

TOKEN=deploy-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
# chatd with a clean environment: only what this test sets, over deploy/chatd.env.example.
# It execs: call it only in a subshell ($(...) or &), so that a background
# job's PID is chatd's own.
run_chatd() {
  cd "$TMP" && exec env -i PATH="$PATH" \
     ${ASAN_OPTIONS+ASAN_OPTIONS="$ASAN_OPTIONS"} ${UBSAN_OPTIONS+UBSAN_OPTIONS="$UBSAN_OPTIONS"} \
     HOST=127.0.0.1 PORT=0 WORKERS=2 DATABASE_URL="$DB_URL" ${R_URL:+REDIS_URL="$R_URL"} \
     ANTHROPIC_API_KEY=test-key ANTHROPIC_BASE_URL="http://127.0.0.1:$fake_port" \
     API_TOKEN="$TOKEN" TRUSTED_PROXIES=127.0.0.1 RATE_LIMIT=2/minute \
     "$BIN" "$@" --env-file "$DEPLOY/chatd.env.example"
}

# compose's migrate service; with a wrong password it must fail (auth is on).
out=$(DB_URL=${DB_URL/:$pg_password@/:wrong-$pg_password@} run_chatd migrate 2>&1) &&
  fail "chatd migrate succeeded with a wrong PostgreSQL password: $out"
out=$(run_chatd migrate 2>&1) || fail "chatd migrate on PostgreSQL: $out"
tables=$(as_pg "$pg_bin/psql" -h "$PG_DIR" -p "$pg_port" -U chatd -d chatd -tAc \
         "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()
            AND tablename IN ('sessions', 'messages', 'api_keys', 'turn_locks')")
[ "$tables" = 4 ] || fail "chatd migrate left $tables of the 4 core tables in PostgreSQL: $out"
ok "chatd migrate applied the schema to PostgreSQL (and refused a wrong password)"

CHATD_PIDS=()
for n in 1 2; do
  run_chatd serve >"$TMP/chatd$n.out" 2>"$TMP/chatd$n.log" &
  PIDS+=($!)
  CHATD_PIDS+=($!)
done
ports=()
for n in 1 2; do
  p=$(wait_for "$TMP/chatd$n.log" '"msg":"listening","host":"[^"]*","port":[0-9]+' 10) ||
    fail "chatd$n did not start"
  ports+=("${p##*:}")
done

nginx_port=$(free_port)
render_nginx "$TMP/nginx" "${ports[0]}" "${ports[1]}" "$nginx_port"
nginx_test "$TMP/nginx"
nginx -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" -g 'daemon off;' \
  >"$TMP/nginx.out" 2>"$TMP/nginx.err" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for ((i = 0; i < 100; i++)); do
  curl -fsS -o /dev/null "http://127.0.0.1:$nginx_port/healthz" 2>/dev/null && break
  kill -0 "$NGINX_PID" 2>/dev/null || fail "nginx exited: $(cat "$TMP/nginx.err")"
  sleep 0.05
done
ok "nginx :$nginx_port -> chatd1 :${ports[0]}, chatd2 :${ports[1]} ($STORE), fake provider :$fake_port"

"$PY" "$HERE/checks.py" smoke "$nginx_port" "$TOKEN" "$TMP/chatd1.log" "$TMP/chatd2.log"

# The conversation is in PostgreSQL, the buckets in Redis, and no instance
# ever answered a limit check locally.
msgs=$(as_pg "$pg_bin/psql" -h "$PG_DIR" -p "$pg_port" -U chatd -d chatd -tAc \
    "SELECT count(*) FROM messages m JOIN sessions s ON s.id = m.session_id WHERE s.id = 'deploy-continue'")
[ "${msgs:-0}" -ge 4 ] || fail "PostgreSQL holds ${msgs:-no} messages of session deploy-continue"
buckets=$(redis-cli -p "$redis_port" --scan --pattern 'chatd:rl:*' | wc -l)
[ "$buckets" -ge 1 ] || fail "no chatd:rl:* rate-limit buckets in Redis"
for n in 1 2; do
  fb=$(curl -fsS -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:${ports[$((n - 1))]}/metrics" |
       awk '$1 == "chatd_ratelimit_redis_fallback_total" {print $2}')
  [ "$fb" = 0 ] || fail "chatd$n: chatd_ratelimit_redis_fallback_total is '${fb}', want 0"
done
ok "history in PostgreSQL ($msgs messages of deploy-continue), $buckets bucket(s) in Redis, no local fallback"

stop_pid "$NGINX_PID"
for n in 1 2; do
  stop_pid "${CHATD_PIDS[$((n - 1))]}"
  [ "$STOP_RC" -eq 0 ] || fail "chatd$n exited $STOP_RC on SIGTERM"
  grep -q '"msg":"stopped"' "$TMP/chatd$n.log" || fail "chatd$n did not log a clean stop"
done
ok "both chatd processes drained and exited 0 on SIGTERM"
echo "deploy checks passed"
