#!/bin/sh
# Fails when a C++ file of the tree differs from what clang-format makes of it (.clang-format).
# Fix with: git ls-files '*.cpp' '*.hpp' | xargs clang-format -i
cd "${TROLLPROXY_SOURCE_ROOT:?}" || exit 1
command -v clang-format >/dev/null || { echo "clang-format not installed"; exit 77; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  files=$(git ls-files '*.cpp' '*.hpp')
else
  files=$(find libtrollproxy server tests examples -name '*.[ch]pp' -not -path '*/node_modules/*')
fi
# --dry-run --Werror: one warning per line that would change, and a non-zero exit.
out=$(echo "$files" | xargs clang-format --dry-run --Werror 2>&1)
rc=$?
if [ $rc -ne 0 ]; then
  echo "$out" | grep 'warning:' | cut -d: -f1 | sort | uniq -c | sed 's/^/not formatted: /'
  echo "run: git ls-files '*.cpp' '*.hpp' | xargs clang-format -i"
  exit 1
fi
echo "$(echo "$files" | wc -l) files formatted"
