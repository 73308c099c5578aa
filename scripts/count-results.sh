#!/usr/bin/env bash
# Prints "N passed, N failed, N skipped" from the per-test-case lines in the result files
# of the given folder (written by tests/main.cpp's listener).
set -euo pipefail
dir=${1:-build/test-results}
count() { cat "$dir"/*.txt 2>/dev/null | grep -c "^$1 " || true; }
echo "$(count PASS) passed, $(count FAIL) failed, $(count SKIP) skipped"
