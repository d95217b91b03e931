#!/usr/bin/env bash
# chatd soak: a steady open-loop load for SOAK_MINUTES, chatd's memory sampled
# all along, and the slope of its RSS after a warm-up (issue 15: "a 30-minute
# soak at steady load shows RSS flat (report the slope)").
#
#   bench/soak.sh [path-to-chatd-binary]          # 30 minutes by default
#   SOAK_MINUTES=3 bench/soak.sh build-release/chatd   # a short check
#
# The fake provider and chatd start as in bench/run.sh (bench/lib.sh: a clean
# environment, SQLite with synchronous=FULL in a scratch directory, no rate
# limit). Three bench/openloop.c generators then run side by side for the
# whole time, each at a fixed rate (no coordinated omission), together
# SOAK_RATE requests/s split by SOAK_MIX:
#   chat       POST /chat, sessions of SOAK_SESSION_TURNS turns (a session's
#              turns SOAK_SESSION_GAP seconds apart; fresh sessions keep coming)
#   stream     POST /v1/chat/stream, a fresh session each (whole: `done` event)
#   stateless  POST /v1/chat/completions (nothing stored)
# Every SOAK_SAMPLE_SECONDS: chatd's VmRSS, VmHWM, threads, open descriptors
# and CPU. The report: the least-squares slope of RSS over time (KiB/min) on
# the samples after the first SOAK_WARMUP_MINUTES, RSS at the start and end of
# that window and its maximum, the descriptor slope, the requests, failures
# and latency of each generator, and chatd's exit status at SIGTERM.
# Markdown on stdout, JSON in SOAK_OUT (bench/results/soak-latest.json), and
# with SOAK_RECORD=1 (default) bench/results/soak-<date>-<shortsha>.md/.json.
# Exit status: 0 the soak ran clean (no failed request, chatd alive and exited
# 0), 1 it did not (the report says why), 2 setup failure.
# Settings: see bench/README.md, "Soak".
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
PY=/usr/bin/python3
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"

MINUTES=${SOAK_MINUTES:-30}
RATE=${SOAK_RATE:-1000}
MIX=${SOAK_MIX:-chat:40,stream:20,stateless:40}
SESSION_TURNS=${SOAK_SESSION_TURNS:-5}
SESSION_GAP=${SOAK_SESSION_GAP:-5}
WARMUP_MIN=${SOAK_WARMUP_MINUTES:-2}
SAMPLE=${SOAK_SAMPLE_SECONDS:-10}
WORKERS=${SOAK_WORKERS:-$(nproc)}
MAXCONN=${SOAK_MAX_CONNECTIONS:-256}
RECORD=${SOAK_RECORD:-1}
LOG_LEVEL_=${SOAK_LOG_LEVEL:-warn}
OUT_JSON=${SOAK_OUT:-$BENCH_DIR/results/soak-latest.json}
BENCH_CHATD_ENV=${SOAK_CHATD_ENV:-}
for v in MINUTES RATE SESSION_TURNS SESSION_GAP WARMUP_MIN SAMPLE WORKERS MAXCONN RECORD; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((MINUTES >= 1 && MINUTES <= 1440)) || die "SOAK_MINUTES must be 1..1440"
((WARMUP_MIN < MINUTES)) || die "SOAK_WARMUP_MINUTES must be less than SOAK_MINUTES"
((RATE >= 1 && SAMPLE >= 1 && SESSION_TURNS >= 1 && SESSION_GAP >= 1 && MAXCONN >= 16)) ||
    die "need SOAK_RATE, SOAK_SAMPLE_SECONDS, SOAK_SESSION_TURNS, SOAK_SESSION_GAP >= 1 and SOAK_MAX_CONNECTIONS >= 16"
[[ $MIX =~ ^((chat|stream|stateless):[0-9]+,?)+$ ]] || die "SOAK_MIX must look like chat:40,stream:20,stateless:40"
command -v node >/dev/null || die "node not found"
command -v curl >/dev/null || die "curl not found"
[[ -x $PY ]] || die "$PY not found"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

resolve_chatd_bin "${1:-}"
# The commit checked out now, when the binary is taken: a commit made during a
# 30-minute run must not stamp the result.
SHA=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=0
[[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || DIRTY=1
TMP=$(mktemp -d /tmp/chatd-soak.XXXXXX)
if [[ -n ${SOAK_DB_DIR:-} ]]; then
    [[ -d $SOAK_DB_DIR ]] || die "SOAK_DB_DIR $SOAK_DB_DIR is not a directory"
    DB_DIR_=$(mktemp -d "$SOAK_DB_DIR/chatd-soak-db.XXXXXX")
else
    DB_DIR_=$TMP
fi
FAKE_PID=
CHATD_PID=
GEN_PIDS=()
cleanup() {
    local p
    for p in "${GEN_PIDS[@]}"; do stop_pid "$p"; done
    [[ -n $CHATD_PID ]] && stop_pid "$CHATD_PID"
    [[ -n $FAKE_PID ]] && stop_pid "$FAKE_PID"
    if [[ ${SOAK_KEEP:-0} == 1 ]]; then
        echo "bench: soak scratch files kept in $TMP" >&2
    else
        rm -rf "$TMP"
        [[ $DB_DIR_ == "$TMP" ]] || rm -rf "$DB_DIR_"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_openloop
LOAD_BEFORE=$(cores_busy 2)
start_fake
start_chatd "sqlite:///$DB_DIR_/soak.db" "$WORKERS"
echo "bench: soak: chatd $BIN (pid $CHATD_PID, $CHATD), $RATE requests/s ($MIX) for $MINUTES min" >&2

# --- generators -------------------------------------------------------------------
SECONDS_=$((MINUTES * 60))
GEN_NAMES=()
start_gen() { # NAME RATE PATH BODY EXPECT [extra openloop args]: one generator in the background
    local name=$1 rate=$2 path=$3 body=$4 expect=$5
    shift 5
    printf '%s' "$body" >"$TMP/$name.body"
    timeout $((SECONDS_ + 180)) "$OPENLOOP" --url "$CHATD$path" --method POST --body-file "$TMP/$name.body" \
        --header 'Content-Type: application/json' --rate "$rate" --duration "$SECONDS_" --connections 16 \
        --max-connections "$MAXCONN" --timeout 30 --drain 30 --expect "$expect" --prefix "soak$name" \
        --interval "$SAMPLE" --out "$TMP/$name.json" "$@" 2>"$TMP/$name.progress" &
    GEN_PIDS+=($!)
    GEN_NAMES+=("$name")
}
IFS=, read -r -a parts <<<"$MIX"
total_share=0
for p in "${parts[@]}"; do total_share=$((total_share + ${p#*:})); done
((total_share > 0)) || die "SOAK_MIX shares add up to 0"
for p in "${parts[@]}"; do
    kind=${p%%:*} share=${p#*:}
    rate=$(awk -v r="$RATE" -v s="$share" -v t="$total_share" 'BEGIN {printf "%.3f", r * s / t}')
    awk -v r="$rate" 'BEGIN {exit !(r > 0)}' || continue
    case $kind in
    chat)
        # A session's turns come SESSION_GAP seconds apart (slots = that many
        # seconds of /chat turns), so they overlap (409) only behind a stall.
        slots=$(awk -v r="$rate" -v g="$SESSION_GAP" 'BEGIN {s = int(r * g); print (s < 1 ? 1 : s)}')
        start_gen chat "$rate" /chat '{"message":"soak {{n}}","session_id":"{{session}}"}' '"response"' \
            --session-slots "$slots" --session-turns "$SESSION_TURNS"
        ;;
    stream)
        start_gen stream "$rate" /v1/chat/stream '{"message":"soak {{n}}","session_id":"{{session}}"}' \
            'event: done' --reject 'event: error'
        ;;
    stateless)
        start_gen stateless "$rate" /v1/chat/completions '{"messages":[{"role":"user","content":"soak {{n}}"}]}' \
            '"finish_reason":"stop"'
        ;;
    esac
done

# --- samples ----------------------------------------------------------------------
# One line per sample: seconds since start, VmRSS, VmHWM (KiB), threads,
# descriptors, chatd CPU seconds so far.
T0=$(date +%s.%N)
: >"$TMP/samples.txt"
sample() {
    local t fds
    t=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    fds=$(find "/proc/$CHATD_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "$t $(status_kb "$CHATD_PID" VmRSS) $(status_kb "$CHATD_PID" VmHWM) $(status_kb "$CHATD_PID" Threads)" \
        "$fds $(secs 0 "$(cpu_ticks "$CHATD_PID")")" >>"$TMP/samples.txt"
}
progress_line() { # one line on stderr: RSS now, and each generator's last interval
    "$PY" - "$TMP" "$SAMPLE" "${GEN_NAMES[@]}" <<'PYEOF' >&2 || true
import json, sys
d, every, names = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
last = open(d + "/samples.txt").read().splitlines()[-1].split()
out = ["soak: %s s, RSS %.1f MiB, %s fds" % (last[0], int(last[1]) / 1024, last[4])]
for n in names:
    try:
        p = json.loads(open("%s/%s.progress" % (d, n)).read().splitlines()[-1])
        failed = p["non_2xx"] + p["bad_body"] + p["errors"] + p["dropped"]
        out.append("%s %.0f/s p99 %.1f ms %d failed" % (n, p["interval_completed"] / every, p["interval_p99_ms"],
                                                        failed))
    except (OSError, ValueError, KeyError, IndexError):
        out.append("%s -" % n)
print("; ".join(out))
PYEOF
}
ALIVE=1
DEADLINE=$(($(date +%s) + SECONDS_ + 180))
sample
k=0
while :; do
    # Samples on a fixed schedule (T0 + k x SAMPLE), whatever a sample costs.
    k=$((k + 1))
    sleep "$(awk -v t0="$T0" -v k="$k" -v s="$SAMPLE" -v now="$(date +%s.%N)" \
        'BEGIN {d = t0 + k * s - now; printf "%.3f", (d > 0 ? d : 0)}')"
    if ! kill -0 "$CHATD_PID" 2>/dev/null; then
        ALIVE=0
        echo "bench: soak: CHATD DIED" >&2
        tail -n 30 "$CHATD_ERR" >&2
        break
    fi
    sample
    running=0
    for p in "${GEN_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
    ((running)) || break
    (($(date +%s) < DEADLINE)) || break
    progress_line
done
for i in "${!GEN_PIDS[@]}"; do
    wait "${GEN_PIDS[$i]}" 2>/dev/null || echo "bench: soak: generator ${GEN_NAMES[$i]} exited with $?" >&2
done
GEN_PIDS=()
# RSS at rest: one more sample after the load stopped.
if ((ALIVE)) && kill -0 "$CHATD_PID" 2>/dev/null; then
    sleep "$SAMPLE"
    sample
fi
sample_end_rss=$(status_kb "$CHATD_PID" VmRSS || echo 0)
EXIT_RC=-1
if ((ALIVE)); then
    stop_chatd
    EXIT_RC=${CHATD_EXITS[0]}
fi
LOAD_AFTER=$(cores_busy 2)
DB_BYTES=$(du -cb "$DB_DIR_"/soak.db* 2>/dev/null | tail -n1 | awk '{print $1}')

RECORD_BASE=
((RECORD)) && RECORD_BASE=$BENCH_DIR/results/soak-$(date -u +%Y-%m-%d)-$SHA
mkdir -p "$(dirname "$OUT_JSON")"
"$PY" "$BENCH_DIR/soak_report.py" --dir "$TMP" --out "$OUT_JSON" ${RECORD_BASE:+--record "$RECORD_BASE"} \
    --generators "${GEN_NAMES[*]}" --binary "$BIN" --build-type "$BUILD_TYPE" --workers "$WORKERS" \
    --minutes "$MINUTES" --warmup-minutes "$WARMUP_MIN" --rate "$RATE" --mix "$MIX" \
    --session-turns "$SESSION_TURNS" --session-gap "$SESSION_GAP" --sample-seconds "$SAMPLE" --alive "$ALIVE" --exit-status "$EXIT_RC" \
    --end-rss-kb "${sample_end_rss:-0}" --sha "$SHA" --dirty "$DIRTY" --load-before "$LOAD_BEFORE" \
    --load-after "$LOAD_AFTER" --db-dir "$DB_DIR_" --db-bytes "${DB_BYTES:-0}"
