#!/usr/bin/env bash
# Two chatd binaries under the same load, in one command: each round runs
# bench/run.sh on A, then on B (alternating, so that a machine that drifts
# during the run drifts for both), and the table gives the median of the
# rounds for each and the ratio B / A. For "did this change cost anything":
#
#   bench/compare.sh OLD-BINARY NEW-BINARY [ROUNDS]     (ROUNDS default 3)
#
# The run.sh settings (BENCH_SECONDS, BENCH_WORKERS, ...) apply to every run.
# Results: bench/results/compare-<time>/{a,b}-<round>.json and summary.json.
# Exit status 1 when any run was invalid (see bench/README.md).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -ge 2 ]] || { echo "usage: bench/compare.sh A-BINARY B-BINARY [ROUNDS]" >&2; exit 2; }
A=$1 B=$2 ROUNDS=${3:-3}
[[ -x $A && -x $B ]] || { echo "bench: both binaries must be executable" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench: ROUNDS must be a positive number" >&2; exit 2; }
OUT=$BENCH_DIR/results/compare-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
status=0
for ((r = 1; r <= ROUNDS; r++)); do
    for side in a b; do
        bin=$A; [[ $side == b ]] && bin=$B
        echo "bench: round $r/$ROUNDS, $side: $bin" >&2
        # Only the throughput phases by default (the streams, long-session,
        # latency, syscall and variant phases can be asked for explicitly).
        BENCH_RECORD=0 BENCH_STREAMS=${BENCH_STREAMS:-0} BENCH_LONG_TURNS=${BENCH_LONG_TURNS:-0} \
            BENCH_LATENCY=${BENCH_LATENCY:-0} BENCH_SYSCALLS=${BENCH_SYSCALLS:-0} BENCH_VARIANTS=${BENCH_VARIANTS:-0} \
            BENCH_OUT=$OUT/$side-$r.json "$BENCH_DIR/run.sh" "$bin" >"$OUT/$side-$r.txt" || status=1
    done
done
/usr/bin/python3 - "$OUT" "$ROUNDS" "$A" "$B" <<'PY'
import json, os, statistics, sys
out, rounds, a_bin, b_bin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [("non_streaming", "POST /chat"), ("streaming", "POST /v1/chat/stream")]
metrics = [("turns/s", lambda p: p["turns_per_s"]), ("p50 ms", lambda p: p["latency_ms"]["p50"]),
           ("p99 ms", lambda p: p["latency_ms"]["p99"]), ("cpu ms/t", lambda p: p.get("chatd_cpu_ms_per_turn"))]
runs = {s: [json.load(open(os.path.join(out, "%s-%d.json" % (s, r)))) for r in range(1, rounds + 1)
            if os.path.exists(os.path.join(out, "%s-%d.json" % (s, r)))] for s in "ab"}
summary = {"a": a_bin, "b": b_bin, "rounds": rounds,
           "valid": all(x.get("valid") for s in "ab" for x in runs[s]), "rows": {}}
print("median of %d rounds; A = %s, B = %s" % (rounds, a_bin, b_bin))
print("  %-24s %-9s %10s %10s %8s" % ("", "", "A", "B", "B / A"))
for key, label in rows:
    for mname, get in metrics:
        vals = {}
        for s in "ab":
            xs = [get(x[key]["chatd"]) for x in runs[s] if x.get(key, {}).get("chatd")]
            xs = [v for v in xs if v is not None]
            vals[s] = statistics.median(xs) if xs else None
        ratio = vals["b"] / vals["a"] if vals["a"] and vals["b"] is not None else None
        summary["rows"]["%s %s" % (label, mname)] = {"a": vals["a"], "b": vals["b"], "b_over_a": ratio}
        f = lambda v: "-" if v is None else "%.3f" % v if v < 10 else "%.1f" % v
        print("  %-24s %-9s %10s %10s %8s" % (label, mname, f(vals["a"]), f(vals["b"]),
                                             "-" if ratio is None else "%.2fx" % ratio))
if not summary["valid"]:
    print("  INVALID: at least one run had errors (see the .txt files in %s)" % out)
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
PY
exit $status
