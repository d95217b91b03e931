#!/usr/bin/env bash
# chatd benchmark, one command: what chatd costs on top of an LLM provider,
# next to the same load sent straight to the fake provider and through nginx,
# all in one run (issue 15: the goals are ratios to these same-run references).
#
#   bench/run.sh [path-to-chatd-binary]
#
# Throughput phases (wrk, each BENCH_SECONDS, chatd ones after a BENCH_WARMUP):
#   chat           POST /chat (seed, non-streaming, SQLite synchronous=FULL)
#   direct         the equivalent POST /v1/messages straight to the fake
#   nginx          the same request through nginx (bench/nginx.conf) to the fake
#   portkey        the same request through the Portkey AI gateway (npm
#                  @portkey-ai/gateway, pinned in bench/portkey/; BENCH_PORTKEY=1)
#   stream         POST /v1/chat/stream (SSE) through chatd
#   direct_stream  the equivalent streaming POST /v1/messages to the fake
#   nginx_stream   the same stream through nginx
#   healthz        GET /healthz on chatd
#   stateless      POST /v1/chat/completions on chatd (nothing stored)
#   chat_normal    POST /chat on a chatd with ?synchronous=normal (BENCH_VARIANTS)
#   chat_w1        POST /chat on a chatd with WORKERS=1 (BENCH_VARIANTS)
# Then: added latency at half of the maximum rate (BENCH_LATENCY: the open-loop
# generator bench/openloop.c at half the turns/s of the stateless and /chat
# phases, against chatd, the fake directly and nginx, BENCH_LATENCY_SECONDS),
# syscalls per turn (strace -c -f on short separate runs, BENCH_SYSCALLS),
# the streams phase (BENCH_STREAMS concurrent slow SSE streams on chatd, then on
# nginx: all whole? RSS per open stream, memory given back?) and the long-session
# phase (BENCH_LONG_TURNS turns of ~2 KB in one session: turn 5 vs turn 500).
# Server CPU per request comes from /proc/PID/stat (utime+stime) deltas.
#
# Table on stdout, JSON in bench/results/latest.json, and (BENCH_RECORD=1, the
# default) bench/results/<date>-<shortsha>.md and .json with the machine's
# description. Exit status: 0 clean run, 1 a phase had errors or chatd died
# (the numbers are then NOT a valid result), 2 setup failure.
# Settings (environment): see bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
PY=/usr/bin/python3 # Debian's python (the pyenv one on PATH may lack modules)
export PATH="$PATH:/usr/sbin:/sbin" # nginx lives in /usr/sbin
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

DURATION=${BENCH_SECONDS:-8}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-16}
THREADS=${BENCH_THREADS:-1}
WORKERS=${BENCH_WORKERS:-$(nproc)}
SESSIONS=${BENCH_SESSIONS:-2048}
MAX_TURNS=${BENCH_MAX_TURNS:-1}
LOG_LEVEL_=${BENCH_LOG_LEVEL:-warn}
OUT_JSON=${BENCH_OUT:-$BENCH_DIR/results/latest.json}
DB_DIR_=${BENCH_DB_DIR:-} # default: the scratch directory (on /tmp)
DATABASE=${BENCH_DATABASE:-sqlite}
NGINX_ON=${BENCH_NGINX:-1}
NGINX_WORKERS=${BENCH_NGINX_WORKERS:-$WORKERS}
VARIANTS=${BENCH_VARIANTS:-1}
SYSCALLS=${BENCH_SYSCALLS:-1}
SYS_SECONDS=${BENCH_SYSCALL_SECONDS:-3}
SYS_CONNS=${BENCH_SYSCALL_CONNECTIONS:-4}
STREAMS=${BENCH_STREAMS:-2000}
STREAM_HOLD=${BENCH_STREAM_HOLD:-10}
STREAM_DELTAS=${BENCH_STREAM_DELTAS:-20}
STREAM_RAMP=${BENCH_STREAM_RAMP:-4000}
STREAM_SETTLE=${BENCH_STREAM_SETTLE:-3}
LONG_TURNS=${BENCH_LONG_TURNS:-500}
LONG_BYTES=${BENCH_LONG_BYTES:-2048}
LONG_TIMEOUT=${BENCH_LONG_TIMEOUT:-90}
LATENCY=${BENCH_LATENCY:-1}
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-8}
LAT_MAXCONN=${BENCH_LATENCY_CONNECTIONS:-64}
LAT_ROUNDS=${BENCH_LATENCY_ROUNDS:-2}
RATIO_ROUNDS=${BENCH_RATIO_ROUNDS:-3}
RATIO_SECONDS=${BENCH_RATIO_SECONDS:-5}
RECORD=${BENCH_RECORD:-1}
# Off by default: the gateway is installed from the npm registry on every run
# that asks for it (network, ~15 s); see bench/README.md.
PORTKEY_ON=${BENCH_PORTKEY:-0}
# Its warm-up: V8 needs about 10 s of this load before the gateway's CPU per
# request settles (measured: 4.1, 2.2, 1.7, 1.5, 1.5 ms in five 3 s rounds).
PORTKEY_WARMUP=${BENCH_PORTKEY_WARMUP:-10}
[[ ${BENCH_TAG:-} =~ ^[A-Za-z0-9_-]*$ ]] || { echo "bench: BENCH_TAG may hold letters, digits, - and _ only" >&2; exit 2; }

for v in DURATION WARMUP CONNS THREADS WORKERS SESSIONS MAX_TURNS NGINX_ON NGINX_WORKERS VARIANTS SYSCALLS \
    SYS_SECONDS SYS_CONNS STREAMS STREAM_HOLD STREAM_DELTAS STREAM_RAMP STREAM_SETTLE LONG_TURNS LONG_BYTES \
    LONG_TIMEOUT RECORD LATENCY LAT_SECONDS LAT_MAXCONN LAT_ROUNDS RATIO_ROUNDS RATIO_SECONDS PORTKEY_ON \
    PORTKEY_WARMUP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((DURATION >= 1)) || die "BENCH_SECONDS must be at least 1"
((THREADS >= 1 && CONNS >= THREADS)) || die "need BENCH_CONNECTIONS >= BENCH_THREADS >= 1"
((STREAM_DELTAS >= 2 && STREAM_HOLD >= 1 && STREAM_RAMP >= 1)) ||
    die "need BENCH_STREAM_DELTAS >= 2, BENCH_STREAM_HOLD >= 1, BENCH_STREAM_RAMP >= 1"
((LONG_TURNS == 0 || LONG_TURNS >= 20)) || die "BENCH_LONG_TURNS must be 0 (off) or at least 20"
((NGINX_WORKERS >= 1)) || die "BENCH_NGINX_WORKERS must be at least 1"
((RATIO_SECONDS >= 1)) || die "BENCH_RATIO_SECONDS must be at least 1"
((LAT_SECONDS >= 1 && LAT_MAXCONN >= 16 && LAT_ROUNDS >= 1)) ||
    die "need BENCH_LATENCY_SECONDS >= 1, BENCH_LATENCY_CONNECTIONS >= 16 and BENCH_LATENCY_ROUNDS >= 1"
[[ $DATABASE == sqlite || $DATABASE == postgres ]] || die "BENCH_DATABASE must be sqlite or postgres (got '$DATABASE')"
[[ -x $PY ]] || die "$PY not found"
command -v node >/dev/null || die "node not found"
command -v curl >/dev/null || die "curl not found"

# Descriptors: the streams phase holds thousands of sockets in the client, the
# fake, nginx and chatd (each raises or inherits this soft limit; chatd raises
# its own to the hard limit at start, see src/app/app.c).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576

# --- tools (Debian packages, installed if missing) ------------------------------
command -v wrk >/dev/null || apt_install wrk || die "cannot install wrk"
if ((NGINX_ON)); then
    command -v nginx >/dev/null || apt_install nginx || die "cannot install nginx (BENCH_NGINX=0 runs without it)"
    NGINX_BIN=$(command -v nginx) || die "nginx not found after installing it"
fi
if ((SYSCALLS)); then
    command -v strace >/dev/null || apt_install strace ||
        { echo "bench: strace not available: no syscall counts" >&2; SYSCALLS=0; }
fi

# --- chatd binary ------------------------------------------------------------
resolve_chatd_bin "${1:-}"

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
NGINX_PID=
NGINX_DIR=
STRACE_PID=
PORTKEY_PID=
PG_DIR=
PHASES=()

cleanup() {
    [[ -n $STRACE_PID ]] && stop_pid "$STRACE_PID"
    [[ -n $CHATD_PID ]] && stop_pid "$CHATD_PID"
    [[ -n $PORTKEY_PID ]] && stop_pid "$PORTKEY_PID"
    [[ -n $NGINX_PID ]] && stop_pid "$NGINX_PID" # the master stops its workers
    [[ -n $FAKE_PID ]] && stop_pid "$FAKE_PID"
    [[ -n $PG_DIR ]] && { "$ROOT/tests/pg/pgserver.sh" stop "$PG_DIR" || echo "bench: PostgreSQL did not stop" >&2; }
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench: scratch files kept in $TMP${NGINX_DIR:+ and $NGINX_DIR}${PG_DIR:+ and $PG_DIR}" >&2
    else
        rm -rf "$TMP"
        [[ $DB_DIR_ == "$TMP" ]] || rm -rf "$DB_DIR_"
        [[ -z $NGINX_DIR ]] || rm -rf "$NGINX_DIR"
        [[ -z $PG_DIR ]] || rm -rf "$PG_DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the Portkey gateway (BENCH_PORTKEY=1): npm ci into the scratch directory ---
# bench/portkey/package-lock.json pins the gateway and every dependency; the npm
# cache is used when it has them (--prefer-offline), the registry otherwise.
# --ignore-scripts: its only install script is patch-package, and the published
# package carries no patches. Done before any server starts, so a missing
# network fails the run at once.
PORTKEY_VERSION=
if ((PORTKEY_ON)); then
    command -v npm >/dev/null || die "npm not found (BENCH_PORTKEY=0 runs without the Portkey row)"
    PORTKEY_DIR=$TMP/portkey
    mkdir -p "$PORTKEY_DIR"
    cp "$BENCH_DIR/portkey/package.json" "$BENCH_DIR/portkey/package-lock.json" "$PORTKEY_DIR/"
    echo "bench: installing the Portkey gateway (npm ci, bench/portkey/package-lock.json) into $PORTKEY_DIR" >&2
    (cd "$PORTKEY_DIR" && timeout 300 npm ci --ignore-scripts --prefer-offline --no-audit --no-fund \
        --loglevel=error) >"$TMP/portkey-npm.log" 2>&1 ||
        { tail -n 20 "$TMP/portkey-npm.log" >&2; die "cannot install the Portkey gateway from npm (BENCH_PORTKEY=0 runs without it)"; }
    PORTKEY_PKG=$PORTKEY_DIR/node_modules/@portkey-ai/gateway
    PORTKEY_VERSION=$(node -p 'require(process.argv[1]).version' "$PORTKEY_PKG/package.json") ||
        die "the Portkey gateway is not where npm should have put it ($PORTKEY_PKG)"
fi

# --- machine load before anything starts (the other users of the machine) -------
((LATENCY)) && build_openloop

LOAD_BEFORE=$(cores_busy 2)
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_T0=$(date +%s)

# --- fake provider -------------------------------------------------------------
start_fake

# --- nginx -----------------------------------------------------------------------
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
nginx_pids() { # master and workers
    [[ -n $NGINX_PID ]] || return 0
    # shellcheck disable=SC2046 # one PID per word
    echo "$NGINX_PID" $(cat /proc/"$NGINX_PID"/task/*/children 2>/dev/null)
}
if ((NGINX_ON)); then
    # Its own directory, readable by the worker user (nobody when run as root).
    NGINX_DIR=$(mktemp -d /tmp/chatd-bench-nginx.XXXXXX)
    chmod 755 "$NGINX_DIR"
    mkdir -p "$NGINX_DIR/tmp"
    NGINX_PORT=$(free_port)
    USER_LINE=
    [[ $(id -u) -eq 0 ]] && USER_LINE="user nobody nogroup;"
    # Every stream is a client and an upstream connection; one worker may get
    # most of a burst.
    WCONN=$((2 * STREAMS + 1024))
    NGINX_NOFILE=$((WCONN + 64))
    ((NGINX_NOFILE <= NOFILE)) || { NGINX_NOFILE=$NOFILE; WCONN=$((NOFILE - 64)); }
    sed -e "s|@USER_LINE@|$USER_LINE|" -e "s|@WORKERS@|$NGINX_WORKERS|" -e "s|@NOFILE@|$NGINX_NOFILE|" \
        -e "s|@PREFIX@|$NGINX_DIR|g" -e "s|@WORKER_CONNECTIONS@|$WCONN|" -e "s|@FAKE_PORT@|$FAKE_PORT|" \
        -e "s|@PORT@|$NGINX_PORT|" "$BENCH_DIR/nginx.conf" >"$NGINX_DIR/nginx.conf"
    "$NGINX_BIN" -p "$NGINX_DIR/" -c "$NGINX_DIR/nginx.conf" -g 'daemon off;' \
        >"$TMP/nginx.out" 2>"$TMP/nginx.err" &
    NGINX_PID=$!
    NGINX=http://127.0.0.1:$NGINX_PORT
    for ((i = 0; i < 100; i++)); do
        curl -fsS -o /dev/null --max-time 2 "$NGINX/_fake/stats" 2>/dev/null && break
        kill -0 "$NGINX_PID" 2>/dev/null || { cat "$TMP/nginx.err" "$NGINX_DIR/error.log" >&2 || true; die "nginx exited at start"; }
        sleep 0.1
    done
    curl -fsS -o /dev/null --max-time 2 "$NGINX/_fake/stats" || die "nginx does not proxy to the fake"
fi

# start_portkey: the gateway's own CLI (build/start-server.js --port=N
# --headless: no web UI), in a clean environment (it reads HTTP_PROXY and
# others), preloaded with bench/portkey/listen_localhost.cjs so that it binds
# 127.0.0.1 (its CLI has no host option). Sets PORTKEY_PID and PORTKEY.
start_portkey() {
    local i port
    port=$(free_port)
    (cd "$PORTKEY_DIR" && exec env -i PATH="$PATH" HOME="$TMP" node \
        --require "$BENCH_DIR/portkey/listen_localhost.cjs" "$PORTKEY_PKG/build/start-server.js" \
        --port="$port" --headless) >"$TMP/portkey.out" 2>"$TMP/portkey.err" &
    PORTKEY_PID=$!
    PORTKEY=http://127.0.0.1:$port
    for ((i = 0; i < 150; i++)); do
        curl -fsS --max-time 2 "$PORTKEY/" 2>/dev/null | grep -q 'AI Gateway' && break
        kill -0 "$PORTKEY_PID" 2>/dev/null || { tail -n 20 "$TMP/portkey.err" >&2; die "the Portkey gateway exited at start"; }
        sleep 0.1
    done
    curl -fsS --max-time 2 "$PORTKEY/" 2>/dev/null | grep -q 'AI Gateway' || die "the Portkey gateway does not answer GET /"
    if ss -Hltnp 2>/dev/null | grep "pid=$PORTKEY_PID," | awk '{print $4}' | grep -qv '^127\.0\.0\.1:'; then
        die "the Portkey gateway listens beyond 127.0.0.1"
    fi
}

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
# --- measurements ----------------------------------------------------------------
fake_count() { curl -fsS --max-time 5 "$FAKE/_fake/stats" | sed -n 's/.*"requests":\([0-9]*\).*/\1/p'; }

# run_phase NAME MODE URL-PATH TARGET(chatd|fake|nginx) SECONDS PREFIX [CONNECTIONS]
# Writes $TMP/NAME.json (wrk summary from turns.lua), $TMP/NAME.wrk.txt (wrk's
# text) and $TMP/NAME.meta.json (CPU of the server under test, of chatd, the
# fake and nginx, machine-wide busy CPU, chatd RSS, upstream request count).
run_phase() {
    local name=$1 mode=$2 path=$3 target=$4 secs_=$5 prefix=$6 conns=${7:-$CONNS} base threads=$THREADS
    local server_pids
    case $target in
    chatd) base=$CHATD; server_pids=$CHATD_PID ;;
    nginx) base=$NGINX; server_pids=$(nginx_pids) ;;
    portkey) base=$PORTKEY; server_pids=$PORTKEY_PID ;;
    *) base=$FAKE; server_pids=$FAKE_PID ;;
    esac
    ((threads <= conns)) || threads=$conns
    echo "bench: $name: $mode, ${secs_}s, $conns connections, $threads threads -> $base$path" >&2
    local s0 c0 f0 g0 m0 n0 t0 s1 c1 f1 g1 m1 n1 t1 rc=0 alive=1
    # shellcheck disable=SC2086
    s0=$(cpu_ticks $server_pids); c0=$(cpu_ticks "$CHATD_PID"); f0=$(cpu_ticks "$FAKE_PID")
    # shellcheck disable=SC2046
    g0=$(cpu_ticks $(nginx_pids)); m0=$(cpu_busy_total); n0=$(fake_count || true); t0=$(date +%s.%N)
    BENCH_MODE=$mode BENCH_PREFIX=$prefix BENCH_SESSIONS=$SESSIONS BENCH_MAX_TURNS=$MAX_TURNS \
        BENCH_THREADS=$threads BENCH_OUT="$TMP/$name.json" \
        timeout $((secs_ + 60)) wrk -t"$threads" -c"$conns" -d"${secs_}s" --timeout 30s --latency \
        -s "$BENCH_DIR/turns.lua" "$base$path" >"$TMP/$name.wrk.txt" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    # shellcheck disable=SC2086
    s1=$(cpu_ticks $server_pids); c1=$(cpu_ticks "$CHATD_PID"); f1=$(cpu_ticks "$FAKE_PID")
    # shellcheck disable=SC2046
    g1=$(cpu_ticks $(nginx_pids)); m1=$(cpu_busy_total); n1=$(fake_count || true)
    n0=${n0:-0}; n1=${n1:-$n0}
    if [[ $target == chatd ]]; then kill -0 "$CHATD_PID" 2>/dev/null || alive=0; fi
    printf '{"target":"%s","connections":%d,"wrk_exit":%d,"wall_s":%s,"chatd_alive":%d,"server_cpu_s":%s,"chatd_cpu_s":%s,"fake_cpu_s":%s,"nginx_cpu_s":%s,"machine_busy_cores":%s,"upstream_requests":%d,"vmrss_kb":%d,"vmhwm_kb":%d}\n' \
        "$target" "$conns" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" "$alive" \
        "$(secs "$s0" "$s1")" "$(secs "$c0" "$c1")" "$(secs "$f0" "$f1")" "$(secs "$g0" "$g1")" \
        "$(busy_cores "$m0" "$m1")" "$((n1 - n0))" \
        "$(status_kb "$CHATD_PID" VmRSS || echo 0)" "$(status_kb "$CHATD_PID" VmHWM || echo 0)" \
        >"$TMP/$name.meta.json"
    if ((rc != 0)); then
        echo "bench: wrk failed in phase $name (exit $rc):" >&2
        tail -n 20 "$TMP/$name.wrk.txt" >&2
    fi
    ((alive)) || echo "bench: CHATD DIED during phase $name" >&2
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
direct_phase() { # NAME MODE TARGET PREFIX: the twin of chatd's last upstream request
    BENCH_MODEL=$UP_MODEL BENCH_MAX_TOKENS=$UP_MAX_TOKENS BENCH_SYSTEM_JSON=$UP_SYSTEM_JSON \
        run_phase "$1" "$2" /v1/messages "$3" "$DURATION" "$4"
    PHASES+=("$1")
}
chatd_phase() { # NAME MODE PATH PREFIX: warm-up, then the measured phase
    alive_or_die || return 0
    if ((WARMUP > 0)); then run_phase "warmup_$1" "$2" "$3" chatd "$WARMUP" "w$4"; fi
    alive_or_die || return 0
    run_phase "$1" "$2" "$3" chatd "$DURATION" "$4"
    PHASES+=("$1")
}

# syscall_phase NAME MODE PATH PREFIX: the same load, fewer connections, with
# strace -c -f attached to every thread of chatd. strace slows chatd down many
# times: only the counts per turn mean anything, never the speed.
SYS_PHASES=()
syscall_phase() {
    alive_or_die || return 0
    echo "bench: syscalls: strace -c -f on chatd during $1" >&2
    # strace itself is the child (stopped by PID: SIGTERM makes it detach and
    # write its summary; stop_pid kills it after 5 s more if it does not).
    strace -f -c -o "$TMP/$1.strace" -p "$CHATD_PID" 2>"$TMP/$1.strace.err" &
    STRACE_PID=$!
    sleep 1 # attach to every thread
    run_phase "$1" "$2" "$3" chatd "$SYS_SECONDS" "$4" "$SYS_CONNS"
    kill -TERM "$STRACE_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$STRACE_PID" 2>/dev/null || break
        sleep 0.1
    done
    stop_pid "$STRACE_PID"
    STRACE_PID=
    SYS_PHASES+=("$1")
}

# streams_phase NAME KIND URL PIDS: BENCH_STREAMS concurrent slow streams.
STREAM_PHASES=()
streams_phase() {
    echo "bench: $1: $STREAMS concurrent streams of ~${STREAM_HOLD}s -> $3" >&2
    timeout $((STREAMS / STREAM_RAMP + STREAM_HOLD + STREAM_SETTLE + 90)) \
        node "$BENCH_DIR/streams.mjs" --url "$3" --kind "$2" --n "$STREAMS" --pids "$4" \
        --ramp "$STREAM_RAMP" --timeout $((STREAMS / STREAM_RAMP + STREAM_HOLD + 30)) --settle "$STREAM_SETTLE" \
        --prefix "$1" --model "$UP_MODEL" --max-tokens "$UP_MAX_TOKENS" --system-json "$UP_SYSTEM_JSON" \
        --out "$TMP/$1.json" 2>"$TMP/$1.err" || echo "bench: streams client failed in $1 (exit $?)" >&2
    cat "$TMP/$1.err" >&2 || true
    STREAM_PHASES+=("$1")
}

# latency_phase NAME TARGET(chatd|fake|nginx) PATH BODY-FILE RATE EXPECT PREFIX:
# bench/openloop.c at a fixed RATE (requests due at t0 + i / RATE, latency from
# the scheduled time: no coordinated omission) for LAT_SECONDS / LAT_ROUNDS
# after a 0.5 s warm-up, over up to LAT_MAXCONN keep-alive connections. Writes
# $TMP/NAME.json (openloop's result), NAME.lat and NAME.ovh (its raw
# latencies and X-Chatd-Overhead-Ms values) and NAME.meta.json (server CPU).
LAT_PHASES=()
latency_phase() {
    local name=$1 target=$2 path=$3 body=$4 rate=$5 expect=$6 prefix=$7 base server_pids rc=0 alive=1
    local -a hdrs=(--header 'Content-Type: application/json')
    case $target in
    chatd) base=$CHATD; server_pids=$CHATD_PID ;;
    nginx) base=$NGINX; server_pids=$(nginx_pids) ;;
    *) base=$FAKE; server_pids=$FAKE_PID ;;
    esac
    [[ $target == chatd ]] || hdrs+=(--header 'x-api-key: bench' --header 'anthropic-version: 2023-06-01')
    local dur
    dur=$(awk -v s="$LAT_SECONDS" -v r="$LAT_ROUNDS" 'BEGIN {printf "%.3f", s / r}')
    echo "bench: $name: open loop, $rate requests/s for ${dur}s (+0.5 s warm-up) -> $base$path" >&2
    local s0 c0 m0 s1 c1 m1
    # shellcheck disable=SC2086
    s0=$(cpu_ticks $server_pids); c0=$(cpu_ticks "$CHATD_PID"); m0=$(cpu_busy_total)
    timeout $((LAT_SECONDS + 40)) "$OPENLOOP" --url "$base$path" --method POST --body-file "$body" "${hdrs[@]}" \
        --rate "$rate" --duration "$dur" --warmup 0.5 --connections 16 --max-connections "$LAT_MAXCONN" \
        --timeout 10 --drain 10 --expect "$expect" --prefix "$prefix" --out "$TMP/$name.json" --raw-out "$TMP/$name" \
        2>"$TMP/$name.err" || rc=$?
    # shellcheck disable=SC2086
    s1=$(cpu_ticks $server_pids); c1=$(cpu_ticks "$CHATD_PID"); m1=$(cpu_busy_total)
    kill -0 "$CHATD_PID" 2>/dev/null || alive=0
    printf '{"target":"%s","rate":%s,"exit":%d,"chatd_alive":%d,"server_cpu_s":%s,"chatd_cpu_s":%s,"machine_busy_cores":%s}\n' \
        "$target" "$rate" "$rc" "$alive" "$(secs "$s0" "$s1")" "$(secs "$c0" "$c1")" "$(busy_cores "$m0" "$m1")" \
        >"$TMP/$name.meta.json"
    ((rc == 0)) || { echo "bench: openloop failed in $name (exit $rc):" >&2; tail -n 5 "$TMP/$name.err" >&2; }
    LAT_PHASES+=("$name")
}
# round_order R TARGET...: sets ORDER to the targets, reversed in every even
# round R, so that a burst of other load on the machine does not always land on
# the same target.
round_order() {
    local r=$1 i
    shift
    ORDER=("$@")
    ((r % 2)) && return 0
    ORDER=()
    for ((i = $#; i >= 1; i--)); do ORDER+=("${!i}"); done
}
half_rate() { # PHASE: half of the turns/s that wrk phase completed (whole requests/s, at least 1)
    "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(max(1, int(d["ok"] / (d["duration_us"] / 1e6) / 2)))' "$TMP/$1.json" 2>/dev/null || echo 0
}

# --- the run ---------------------------------------------------------------------
# The database disk's own fdatasync latency (bench/fsync_probe.py): a floor
# under a durable turn's latency, reported beside /chat's added latency.
if [[ $DATABASE != postgres ]]; then
    "$PY" "$BENCH_DIR/fsync_probe.py" "$DB_DIR_" "$TMP/fsync_probe.json" ||
        echo "bench: the fdatasync probe failed (not reported)" >&2
fi
start_chatd "$DB_URL" "$WORKERS"
IDLE_RSS_KB=$(status_kb "$CHATD_PID" VmRSS)

# Non-streaming: chatd, then the fake directly and through nginx.
chatd_phase chat chat /chat c
capture_upstream "$TMP/upstream_chat.json"
read_upstream "$TMP/upstream_chat.json"
DIRECT_MODE=direct; ((UP_STREAM)) && DIRECT_MODE=direct_stream
direct_phase direct "$DIRECT_MODE" fake d
((NGINX_ON)) && direct_phase nginx "$DIRECT_MODE" nginx n

# The same request through the Portkey gateway (its Anthropic-shape route
# /v1/messages, which forwards the body unchanged to <custom host>/messages:
# the fake gets the request chatd sends; report.py checks that on the capture).
# One node process; a warm-up first (BENCH_PORTKEY_WARMUP: its JIT needs
# longer than chatd's BENCH_WARMUP). Stopped right after, so it takes no CPU
# from the other phases.
if ((PORTKEY_ON)); then
    start_portkey
    PORTKEY_MODE=portkey; ((UP_STREAM)) && PORTKEY_MODE=portkey_stream
    if ((PORTKEY_WARMUP > 0)); then
        BENCH_MODEL=$UP_MODEL BENCH_MAX_TOKENS=$UP_MAX_TOKENS BENCH_SYSTEM_JSON=$UP_SYSTEM_JSON \
            BENCH_PORTKEY_UPSTREAM=$FAKE/v1 run_phase warmup_portkey "$PORTKEY_MODE" /v1/messages portkey \
            "$PORTKEY_WARMUP" wp
    fi
    BENCH_MODEL=$UP_MODEL BENCH_MAX_TOKENS=$UP_MAX_TOKENS BENCH_SYSTEM_JSON=$UP_SYSTEM_JSON \
        BENCH_PORTKEY_UPSTREAM=$FAKE/v1 run_phase portkey "$PORTKEY_MODE" /v1/messages portkey "$DURATION" p
    PHASES+=(portkey)
    capture_upstream "$TMP/upstream_portkey.json"
    PORTKEY_ALIVE=1
    kill -0 "$PORTKEY_PID" 2>/dev/null || { PORTKEY_ALIVE=0; echo "bench: the Portkey gateway DIED" >&2; }
    stop_pid "$PORTKEY_PID"
    PORTKEY_PID=
    echo "{\"version\":\"$PORTKEY_VERSION\",\"alive_at_end\":$PORTKEY_ALIVE,\"warmup_s\":$PORTKEY_WARMUP}" >"$TMP/portkey_gateway.json"
fi

# Streaming, the same three.
chatd_phase stream stream /v1/chat/stream s
capture_upstream "$TMP/upstream_stream.json"
read_upstream "$TMP/upstream_stream.json"
direct_phase direct_stream direct_stream fake e
((NGINX_ON)) && direct_phase nginx_stream direct_stream nginx m

# chatd's HTTP layer alone, and the stateless proxy path.
if alive_or_die; then
    run_phase healthz healthz /healthz chatd "$DURATION" h
    PHASES+=(healthz)
fi
chatd_phase stateless stateless /v1/chat/completions t
capture_upstream "$TMP/upstream_stateless.json"

# The two goals stated against nginx (/chat and stateless turns/s), measured
# again in RATIO_ROUNDS short rounds that interleave nginx, /chat and stateless
# (RATIO_SECONDS each, the order reversed every other round). The phases above
# run a minute apart, and this machine's speed drifts by more than the goals'
# margins over a minute (other users of the host): in a round the three
# targets see the same machine, so each round's ratio is a fair one, and
# report.py gives their median and range beside the single phases' ratio.
ROUND_PHASES=()
if ((RATIO_ROUNDS > 0 && NGINX_ON)) && alive_or_die; then
    read_upstream "$TMP/upstream_chat.json"
    ROUND_NGINX_MODE=direct
    ((UP_STREAM)) && ROUND_NGINX_MODE=direct_stream
    for ((r = 1; r <= RATIO_ROUNDS; r++)); do
        round_order "$r" nginx chat stateless
        for t in "${ORDER[@]}"; do
            alive_or_die || break 2
            case $t in
            nginx)
                BENCH_MODEL=$UP_MODEL BENCH_MAX_TOKENS=$UP_MAX_TOKENS BENCH_SYSTEM_JSON=$UP_SYSTEM_JSON \
                    run_phase "round_nginx.$r" "$ROUND_NGINX_MODE" /v1/messages nginx "$RATIO_SECONDS" "rn$r"
                ;;
            chat) run_phase "round_chat.$r" chat /chat chatd "$RATIO_SECONDS" "rc$r" ;;
            stateless) run_phase "round_stateless.$r" stateless /v1/chat/completions chatd "$RATIO_SECONDS" "rt$r" ;;
            esac
            ROUND_PHASES+=("round_$t.$r")
        done
    done
fi

# Added latency at half of the maximum rate (open loop): for the stateless
# path and /chat, half of the turns/s of their throughput phase above, against
# chatd, and at the same rate chatd's upstream request straight to the fake and
# through nginx. LAT_ROUNDS rounds, each target LAT_SECONDS / LAT_ROUNDS per
# round, the order reversed every other round, so a burst of other load on the
# machine does not land on one target only; report.py merges the rounds' raw
# latencies.
if ((LATENCY)) && alive_or_die; then
    printf '%s' '{"messages":[{"role":"user","content":"bench {{session}}"}]}' >"$TMP/lat_stateless.body"
    printf '%s' '{"message":"bench {{session}}","session_id":"{{session}}"}' >"$TMP/lat_chat.body"
    for kind in stateless chat; do
        rate=$(half_rate "$kind")
        if ((rate < 1)); then
            echo "bench: no throughput figure for $kind: no latency phase for it" >&2
            continue
        fi
        targets=(chatd)
        if upstream_body_template "$TMP/upstream_$kind.json" "$TMP/lat_${kind}_up.body"; then
            targets+=(direct)
            ((NGINX_ON)) && targets+=(nginx)
        else
            echo "bench: no upstream request of chatd captured for $kind: chatd only" >&2
        fi
        for ((r = 1; r <= LAT_ROUNDS; r++)); do
            round_order "$r" "${targets[@]}"
            for t in "${ORDER[@]}"; do
                alive_or_die || break 3
                case $kind/$t in
                chat/chatd) latency_phase "lat_chat_chatd.$r" chatd /chat "$TMP/lat_chat.body" "$rate" '"response"' "lc$r" ;;
                stateless/chatd)
                    latency_phase "lat_stateless_chatd.$r" chatd /v1/chat/completions "$TMP/lat_stateless.body" \
                        "$rate" '"finish_reason":"stop"' "lt$r"
                    ;;
                *)
                    latency_phase "lat_${kind}_$t.$r" "${t/direct/fake}" /v1/messages "$TMP/lat_${kind}_up.body" \
                        "$rate" '"stop_reason":"end_turn"' "l$t$kind$r"
                    ;;
                esac
            done
        done
    done
fi

# Syscalls per turn.
if ((SYSCALLS)); then
    syscall_phase sys_chat chat /chat yc
    syscall_phase sys_stream stream /v1/chat/stream ys
    syscall_phase sys_stateless stateless /v1/chat/completions yt
fi

# Concurrent streams: the provider slowed down so every stream stays open
# about STREAM_HOLD seconds (first delta after 500 ms, then STREAM_DELTAS words
# evenly spread).
if ((STREAMS > 0)) && alive_or_die; then
    GAP_MS=$(((STREAM_HOLD * 1000 - 500) / (STREAM_DELTAS - 1)))
    fake_script "{\"default\":{\"ttft_ms\":500,\"gap_ms\":$GAP_MS,\"reply_words\":$STREAM_DELTAS},\"queue\":[]}" ||
        die "cannot script the fake's slow mode"
    read_upstream "$TMP/upstream_stream.json"
    streams_phase streams_chatd chatd "$CHATD" "$CHATD_PID"
    # shellcheck disable=SC2046
    ((NGINX_ON)) && streams_phase streams_nginx anthropic "$NGINX" "$(nginx_pids | tr ' ' ',')"
    fake_script '{"default":null,"queue":[]}' || die "cannot reset the fake's script"
fi

# One long session.
LONG_DONE=0
if ((LONG_TURNS > 0)) && alive_or_die; then
    echo "bench: long session: $LONG_TURNS turns of ~$LONG_BYTES bytes in one session" >&2
    timeout $((LONG_TIMEOUT + 60)) "$PY" "$BENCH_DIR/long_session.py" --url "$CHATD" --turns "$LONG_TURNS" \
        --bytes "$LONG_BYTES" --timeout "$LONG_TIMEOUT" --out "$TMP/long_session.json" \
        --chatd-pid "$CHATD_PID" --fake-pid "$FAKE_PID" ||
        echo "bench: the long session did not complete" >&2
    LONG_DONE=1
fi

# Final state of the main chatd: peak memory, then a clean stop.
MAIN_ALIVE=1
kill -0 "$CHATD_PID" 2>/dev/null || MAIN_ALIVE=0
FINAL_HWM_KB=$(status_kb "$CHATD_PID" VmHWM || echo 0)
FINAL_RSS_KB=$(status_kb "$CHATD_PID" VmRSS || echo 0)
if [[ $DATABASE == postgres ]]; then
    DB_BYTES=$(psql -X -tAc "SELECT pg_database_size(current_database())" "$DB_URL" 2>/dev/null || echo 0)
else
    DB_BYTES=$(du -cb "$DB_DIR_"/bench.db* 2>/dev/null | tail -n1 | awk '{print $1}')
fi
stop_chatd

# Variants of /chat, each on its own chatd (and, on SQLite, its own database).
if ((VARIANTS)); then
    if [[ $DATABASE == sqlite ]]; then
        start_chatd "sqlite:///$DB_DIR_/bench-normal.db?synchronous=normal" "$WORKERS"
        chatd_phase chat_normal chat /chat cn
        stop_chatd
        start_chatd "sqlite:///$DB_DIR_/bench-w1.db${BENCH_DB_SYNC:+?synchronous=$BENCH_DB_SYNC}" 1
    else
        start_chatd "$DB_URL" 1
    fi
    chatd_phase chat_w1 chat /chat c1
    stop_chatd
fi

LOAD_AFTER=$(cores_busy 2)
LOADAVG_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_SECONDS=$(($(date +%s) - RUN_T0))

# --- report ----------------------------------------------------------------------
SHA=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=0
[[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || DIRTY=1
RECORD_BASE=
((RECORD)) && RECORD_BASE=$BENCH_DIR/results/$(date -u +%Y-%m-%d)-$SHA${BENCH_TAG:+-$BENCH_TAG}
mkdir -p "$(dirname "$OUT_JSON")"
"$PY" "$BENCH_DIR/report.py" --dir "$TMP" --out "$OUT_JSON" ${RECORD_BASE:+--record "$RECORD_BASE"} \
    --binary "$BIN" --build-type "$BUILD_TYPE" --workers "$WORKERS" --connections "$CONNS" \
    --threads "$THREADS" --seconds "$DURATION" --warmup "$WARMUP" --sessions "$SESSIONS" \
    --max-turns "$MAX_TURNS" --idle-rss-kb "${IDLE_RSS_KB:-0}" --final-hwm-kb "${FINAL_HWM_KB:-0}" \
    --final-rss-kb "${FINAL_RSS_KB:-0}" --db-bytes "${DB_BYTES:-0}" --chatd-exit "${CHATD_EXITS[*]}" \
    --main-alive "$MAIN_ALIVE" --db-dir "$DB_DIR_REPORT" --database "$DATABASE" --db-sync "${BENCH_DB_SYNC:-full}" \
    --phases "${PHASES[*]}" --sys-phases "${SYS_PHASES[*]}" --stream-phases "${STREAM_PHASES[*]}" \
    --streams "$STREAMS" --stream-hold "$STREAM_HOLD" --stream-deltas "$STREAM_DELTAS" \
    --long "$LONG_DONE" --long-turns "$LONG_TURNS" --nofile "$NOFILE" --nginx-workers "$NGINX_WORKERS" \
    --sha "$SHA" --dirty "$DIRTY" --load-before "$LOAD_BEFORE" --load-after "$LOAD_AFTER" \
    --loadavg-before "$LOADAVG_BEFORE" --loadavg-after "$LOADAVG_AFTER" --run-seconds "$RUN_SECONDS" \
    --sys-conns "$SYS_CONNS" --sys-seconds "$SYS_SECONDS" --lat-phases "${LAT_PHASES[*]}" \
    --lat-seconds "$LAT_SECONDS" --lat-max-connections "$LAT_MAXCONN" --lat-rounds "$LAT_ROUNDS" \
    --portkey "$PORTKEY_ON" --round-phases "${ROUND_PHASES[*]}" --ratio-seconds "$RATIO_SECONDS"
