#!/usr/bin/env bash
# Checks bench/openloop.c against wrk and Little's law, on the fake provider and
# on chatd's stateless path (bench/README.md, "The open-loop generator"):
#
#   bench/check_openloop.sh [path-to-chatd-binary]      # about 2 minutes
#
# For each target: wrk with 1 connection (unloaded latency) and with 16 (the
# closed-loop maximum, R), then openloop at 0.25 R, 0.5 R, 0.75 R and 1.5 R for
# CHECK_SECONDS (default 4) each. Expected: below R the completed rate equals
# the offered one and p50 is near wrk -c1's; at 1.5 R the completed rate stays
# near R (the server's capacity) while latency grows with the queue; in every
# run, mean_in_flight + rate x mean send lag equals completions/s x mean
# latency (Little's law, from two independent sums). Prints one table; exit 0.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
PY=/usr/bin/python3
# shellcheck source=lib.sh
. "$BENCH_DIR/lib.sh"
SECS=${CHECK_SECONDS:-4}
[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "CHECK_SECONDS must be a positive whole number"
LOG_LEVEL_=warn
resolve_chatd_bin "${1:-}"
TMP=$(mktemp -d /tmp/chatd-olcheck.XXXXXX)
FAKE_PID=
CHATD_PID=
cleanup() {
    [[ -n $CHATD_PID ]] && stop_pid "$CHATD_PID"
    [[ -n $FAKE_PID ]] && stop_pid "$FAKE_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
build_openloop
start_fake
start_chatd "sqlite:///$TMP/check.db" "$(nproc)"

printf '%s' '{"model":"claude-sonnet-4-6","max_tokens":1024,"messages":[{"role":"user","content":"bench {{session}}"}]}' \
    >"$TMP/direct.body"
printf '%s' '{"messages":[{"role":"user","content":"bench {{session}}"}]}' >"$TMP/stateless.body"

wrk_rate() { # MODE URL CONNECTIONS OUT: turns.lua's summary in OUT
    BENCH_MODE=$1 BENCH_PREFIX=k$3 BENCH_SESSIONS=2048 BENCH_MAX_TURNS=1 BENCH_THREADS=1 BENCH_OUT=$4 \
        BENCH_MODEL=claude-sonnet-4-6 BENCH_MAX_TOKENS=1024 \
        timeout $((SECS + 30)) wrk -t1 -c"$3" -d"${SECS}s" --timeout 10s -s "$BENCH_DIR/turns.lua" "$2" >/dev/null
}
rows=()
check() { # NAME MODE URL BODY EXPECT [headers...]
    local name=$1 mode=$2 url=$3 body=$4 expect=$5 f r
    shift 5
    wrk_rate "$mode" "$url" 1 "$TMP/$name-c1.json"
    wrk_rate "$mode" "$url" 16 "$TMP/$name-c16.json"
    r=$("$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(int(d["ok"] / (d["duration_us"] / 1e6)))' \
        "$TMP/$name-c16.json")
    for f in 0.25 0.5 0.75 1.5; do
        "$OPENLOOP" --url "$url" --method POST --body-file "$body" --header 'Content-Type: application/json' "$@" \
            --rate "$(awk -v r="$r" -v f="$f" 'BEGIN {print int(r * f)}')" --duration "$SECS" --warmup 1 \
            --max-connections 64 --timeout 10 --drain 15 --expect "$expect" --prefix "k$name$f" \
            --out "$TMP/$name-ol-$f.json"
    done
    rows+=("$name")
}
check fake direct "$FAKE/v1/messages" "$TMP/direct.body" '"stop_reason":"end_turn"' \
    --header 'x-api-key: bench' --header 'anthropic-version: 2023-06-01'
check stateless stateless "$CHATD/v1/chat/completions" "$TMP/stateless.body" '"finish_reason":"stop"'

"$PY" - "$TMP" "${rows[@]}" <<'PYEOF'
import json, sys
d, names = sys.argv[1], sys.argv[2:]
print("| target | run | offered/s | completed/s | ok | failed | p50 ms | p99 ms | mean ms | in flight (measured + rate x lag) | completions/s x mean latency | lag p99 ms |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in names:
    for c in (1, 16):
        w = json.load(open("%s/%s-c%d.json" % (d, n, c)))
        lat = w["latency_us"]
        rate = w["ok"] / (w["duration_us"] / 1e6)
        print("| %s | wrk -c%d | closed loop | %.0f | %d | %d | %.3f | %.3f | %.3f | %d connections | %.2f | - |" % (
            n, c, rate, w["ok"], w["responses"] - w["ok"], lat["percentiles"]["50"] / 1000,
            lat["percentiles"]["99"] / 1000, lat["mean"] / 1000, c, rate * lat["mean"] / 1e6))
    for f in ("0.25", "0.5", "0.75", "1.5"):
        o = json.load(open("%s/%s-ol-%s.json" % (d, n, f)))
        li, lm = o["little"], o["latency_ms"]
        failed = sum(o[k] for k in ("errors", "non_2xx", "bad_body", "dropped", "unfinished"))
        print("| %s | openloop %sR | %.0f | %.0f | %d | %d | %.3f | %.3f | %.3f | %.2f | %.2f | %.2f |" % (
            n, f, o["rate"], o["completed_rate"], o["ok"], failed, lm["p50"], lm["p99"], lm["mean"],
            li["mean_in_flight"] + li["rate_x_mean_send_lag"], li["rate_x_mean_latency"], o["send_lag_ms"]["p99"]))
PYEOF
