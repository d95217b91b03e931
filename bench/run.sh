#!/usr/bin/env bash
# chatd benchmark, one command: turns per second and latency of chatd against
# the fake provider, next to the same load sent straight to the fake.
#
#   bench/run.sh [path-to-chatd-binary]
#
# Phases (each BENCH_SECONDS long, after a BENCH_WARMUP warm-up on chatd):
#   chat           POST /chat (seed, non-streaming) through chatd
#   direct         the equivalent POST /v1/messages straight to the fake
#   stream         POST /v1/chat/stream (SSE) through chatd
#   direct_stream  the equivalent streaming POST /v1/messages to the fake
# plus chatd's peak RSS (VmHWM) and CPU time. Table on stdout, JSON in
# bench/results/latest.json. Exit status: 0 clean run, 1 a phase had errors or
# chatd died (the numbers are then NOT a valid result), 2 setup failure.
# BENCH_DATABASE=postgres runs the same load with chatd on a throwaway
# PostgreSQL server (tests/pg/pgserver.sh, with its default durability: fsync
# and synchronous_commit on) instead of SQLite.
# Settings (environment): see bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
PY=/usr/bin/python3 # Debian's python (the pyenv one on PATH may lack modules)

DURATION=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-3}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
WORKERS=${BENCH_WORKERS:-$(nproc)}
SESSIONS=${BENCH_SESSIONS:-2048}
MAX_TURNS=${BENCH_MAX_TURNS:-20}
LOG_LEVEL_=${BENCH_LOG_LEVEL:-warn}
OUT_JSON=${BENCH_OUT:-$BENCH_DIR/results/latest.json}
DB_DIR_=${BENCH_DB_DIR:-} # default: the scratch directory (on /tmp)
DATABASE=${BENCH_DATABASE:-sqlite}

die() { echo "bench: $*" >&2; exit 2; }

for v in DURATION WARMUP CONNS THREADS WORKERS SESSIONS MAX_TURNS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DURATION >= 1)) || die "BENCH_SECONDS must be at least 1"
((THREADS >= 1 && CONNS >= THREADS)) || die "need BENCH_CONNECTIONS >= BENCH_THREADS >= 1"
[[ $DATABASE == sqlite || $DATABASE == postgres ]] || die "BENCH_DATABASE must be sqlite or postgres (got '$DATABASE')"
[[ -x $PY ]] || die "$PY not found"
command -v node >/dev/null || die "node not found"
command -v curl >/dev/null || die "curl not found"

# --- wrk ---------------------------------------------------------------------
if ! command -v wrk >/dev/null; then
    echo "bench: installing wrk (Debian package)" >&2
    SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get install -y wrk >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y wrk >&2; } ||
        die "cannot install wrk"
fi

# --- chatd binary ------------------------------------------------------------
build_type() { # CMAKE_BUILD_TYPE of the build tree holding binary $1, or "unknown"
    local cache
    cache="$(dirname "$1")/CMakeCache.txt"
    if [[ -f $cache ]]; then
        sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$cache" | head -n1
    else
        echo unknown
    fi
}
if [[ $# -ge 1 ]]; then
    BIN=$1
    [[ -x $BIN ]] || die "$BIN is not an executable"
else
    BIN=$ROOT/build/chatd
    if [[ ! -x $BIN || $(build_type "$BIN") != Release ]]; then
        # Without an argument only a Release binary is measured: a Debug one
        # would be misleading. build/ is used when it is a Release tree.
        BIN=$ROOT/build-release/chatd
        if [[ ! -x $BIN ]]; then
            echo "bench: building chatd (Release) in build-release/" >&2
            (cd "$ROOT" && cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >&2 &&
                cmake --build build-release -j2 --target chatd >&2) || die "build failed"
        fi
    fi
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
BUILD_TYPE=$(build_type "$BIN")
[[ $BUILD_TYPE == Release ]] ||
    echo "bench: WARNING: $BIN is a '$BUILD_TYPE' build, not Release: numbers are not representative" >&2

# --- scratch directory and cleanup --------------------------------------------
TMP=$(mktemp -d /tmp/chatd-bench.XXXXXX)
if [[ -n $DB_DIR_ ]]; then
    [[ -d $DB_DIR_ ]] || die "BENCH_DB_DIR $DB_DIR_ is not a directory"
    DB_DIR_=$(mktemp -d "$DB_DIR_/chatd-bench-db.XXXXXX")
else
    DB_DIR_=$TMP
fi
FAKE_PID=
CHATD_PID=
CHATD_EXIT=
PG_DIR=

STOP_RC=
stop_pid() { # pid: SIGTERM, up to 5 s grace, then SIGKILL; exit status in STOP_RC
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    STOP_RC=0
    wait "$pid" 2>/dev/null || STOP_RC=$?
}
cleanup() {
    [[ -n $CHATD_PID ]] && stop_pid "$CHATD_PID"
    [[ -n $FAKE_PID ]] && stop_pid "$FAKE_PID"
    [[ -n $PG_DIR ]] && { "$ROOT/tests/pg/pgserver.sh" stop "$PG_DIR" || echo "bench: PostgreSQL did not stop" >&2; }
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench: scratch files kept in $TMP${PG_DIR:+ and $PG_DIR}" >&2
    else
        rm -rf "$TMP"
        [[ $DB_DIR_ == "$TMP" ]] || rm -rf "$DB_DIR_"
        [[ -z $PG_DIR ]] || rm -rf "$PG_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- fake provider -------------------------------------------------------------
(cd "$ROOT" && exec node tests/fake_llm/server.mjs --port 0 --host 127.0.0.1 --log-max 16) \
    >"$TMP/fake.out" 2>"$TMP/fake.err" &
FAKE_PID=$!
FAKE_PORT=
for ((i = 0; i < 100; i++)); do
    FAKE_PORT=$(sed -n 's/^LISTENING \([0-9][0-9]*\)$/\1/p' "$TMP/fake.out" | head -n1)
    [[ -n $FAKE_PORT ]] && break
    kill -0 "$FAKE_PID" 2>/dev/null || { cat "$TMP/fake.err" >&2; die "the fake provider exited"; }
    sleep 0.1
done
[[ -n $FAKE_PORT ]] || die "the fake provider did not print LISTENING within 10 s"
FAKE=http://127.0.0.1:$FAKE_PORT

# --- database --------------------------------------------------------------------
if [[ $DATABASE == postgres ]]; then
    # Its own directory, not under the scratch one: the server runs as user
    # postgres and the scratch directory is private to the caller.
    PG_DIR=$(mktemp -d "${BENCH_DB_DIR:-/tmp}/chatd-pg-bench.XXXXXX")
    echo "bench: starting PostgreSQL in $PG_DIR (durable: fsync and synchronous_commit on)" >&2
    DB_URL=$(PGSERVER_DURABLE=1 "$ROOT/tests/pg/pgserver.sh" start "$PG_DIR") || die "cannot start PostgreSQL"
    [[ -z ${BENCH_DB_SYNC:-} ]] || echo "bench: BENCH_DB_SYNC applies to SQLite only: ignored" >&2
    DB_DIR_REPORT=$PG_DIR
else
    DB_URL="sqlite:///$DB_DIR_/bench.db${BENCH_DB_SYNC:+?synchronous=$BENCH_DB_SYNC}"
    DB_DIR_REPORT=$DB_DIR_
fi

# --- chatd ---------------------------------------------------------------------
# A clean environment: the caller's CHAT_MODEL, .env etc. must not leak in.
# BENCH_CHATD_ENV adds settings ("NAME=value NAME2=value2").
# shellcheck disable=SC2086
(cd "$TMP" && exec env -i PATH="$PATH" HOME="$TMP" ENV_FILE=/dev/null \
    ANTHROPIC_API_KEY=bench ANTHROPIC_BASE_URL="$FAKE" \
    DATABASE_URL="$DB_URL" PORT=0 HOST=127.0.0.1 WORKERS="$WORKERS" \
    LOG_LEVEL="$LOG_LEVEL_" DRAIN_TIMEOUT=2s RATE_LIMIT=off ${BENCH_CHATD_ENV:-} \
    "$BIN" serve) >"$TMP/chatd.out" 2>"$TMP/chatd.err" &
CHATD_PID=$!

# The port comes from the {"msg":"listening",...,"port":N} line; that line is
# logged at info level, so with LOG_LEVEL=warn the listening socket of the
# process is looked up instead (ss). Readiness is then GET /healthz.
CHATD_PORT=
for ((i = 0; i < 150; i++)); do
    CHATD_PORT=$(sed -n 's/.*"msg":"listening".*"port":\([0-9][0-9]*\).*/\1/p' "$TMP/chatd.err" | head -n1)
    [[ -z $CHATD_PORT ]] &&
        CHATD_PORT=$(ss -Hltnp 2>/dev/null | grep "pid=$CHATD_PID," | awk '{print $4}' | sed 's/.*://' | head -n1 || true)
    [[ -n $CHATD_PORT ]] && break
    kill -0 "$CHATD_PID" 2>/dev/null || { cat "$TMP/chatd.err" >&2; die "chatd exited at start"; }
    sleep 0.1
done
[[ -n $CHATD_PORT ]] || { tail -n 20 "$TMP/chatd.err" >&2; die "no listening port for chatd within 15 s"; }
CHATD=http://127.0.0.1:$CHATD_PORT
for ((i = 0; i < 100; i++)); do
    curl -fsS -o /dev/null --max-time 2 "$CHATD/healthz" 2>/dev/null && break
    kill -0 "$CHATD_PID" 2>/dev/null || { cat "$TMP/chatd.err" >&2; die "chatd exited at start"; }
    sleep 0.1
done
curl -fsS -o /dev/null --max-time 2 "$CHATD/healthz" || die "chatd does not answer GET /healthz"

# --- measurements ----------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fake_count() { curl -fsS --max-time 5 "$FAKE/_fake/stats" | sed -n 's/.*"requests":\([0-9]*\).*/\1/p'; }
IDLE_RSS_KB=$(status_kb "$CHATD_PID" VmRSS)

# run_phase NAME MODE URL-PATH TARGET(chatd|fake) SECONDS PREFIX
# Writes $TMP/NAME.json (wrk summary from turns.lua), $TMP/NAME.wrk.txt (wrk's
# text) and $TMP/NAME.meta.json (CPU, RSS, upstream request count).
run_phase() {
    local name=$1 mode=$2 path=$3 target=$4 secs=$5 prefix=$6 base
    [[ $target == chatd ]] && base=$CHATD || base=$FAKE
    echo "bench: $name: $mode, ${secs}s, $CONNS connections, $THREADS threads -> $base$path" >&2
    local c0 f0 n0 c1 f1 n1 t0 t1 rc=0 alive=1
    c0=$(cpu_ticks "$CHATD_PID"); f0=$(cpu_ticks "$FAKE_PID"); n0=$(fake_count || true); t0=$(date +%s.%N)
    BENCH_MODE=$mode BENCH_PREFIX=$prefix BENCH_SESSIONS=$SESSIONS BENCH_MAX_TURNS=$MAX_TURNS \
        BENCH_THREADS=$THREADS BENCH_OUT="$TMP/$name.json" \
        timeout $((secs + 60)) wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 30s --latency \
        -s "$BENCH_DIR/turns.lua" "$base$path" >"$TMP/$name.wrk.txt" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$CHATD_PID"); f1=$(cpu_ticks "$FAKE_PID"); n1=$(fake_count || true)
    n0=${n0:-0}; n1=${n1:-$n0}
    kill -0 "$CHATD_PID" 2>/dev/null || alive=0
    printf '{"wrk_exit":%d,"wall_s":%s,"chatd_alive":%d,"chatd_cpu_s":%s,"fake_cpu_s":%s,"upstream_requests":%d,"vmrss_kb":%d,"vmhwm_kb":%d}\n' \
        "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" "$alive" \
        "$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / t}')" \
        "$(awk -v a="$f0" -v b="$f1" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / t}')" "$((n1 - n0))" \
        "$(status_kb "$CHATD_PID" VmRSS || echo 0)" "$(status_kb "$CHATD_PID" VmHWM || echo 0)" \
        >"$TMP/$name.meta.json"
    if ((rc != 0)); then
        echo "bench: wrk failed in phase $name (exit $rc):" >&2
        tail -n 20 "$TMP/$name.wrk.txt" >&2
    fi
    ((alive)) || echo "bench: CHATD DIED during phase $name" >&2
}

# The request chatd last sent upstream, so the direct phases send its twin.
capture_upstream() { # file
    curl -fsS --max-time 5 "$FAKE/_fake/requests?limit=1" >"$1" || echo '{"requests":[]}' >"$1"
}
# Sets UP_MODEL, UP_MAX_TOKENS, UP_SYSTEM_JSON, UP_STREAM from a capture.
read_upstream() {
    eval "$("$PY" - "$1" <<'EOF'
import json, shlex, sys
reqs = json.load(open(sys.argv[1])).get("requests") or []
b = reqs[-1]["body"] if reqs and isinstance(reqs[-1].get("body"), dict) else {}
print("UP_MODEL=%s" % shlex.quote(str(b.get("model", "claude-sonnet-4-6"))))
print("UP_MAX_TOKENS=%s" % shlex.quote(str(int(b.get("max_tokens", 1024)))))
print("UP_SYSTEM_JSON=%s" % shlex.quote(json.dumps(b.get("system", "You are a helpful AI assistant."))))
print("UP_STREAM=%d" % (1 if b.get("stream") else 0))
EOF
)"
}

alive_or_die() {
    kill -0 "$CHATD_PID" 2>/dev/null && return 0
    echo "bench: CHATD DIED; last lines of its stderr:" >&2
    tail -n 30 "$TMP/chatd.err" >&2
    return 1
}

PHASES=()
if ((WARMUP > 0)); then run_phase warmup_chat chat /chat chatd "$WARMUP" w; fi
alive_or_die || true
capture_upstream "$TMP/upstream_chat.json"
read_upstream "$TMP/upstream_chat.json"
if kill -0 "$CHATD_PID" 2>/dev/null; then
    run_phase chat chat /chat chatd "$DURATION" c
    PHASES+=(chat)
fi
capture_upstream "$TMP/upstream_chat.json"
read_upstream "$TMP/upstream_chat.json"
DIRECT_MODE=direct; ((UP_STREAM)) && DIRECT_MODE=direct_stream
BENCH_MODEL=$UP_MODEL BENCH_MAX_TOKENS=$UP_MAX_TOKENS BENCH_SYSTEM_JSON=$UP_SYSTEM_JSON \
    run_phase direct "$DIRECT_MODE" /v1/messages fake "$DURATION" d
PHASES+=(direct)

if kill -0 "$CHATD_PID" 2>/dev/null; then
    if ((WARMUP > 0)); then run_phase warmup_stream stream /v1/chat/stream chatd "$WARMUP" x; fi
    run_phase stream stream /v1/chat/stream chatd "$DURATION" s
    PHASES+=(stream)
fi
capture_upstream "$TMP/upstream_stream.json"
read_upstream "$TMP/upstream_stream.json"
BENCH_MODEL=$UP_MODEL BENCH_MAX_TOKENS=$UP_MAX_TOKENS BENCH_SYSTEM_JSON=$UP_SYSTEM_JSON \
    run_phase direct_stream direct_stream /v1/messages fake "$DURATION" e
PHASES+=(direct_stream)

# Final state of chatd: peak memory, then a clean stop (its exit status matters:
# a crash at shutdown is a bug too).
FINAL_HWM_KB=$(status_kb "$CHATD_PID" VmHWM || echo 0)
FINAL_RSS_KB=$(status_kb "$CHATD_PID" VmRSS || echo 0)
if [[ $DATABASE == postgres ]]; then
    DB_BYTES=$(psql -X -tAc "SELECT pg_database_size(current_database())" "$DB_URL" 2>/dev/null || echo 0)
else
    DB_BYTES=$(du -cb "$DB_DIR_"/bench.db* 2>/dev/null | tail -n1 | awk '{print $1}')
fi
stop_pid "$CHATD_PID"
CHATD_EXIT=$STOP_RC
CHATD_PID=

mkdir -p "$(dirname "$OUT_JSON")"
"$PY" "$BENCH_DIR/report.py" --dir "$TMP" --out "$OUT_JSON" \
    --binary "$BIN" --build-type "$BUILD_TYPE" --workers "$WORKERS" --connections "$CONNS" \
    --threads "$THREADS" --seconds "$DURATION" --warmup "$WARMUP" --sessions "$SESSIONS" \
    --max-turns "$MAX_TURNS" --idle-rss-kb "${IDLE_RSS_KB:-0}" --final-hwm-kb "${FINAL_HWM_KB:-0}" \
    --final-rss-kb "${FINAL_RSS_KB:-0}" --db-bytes "${DB_BYTES:-0}" --chatd-exit "$CHATD_EXIT" \
    --db-dir "$DB_DIR_REPORT" --database "$DATABASE" --db-sync "${BENCH_DB_SYNC:-full}" --phases "${PHASES[*]}"
