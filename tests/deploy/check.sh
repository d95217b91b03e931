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
#   7. a live smoke test: nginx with deploy/nginx.conf in front of two chatd
#      processes sharing one SQLite file and the fake provider (checks.py smoke).
#
# Everything runs under a temporary directory on 127.0.0.1; every process is
# stopped by PID. Needs: nginx, node, /usr/bin/python3 with python3-yaml,
# cmake and the build dependencies. CHATD_BIN: the binary (default build/chatd).
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
    for f in "$TMP"/chatd1.log "$TMP"/chatd2.log "$TMP"/nginx.err "$TMP"/fake.err; do
      [ -s "$f" ] && { echo "--- last lines of $(basename "$f")"; tail -n 15 "$f"; }
    done
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

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
  out=$("${compose[@]}" -f "$TMP/compose/deploy/docker-compose.yml" config -q 2>&1) || fail "compose config: $out"
  ok "${compose[*]} config accepts deploy/docker-compose.yml"
else
  skip "no docker compose here: deploy/docker-compose.yml checked for consistency only (step 1)"
fi

# ------------------------------------------------------------------ 7. smoke test
node "$SRC/tests/fake_llm/server.mjs" --port 0 --host 127.0.0.1 >"$TMP/fake.out" 2>"$TMP/fake.err" &
PIDS+=($!)
fake_port=$(wait_for "$TMP/fake.out" 'LISTENING [0-9]+' 10 | cut -d' ' -f2) || fail "fake provider did not start"

TOKEN=deploy-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
CHATD_PIDS=()
for n in 1 2; do
  # A clean environment: only what this test sets, over deploy/chatd.env.example.
  (cd "$TMP" && exec env -i PATH="$PATH" \
     ${ASAN_OPTIONS+ASAN_OPTIONS="$ASAN_OPTIONS"} ${UBSAN_OPTIONS+UBSAN_OPTIONS="$UBSAN_OPTIONS"} \
     HOST=127.0.0.1 PORT=0 WORKERS=2 DATABASE_URL="sqlite:///$TMP/data/chatd.db" \
     ANTHROPIC_API_KEY=test-key ANTHROPIC_BASE_URL="http://127.0.0.1:$fake_port" \
     API_TOKEN="$TOKEN" TRUSTED_PROXIES=127.0.0.1 RATE_LIMIT=2/minute \
     "$BIN" serve --env-file "$DEPLOY/chatd.env.example") >"$TMP/chatd$n.out" 2>"$TMP/chatd$n.log" &
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
ok "nginx :$nginx_port -> chatd1 :${ports[0]}, chatd2 :${ports[1]} (one SQLite file), fake provider :$fake_port"

"$PY" "$HERE/checks.py" smoke "$nginx_port" "$TOKEN" "$TMP/chatd1.log" "$TMP/chatd2.log"

stop_pid "$NGINX_PID"
for n in 1 2; do
  stop_pid "${CHATD_PIDS[$((n - 1))]}"
  [ "$STOP_RC" -eq 0 ] || fail "chatd$n exited $STOP_RC on SIGTERM"
  grep -q '"msg":"stopped"' "$TMP/chatd$n.log" || fail "chatd$n did not log a clean stop"
done
ok "both chatd processes drained and exited 0 on SIGTERM"
echo "deploy checks passed"
