#!/usr/bin/env bash
# tests/build_without_test_tools.sh: proves that chatd configures and builds on
# a machine that has only the build packages (`scripts/deps.sh build`, what
# scripts/run.sh installs), none of the test tools (run by ctest as
# "build_without_test_tools", in the normal build only).
#
# pkg-config sees only the .pc files of the build packages (dpkg -L of each
# package of `scripts/deps.sh list-build`) and of the modules they require,
# through a temporary PKG_CONFIG_LIBDIR of symlinks; cmocka is then invisible
# even though it is installed here. The test-only programs (python3, node,
# npm, nginx, PostgreSQL, Redis, chromium...) are shadowed on PATH by stubs
# that record any call and fail: configuring or building must call none.
#
#   1. -DCHATD_TESTS=OFF: configures, builds the chatd target, and the binary runs;
#   2. no CHATD_TESTS: configures without the tests and says so (STATUS line);
#   3. -DCHATD_TESTS=ON: refused at configure time, naming cmocka.
#
# Everything happens under a temporary directory, removed at the end.
set -euo pipefail

SRC=${CHATD_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
JOBS=${JOBS:-2}

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/chatd-notest.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- pkg-config view
PC=$TMP/pkgconfig
mkdir -p "$PC"
mapfile -t packages < <("$SRC/scripts/deps.sh" list-build)
[ "${#packages[@]}" -ge 5 ] || fail "scripts/deps.sh list-build printed ${#packages[@]} packages"
queue=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
    fail "build package $pkg is not installed (scripts/deps.sh build)"
  while IFS= read -r pc; do
    ln -sf "$pc" "$PC/"
    queue+=("$(basename "$pc" .pc)")
  done < <(dpkg -L "$pkg" | grep -E '/pkgconfig/[^/]+\.pc$' || true)
done
# The modules those .pc files require (public and private), transitively,
# from the system's own search path.
while [ "${#queue[@]}" -gt 0 ]; do
  mod=${queue[0]}
  queue=("${queue[@]:1}")
  while read -r req _; do
    [ -n "$req" ] && [ ! -e "$PC/$req.pc" ] || continue
    path=$(pkg-config --path "$req" 2>/dev/null) || continue
    ln -sf "$path" "$PC/$req.pc"
    queue+=("$req")
  done < <(pkg-config --print-requires --print-requires-private "$mod" 2>/dev/null || true)
done
export PKG_CONFIG_LIBDIR=$PC
unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR
# The view must hide cmocka (else this test proves nothing) and show the engine's modules.
if pkg-config --exists cmocka; then fail "cmocka is visible through $PC: the view is not restricted"; fi
engine_modules=$(sed -n '/pkg_check_modules(DEPS REQUIRED IMPORTED_TARGET/,/)/p' "$SRC/CMakeLists.txt" |
                 tr ' ()' '\n\n\n' | grep -E '^[a-z]' | grep -vE '^(pkg_check_modules)$' | sed 's/[<>=].*//')
[ -n "$engine_modules" ] || fail "cannot read the engine's pkg-config modules from CMakeLists.txt"
for mod in $engine_modules; do
  pkg-config --exists "$mod" || fail "module $mod of CMakeLists.txt is not provided by the build packages"
done
ok "pkg-config sees $(ls "$PC" | wc -l) .pc files of ${#packages[@]} build packages, not cmocka"

# ---------------------------------------------------------------- PATH stubs
STUBS=$TMP/stubs
mkdir -p "$STUBS"
for prog in python3 python node npm npx nginx psql postgres pg_ctl initdb redis-server redis-cli chromium \
            valgrind wrk pytest pytest-3; do
  printf '#!/bin/sh\necho "%s $*" >>"%s/called"\necho "%s: test-only tool called while building chatd" >&2\nexit 127\n' \
    "$prog" "$TMP" "$prog" >"$STUBS/$prog"
  chmod +x "$STUBS/$prog"
done
export PATH=$STUBS:$PATH

called() { [ ! -s "$TMP/called" ] || fail "test-only tools were called: $(sort -u "$TMP/called" | tr '\n' ';')"; }

# ---------------------------------------------------------------- 1. CHATD_TESTS=OFF
if ! cmake -S "$SRC" -B "$TMP/off" -DCMAKE_BUILD_TYPE=Release -DCHATD_TESTS=OFF >"$TMP/off.log" 2>&1; then
  tail -n 30 "$TMP/off.log"
  fail "configure with -DCHATD_TESTS=OFF failed without the test packages"
fi
grep -q 'building chatd without its tests (CHATD_TESTS=OFF)' "$TMP/off.log" || fail "no STATUS line for CHATD_TESTS=OFF"
if ! cmake --build "$TMP/off" --target chatd -j"$JOBS" >"$TMP/off-build.log" 2>&1; then
  tail -n 30 "$TMP/off-build.log"
  fail "building the chatd target failed without the test packages"
fi
out=$("$TMP/off/chatd" --version 2>&1) || fail "the built chatd --version failed: $out"
"$TMP/off/chatd" --help >/dev/null 2>&1 || fail "the built chatd --help failed"
called
ok "-DCHATD_TESTS=OFF: configured and built chatd ($out)"

# ---------------------------------------------------------------- 2. not given
if ! cmake -S "$SRC" -B "$TMP/auto" -DCMAKE_BUILD_TYPE=Release >"$TMP/auto.log" 2>&1; then
  tail -n 30 "$TMP/auto.log"
  fail "configure without CHATD_TESTS failed without the test packages"
fi
grep -q 'cmocka not found: building chatd without its tests' "$TMP/auto.log" ||
  fail "configure without CHATD_TESTS did not say that the tests are left out: $(grep chatd "$TMP/auto.log")"
targets=$(cmake --build "$TMP/auto" --target help 2>/dev/null)
grep -q '\.\.\. chatd$' <<<"$targets" || fail "no chatd target without CHATD_TESTS"
if grep -q '\.\.\. test_' <<<"$targets"; then fail "test targets generated without cmocka"; fi
called
ok "no CHATD_TESTS: configured without the tests and said so"

# ---------------------------------------------------------------- 3. CHATD_TESTS=ON
if cmake -S "$SRC" -B "$TMP/on" -DCMAKE_BUILD_TYPE=Release -DCHATD_TESTS=ON >"$TMP/on.log" 2>&1; then
  fail "configure with -DCHATD_TESTS=ON succeeded without cmocka"
fi
grep -q 'CHATD_TESTS=ON but cmocka was not found' "$TMP/on.log" ||
  fail "-DCHATD_TESTS=ON without cmocka failed without the expected message: $(tail -n 5 "$TMP/on.log")"
ok "-DCHATD_TESTS=ON without cmocka: a clear configure error"
echo "chatd builds without the test tools"
