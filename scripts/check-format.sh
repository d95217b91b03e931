#!/usr/bin/env bash
# Checks that every C file under src/ and tests/ is formatted as .clang-format
# says (docs/STYLE.md, "Enforced mechanically"). Prints the files that are not
# and exits non-zero. `scripts/check-format.sh --fix` reformats them in place.
set -uo pipefail
cd "$(dirname "$0")/.."
CF=${CLANG_FORMAT:-clang-format}
if ! command -v "$CF" >/dev/null 2>&1; then
  echo "check-format: $CF not found (Debian package clang-format)" >&2
  exit 2
fi
mapfile -t files < <(git ls-files -co --exclude-standard 'src/*.c' 'src/*.h' 'tests/*.c' 'tests/*.h')
if [ "${1:-}" = "--fix" ]; then
  "$CF" -i --style=file "${files[@]}"
  exit 0
fi
bad=0
for f in "${files[@]}"; do
  if ! "$CF" --style=file --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "check-format: $f is not formatted (run scripts/check-format.sh --fix)" >&2
    bad=1
  fi
done
[ "$bad" -eq 0 ] && echo "check-format: ok (${#files[@]} files)"
exit "$bad"
