#!/usr/bin/env bash
# Benchmarks (./dev.sh bench): trollproxy next to the direct test upstream, nginx and Portkey's
# gateway, on 127.0.0.1. Builds its own release tree (build-bench), installs what it needs,
# raises the open-file limit, runs bench.py and stops every process it started on exit.
#   tests/bench/run.sh [--quick] [--no-docs] [bench.py options...]
#   tests/bench/run.sh --memory-only [--baseline BIN]   idle, peak and after-burst RSS only
#   tests/bench/run.sh --floor [--rounds N] [--seconds S]  trollproxy next to a bare cpp-httplib +
#                                                           libcurl forwarder (floor.py)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BUILD=${TROLLPROXY_BENCH_BUILD_DIR:-build-bench}
OUT=$BUILD/bench
log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

need=()
for p in nginx-light wrk hey gnuplot-nox curl linux-perf; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
tests/bench/portkey/install.sh

# An optimized build of its own; warnings do not stop a benchmark.
if [ ! -f "$BUILD/build.ninja" ]; then
  meson setup "$BUILD" --buildtype=release -Dtests=true -Dwerror=false >/dev/null
fi
log "building $BUILD"
ninja -C "$BUILD" server/trollproxy server/trollproxy-admin tests/fake_upstream/trollproxy-fake-upstream >/dev/null
mkdir -p "$OUT"
g++ -O2 -std=c++20 -Wall -Wextra -o "$OUT/sse-load" tests/bench/sse_load.cpp

if [ "${1:-}" = "--floor" ]; then # the stack's floor, side by side (floor.py)
  shift
  g++ -O2 -std=c++20 -Wall -Wextra -o "$OUT/floor-proxy" tests/bench/floor_proxy.cpp \
    $(pkg-config --cflags --libs cpp-httplib libcurl) -pthread
  ulimit -n "$(ulimit -Hn)"
  exec python3 tests/bench/floor.py --build "$BUILD" --out "$OUT" --floor-proxy "$OUT/floor-proxy" "$@"
fi

ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 10000 ]; then
  log "open-file limit is $(ulimit -n); 2,000 streams need about 10,000"
fi

docs=--docs
quick=()
args=()
for a in "$@"; do
  case "$a" in
    --no-docs) docs= ;;
    --quick) quick=(--wrk-seconds 2 --hey-seconds 1 --concurrency 1,32,256 --streams 100,1000 --rounds 1 --no-profile); docs= ;;
    *) args+=("$a") ;;
  esac
done

# bench.py stops its children itself; this is the net for a kill -9 of it.
pidfile=$OUT/run/pids
cleanup() {
  [ -f "$pidfile" ] || return 0
  while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$pidfile"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
python3 tests/bench/bench.py --build "$BUILD" --out "$OUT" --sse-load "$OUT/sse-load" $docs "${quick[@]}" "${args[@]}"
