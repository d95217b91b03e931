# shellcheck shell=bash
# Functions shared by bench/run.sh and bench/soak.sh (sourced, not run).
#
# The caller sets, before using them:
#   BENCH_DIR, ROOT  this directory and the repository
#   PY               /usr/bin/python3
#   TMP              the run's scratch directory (logs, outputs)
#   LOG_LEVEL_       chatd LOG_LEVEL
#   BIN              the chatd binary (resolve_chatd_bin sets it)
# and gets these globals back: FAKE_PID FAKE_PORT FAKE (start_fake);
# CHATD_PID CHATD_PORT CHATD CHATD_ERR CHATD_N (start_chatd); STOP_RC
# (stop_pid); CHATD_EXITS (stop_chatd appends); OPENLOOP (build_openloop).
# Every process started here is a child of the caller, stopped by its PID.

die() { echo "bench: $*" >&2; exit 2; }

# --- tools (Debian packages, installed if missing) ------------------------------
apt_install() { # package: installs it non-interactively (sudo when not root)
    local sudo=
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    echo "bench: installing $1 (Debian package)" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >&2 ||
        { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >&2; }
}

# build_openloop: compiles bench/openloop.c (C11, libevent only) into the
# scratch directory and sets OPENLOOP. Built per run rather than as a CMake
# target: it is a measuring tool, not part of chatd, and the default build and
# .ci/run stay as they are; a run always measures with the openloop.c of its
# own tree.
build_openloop() {
    local cc=${CC:-cc}
    command -v "$cc" >/dev/null || die "no C compiler ($cc) for bench/openloop.c"
    [[ -f /usr/include/event2/http.h ]] || apt_install libevent-dev || die "cannot install libevent-dev"
    OPENLOOP=$TMP/openloop
    "$cc" -O2 -std=c11 -Wall -Wextra -o "$OPENLOOP" "$BENCH_DIR/openloop.c" -levent -lm >&2 ||
        die "cannot build bench/openloop.c"
}

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
# resolve_chatd_bin [path]: sets BIN (absolute) and BUILD_TYPE. Without a path:
# build/chatd if that tree is a Release build, else build-release/chatd (built
# if missing).
resolve_chatd_bin() {
    if [[ $# -ge 1 && -n $1 ]]; then
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
}

# --- processes -----------------------------------------------------------------
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

# start_fake: the fake provider (tests/fake_llm/server.mjs) on a free port.
# BENCH_FAKE_ARGS adds flags, e.g. --h2c (the same port then also speaks
# HTTP/2 with prior knowledge, for chatd with PROVIDER_HTTP_VERSION=2).
start_fake() {
    local i
    # shellcheck disable=SC2086 # one flag per word
    (cd "$ROOT" && exec node tests/fake_llm/server.mjs --port 0 --host 127.0.0.1 --log-max 16 ${BENCH_FAKE_ARGS:-}) \
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
}
fake_script() { # JSON of POST /_fake/script
    curl -fsS -o /dev/null --max-time 5 -H 'Content-Type: application/json' -d "$1" "$FAKE/_fake/script"
}

# start_chatd DATABASE_URL WORKERS: sets CHATD_PID, CHATD_PORT, CHATD, CHATD_ERR.
# A clean environment: the caller's CHAT_MODEL, .env etc. must not leak in.
# BENCH_CHATD_ENV adds settings ("NAME=value NAME2=value2").
CHATD_N=0 # chatd processes started (their logs: chatd-N.err)
CHATD_EXITS=()
start_chatd() {
    local url=$1 workers=$2 i
    CHATD_N=$((CHATD_N + 1))
    CHATD_ERR=$TMP/chatd-$CHATD_N.err
    # shellcheck disable=SC2086
    (cd "$TMP" && exec env -i PATH="$PATH" HOME="$TMP" ENV_FILE=/dev/null \
        ANTHROPIC_API_KEY=bench ANTHROPIC_BASE_URL="$FAKE" \
        DATABASE_URL="$url" PORT=0 HOST=127.0.0.1 WORKERS="$workers" \
        LOG_LEVEL="$LOG_LEVEL_" DRAIN_TIMEOUT=2s RATE_LIMIT=off ${BENCH_CHATD_ENV:-} \
        "$BIN" serve) >"$TMP/chatd-$CHATD_N.out" 2>"$CHATD_ERR" &
    CHATD_PID=$!
    # The port comes from the {"msg":"listening",...,"port":N} line, or, when
    # the log level hides it, from the process's listening socket (ss).
    # Readiness is then GET /healthz.
    CHATD_PORT=
    for ((i = 0; i < 150; i++)); do
        CHATD_PORT=$(sed -n 's/.*"msg":"listening".*"port":\([0-9][0-9]*\).*/\1/p' "$CHATD_ERR" | head -n1)
        [[ -z $CHATD_PORT ]] &&
            CHATD_PORT=$(ss -Hltnp 2>/dev/null | grep "pid=$CHATD_PID," | awk '{print $4}' | sed 's/.*://' | head -n1 || true)
        [[ -n $CHATD_PORT ]] && break
        kill -0 "$CHATD_PID" 2>/dev/null || { cat "$CHATD_ERR" >&2; die "chatd exited at start"; }
        sleep 0.1
    done
    [[ -n $CHATD_PORT ]] || { tail -n 20 "$CHATD_ERR" >&2; die "no listening port for chatd within 15 s"; }
    CHATD=http://127.0.0.1:$CHATD_PORT
    for ((i = 0; i < 100; i++)); do
        curl -fsS -o /dev/null --max-time 2 "$CHATD/healthz" 2>/dev/null && break
        kill -0 "$CHATD_PID" 2>/dev/null || { cat "$CHATD_ERR" >&2; die "chatd exited at start"; }
        sleep 0.1
    done
    curl -fsS -o /dev/null --max-time 2 "$CHATD/healthz" || die "chatd does not answer GET /healthz"
}
stop_chatd() { # records the exit status (a crash at shutdown is a bug too)
    stop_pid "$CHATD_PID"
    CHATD_EXITS+=("$STOP_RC")
    CHATD_PID=
}
alive_or_die() {
    kill -0 "$CHATD_PID" 2>/dev/null && return 0
    echo "bench: CHATD DIED; last lines of its stderr:" >&2
    tail -n 30 "$CHATD_ERR" >&2
    return 1
}

# --- measurements ----------------------------------------------------------------
# "busy total" ticks of the whole machine (busy: user, nice, system, irq,
# softirq; total adds idle, iowait and steal).
cpu_busy_total() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
busy_cores() { # "busy total" at start, the same at end: mean busy cores in between
    awk -v a="$1" -v b="$2" -v n="$(nproc)" 'BEGIN {split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; printf "%.2f", (d > 0 ? (y[1] - x[1]) / d * n : 0)}'
}
cores_busy() { # seconds: mean number of busy cores over that time, machine-wide
    local a
    a=$(cpu_busy_total); sleep "$1"
    busy_cores "$a" "$(cpu_busy_total)"
}
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pids...: utime+stime summed
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
secs() { awk -v a="$1" -v b="$2" -v t="$CLK_TCK" 'BEGIN {printf "%.3f", (b - a) / t}'; }

# The request chatd last sent upstream, so the direct and nginx phases send its twin.
capture_upstream() { # file
    curl -fsS --max-time 5 "$FAKE/_fake/requests?limit=1" >"$1" || echo '{"requests":[]}' >"$1"
}
# upstream_body_template CAPTURE OUT: the captured upstream request as an
# openloop body template: the same JSON (model, max_tokens, system, stream,
# ...) with one user message "bench {{session}}" (the shape of a fresh
# session's first turn). Exit status 1 when the capture holds no request.
upstream_body_template() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
reqs = json.load(open(sys.argv[1])).get("requests") or []
if not reqs or not isinstance(reqs[-1].get("body"), dict):
    sys.exit(1)
b = reqs[-1]["body"]
msgs = b.get("messages") or []
last = msgs[-1] if msgs else {"role": "user", "content": ""}
content = last.get("content")
if isinstance(content, list):
    content = [{"type": "text", "text": "bench {{session}}"}]
else:
    content = "bench {{session}}"
b["messages"] = [{"role": "user", "content": content}]
open(sys.argv[2], "w").write(json.dumps(b, separators=(",", ":")))
EOF
}
