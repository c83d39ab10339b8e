#!/usr/bin/env bash
# Builds one libFuzzer target in a clang build directory (once) and fuzzes it for a while.
#   tests/fuzz/run.sh sse|usage|config|request [SECONDS]     (default 600 s)
# The build directory is $TROLLPROXY_FUZZ_BUILD_DIR, else build-fuzz at the top of the
# tree; new corpus inputs and crashes go to BUILD/tests/fuzz/fuzz-work/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
target=${1:-}
secs=${2:-600}
case "$target" in
  sse|usage|config|request) ;;
  *) sed -n '2,5p' "$0" >&2; exit 2 ;;
esac
BUILD=${TROLLPROXY_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}

if ! command -v clang++ >/dev/null; then
  echo "fuzz $target: cannot run: clang++ is not installed (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
if [ ! -f "$BUILD/build.ninja" ]; then
  echo "== configuring $BUILD (clang, -Dfuzzing=true)" >&2
  if ! out=$(CXX=clang++ meson setup "$BUILD" -Dfuzzing=true 2>&1); then
    echo "$out" >&2
    echo "fuzz $target: FAIL: meson setup failed" >&2
    exit 1
  fi
elif [ "$(meson introspect --buildoptions "$BUILD" |
        python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"] == "fuzzing"])')" != "[True]" ]; then
  echo "== enabling -Dfuzzing=true in $BUILD" >&2
  meson configure "$BUILD" -Dfuzzing=true >/dev/null
fi
echo "== building fuzz_$target" >&2
if ! ninja -C "$BUILD" "tests/fuzz/fuzz_$target" "tests/fuzz/fuzz_${target}_corpus" >"$BUILD/fuzz-build.log" 2>&1; then
  cat "$BUILD/fuzz-build.log" >&2
  echo "fuzz $target: FAIL: the build failed" >&2
  exit 1
fi
echo "== fuzzing $target for $secs s" >&2
exec tests/fuzz/libfuzzer.sh "$BUILD/tests/fuzz/fuzz_$target" "$ROOT/tests/fuzz/corpus/$target" \
  "$BUILD/tests/fuzz/fuzz-work/$target" "$secs" -dict="$ROOT/tests/fuzz/$target.dict"
