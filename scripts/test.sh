#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite. Each test case writes PASS, FAIL or SKIP
# to build/test-results/; the last line printed counts them.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
rm -rf build/test-results
mkdir -p build/test-results
meson test -C build --print-errorlogs --num-processes 2 "$@"
status=$?
bash scripts/count-results.sh build/test-results
exit $status
