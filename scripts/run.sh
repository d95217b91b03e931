#!/usr/bin/env bash
# The one command that installs what is missing (build packages only), builds
# chatd and starts it:
#   scripts/run.sh [flags for chatd serve]
# Configuration comes from ./.env, the environment, or flags (chatd --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DCHATD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)"
exec build-release/chatd serve "$@"
