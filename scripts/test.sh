#!/usr/bin/env bash
# The one command that runs every test: installs what is missing, builds chatd
# twice (normal, and ASan+UBSan), and runs the whole ctest suite on each build
# (cmocka unit tests, pytest black-box tests against the real binary and the
# fake provider, node tests of the fake with the official SDKs).
#
#   scripts/test.sh            both builds
#   SANITIZE=0 scripts/test.sh normal build only (quicker while developing)
#   FUZZ=0 scripts/test.sh     without the bounded fuzzing step (scripts/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

JOBS=$(nproc)
run_suite() {
  local dir=$1; shift
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS"
  (cd "$dir" && ctest --output-on-failure --timeout 1500)
}

echo "== build and test: normal"
run_suite build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHATD_TESTS=ON

if [ "${FUZZ:-1}" != "0" ]; then
  # Every parser that sees outside bytes, fuzzed for a bounded time (clang,
  # libFuzzer, ASan + UBSan in build-fuzz); a finding fails the run.
  echo "== fuzz (tests/fuzz/README.md)"
  scripts/fuzz.sh
fi

if [ "${SANITIZE:-1}" != "0" ]; then
  echo "== build and test: ASan + UBSan"
  # Leaks are errors too; a report anywhere fails the run.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DCHATD_SANITIZE=ON -DCHATD_TESTS=ON
fi
echo "== all tests passed"
