#!/usr/bin/env bash
# A tiny mechanical check of the C sources (docs/STYLE.md, "Enforced mechanically"):
# no banned functions (unbounded string copies and formats, strtok's hidden
# state), and no raw allocation calls outside core/alloc.c (the out-of-memory
# policy is written in one place). Exits non-zero with the offending lines.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
banned='\b(strcpy|strcat|sprintf|vsprintf|gets|strtok|stpcpy)[[:space:]]*\('
if grep -rnE "$banned" src/ --include='*.c' --include='*.h'; then
  echo "check-source: banned function used (use snprintf, chat_xasprintf, memcpy with a length)" >&2
  status=1
fi
raw='(^|[^_[:alnum:]])(malloc|calloc|realloc|strdup|strndup)[[:space:]]*\('
if grep -rnE "$raw" src/ --include='*.c' | grep -v '^src/core/alloc.c:' | grep -vE '^\S+:[0-9]+:\s*(/?\*|//)'; then
  echo "check-source: raw allocation outside core/alloc.c (use chat_xmalloc and friends)" >&2
  status=1
fi
[ "$status" -eq 0 ] && echo "check-source: ok"
exit "$status"
