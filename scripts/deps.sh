#!/usr/bin/env bash
# Installs what chatd needs on Debian 12. Idempotent; skips apt when every
# package is already installed.
#   scripts/deps.sh build   compiler and libraries: enough to build and run chatd
#   scripts/deps.sh         (default: test) also the test tools, the servers the
#                           tests start, chromium, and the npm packages of the
#                           test tooling (package-lock.json, exact versions)
#   scripts/deps.sh list-build  prints the build packages, one a line, and exits
#                           (tests/build_without_test_tools.sh builds with only them)
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-test}

APT_PACKAGES=(
  build-essential cmake pkg-config
  libevent-dev libcurl4-openssl-dev libjansson-dev libsqlite3-dev libssl-dev
  libhiredis-dev libpq-dev libjemalloc-dev
)
if [ "$WHAT" = list-build ]; then printf '%s\n' "${APT_PACKAGES[@]}"; exit 0; fi
[ "$WHAT" = build ] || APT_PACKAGES+=(
  libcmocka-dev
  python3 python3-pytest python3-httpx
  python3-prometheus-client python3-yaml
  nginx redis-server postgresql
  chromium fonts-dejavu-core
  valgrind
  clang-format
  wrk
  # scripts/fuzz.sh: clang with libFuzzer. Debian's clang only recommends the
  # compiler-rt package that holds libFuzzer and the sanitizer runtimes, and
  # recommendations are not installed here (--no-install-recommends).
  clang libclang-rt-14-dev
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from elsewhere than Debian (with its own npm): only install
# Debian's when the commands are missing.
if [ "$WHAT" != build ] && { ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; }; then
  missing+=(nodejs npm)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # nginx and redis-server are only started by the tests, on 127.0.0.1: keep
  # their packages from starting system services (policy-rc.d exit 101).
  added_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ -n "$added_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

if [ "$WHAT" != build ] && [ -f package-lock.json ]; then
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "deps: npm ci"
    npm ci --no-audit --no-fund --loglevel=error
  fi
fi
