#!/usr/bin/env bash
# The checks to run before calling work done: formatting, cppcheck, clang-tidy (on the
# files given, or all sources), and the test suite under ASan + UBSan (CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
sources=$(git ls-files '*.cpp' '*.h' '*.cu')

echo "== clang-format"
clang-format --dry-run --Werror $sources

echo "== cppcheck"
cppcheck --quiet --error-exitcode=1 --std=c++20 --language=c++ --inline-suppr \
  --enable=warning,performance,portability --suppress=missingIncludeSystem -I . \
  $(git ls-files '*.cpp' ':!tests/*')

echo "== clang-tidy"
[ -f build/compile_commands.json ] || bash scripts/setup.sh
tidy_files=${*:-$(git ls-files '*.cpp')}
clang-tidy -p build --quiet $tidy_files

echo "== tests under ASan + UBSan"
if [ ! -f build-asan/build.ninja ]; then
  meson setup build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
    -Db_lundef=false -Dcuda=disabled
fi
mkdir -p build-asan/test-results
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 meson test -C build-asan --print-errorlogs
