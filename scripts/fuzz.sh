#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ (clang, ASan + UBSan, coverage
# instrumentation; CMake option CHATD_FUZZ) in build-fuzz, then runs each for a
# bounded time on a temporary copy of its committed corpus (plus its
# regression inputs) with its dictionary. Any finding (crash, leak, undefined
# behaviour, a target's own check, timeout, out of memory) fails the run; the
# reproducer is printed and kept under build-fuzz/fuzz-findings/<target>/.
# See tests/fuzz/README.md.
#
#   scripts/fuzz.sh                  every target, FUZZ_SECONDS each (default 15)
#   scripts/fuzz.sh sse config       only these targets
#   FUZZ_SECONDS=600 scripts/fuzz.sh sse     one target, longer
#   FUZZ_JOBS=1 scripts/fuzz.sh      one target at a time (default: one per CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${FUZZ_SECONDS:-15}
JOBS=${FUZZ_JOBS:-$(nproc)}
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
start=$(date +%s)

CC=clang cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATD_FUZZ=ON -DCHATD_TESTS=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" >/dev/null

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for src in tests/fuzz/fuzz_*.c; do
    t=${src#tests/fuzz/fuzz_}
    targets+=("${t%.c}")
  done
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
findings="$BUILD/fuzz-findings"
rm -rf "$findings"
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# One target: its corpus copied (new inputs stay in the copy), its regression
# inputs read as a second corpus directory, its dictionary.
run_one() {
  local t=$1 exe="$BUILD/tests/fuzz/fuzz_$1" dir="$work/$1"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  [ -x "$exe" ] || { echo "fuzz: no target $t ($exe)" >"$dir/log"; return 1; }
  [ -d "tests/fuzz/corpus/$t" ] && cp -r "tests/fuzz/corpus/$t/." "$dir/corpus/"
  local extra=() dict=()
  [ -d "tests/fuzz/regressions/$t" ] && extra+=("tests/fuzz/regressions/$t")
  [ -f "tests/fuzz/$t.dict" ] && dict+=("-dict=tests/fuzz/$t.dict")
  "$exe" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "${dict[@]}" "$dir/corpus" "${extra[@]}" >"$dir/log" 2>&1
}

report() {
  local t=$1 rc=$2 dir="$work/$1"
  local execs
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    printf 'fuzz: %-16s ok   %10s executions in %ss\n' "$t" "${execs:-?}" "$SECS"
    total=$((total + ${execs:-0}))
    return 0
  fi
  failed+=("$t")
  echo "fuzz: $t FAILED (exit $rc) after ${execs:-?} executions; its log ends with:"
  grep -v '^#[0-9]' "$dir/log" | tail -40 | sed 's/^/  | /'
  mkdir -p "$findings/$t"
  local f
  for f in "$dir"/artifacts/*; do
    [ -e "$f" ] || continue
    cp "$f" "$findings/$t/"
    echo "fuzz: reproducer $findings/$t/$(basename "$f") ($(stat -c %s "$f") bytes):"
    head -c 512 "$f" | od -An -c | head -20 | sed 's/^/  | /'
    echo "fuzz: replay: $BUILD/tests/fuzz/fuzz_$t $findings/$t/$(basename "$f")"
    echo "fuzz: after the fix, keep it: cp $findings/$t/$(basename "$f") tests/fuzz/regressions/$t/<what-it-was>"
  done
}

total=0
failed=()
declare -A pids=()
for t in "${targets[@]}"; do
  while [ "${#pids[@]}" -ge "$JOBS" ]; do
    wait -n || true
    for p in "${!pids[@]}"; do
      if ! kill -0 "$p" 2>/dev/null; then
        rc=0; wait "$p" || rc=$?
        report "${pids[$p]}" "$rc"
        unset "pids[$p]"
      fi
    done
  done
  run_one "$t" &
  pids[$!]=$t
done
for p in "${!pids[@]}"; do
  rc=0; wait "$p" || rc=$?
  report "${pids[$p]}" "$rc"
done

echo "fuzz: ${#targets[@]} targets, $total executions, $(( $(date +%s) - start ))s including the build"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: FINDINGS in: ${failed[*]}" >&2
  exit 1
fi
