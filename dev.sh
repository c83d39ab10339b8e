#!/usr/bin/env bash
# trollproxy's one entry point for developers and CI: installs what is missing, builds, tests, runs.
#   ./dev.sh test     build and run every test suite (what CI runs)
#   ./dev.sh run      start the proxy with the embedded ledger, a demo user and the test upstream
#   ./dev.sh fuzz [SECONDS]   run each libFuzzer target (default 600 s each)
#   ./dev.sh bench    benchmarks (tests/bench)
#   ./dev.sh drills   fault drills (tests/drills)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
BUILD=${TROLLPROXY_BUILD_DIR:-build}

APT_PACKAGES=(meson ninja-build pkg-config g++ clang libclang-rt-14-dev
  libcpp-httplib-dev libsimdjson-dev libcurl4-openssl-dev libmongoc-dev libbson-dev
  libsqlite3-dev doctest-dev nginx-light nodejs npm python3 curl wrk gnuplot-nox prometheus clang-format)

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  # A machine may already have node and npm from elsewhere.
  if command -v node >/dev/null && command -v npm >/dev/null; then
    missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
  fi
  local want=()
  for p in "${missing[@]}"; do [ -n "$p" ] && want+=("$p"); done
  [ ${#want[@]} -eq 0 ] && return 0
  log "installing ${want[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  # Only promtool is wanted from the prometheus package: not its server on :9090.
  if [[ " ${want[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null &&
      systemctl is-active -q prometheus 2>/dev/null; then
    $sudo systemctl disable -q --now prometheus || true
  fi
}

install_npm() {
  for script in tests/sdk/install.sh tests/mongo/install.sh tests/openspec/install.sh \
      tests/agents/install.sh; do
    if [ -x "$script" ]; then
      log "npm packages: $script"
      "$script" || log "warning: $script failed; the tests that need it will be skipped"
    fi
  done
}

build() {
  if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" >/dev/null
  fi
  log "building"
  ninja -C "$BUILD"
}

run_tests() {
  local out="$BUILD/meson-test-output.txt" rc=0
  log "running tests"
  meson test -C "$BUILD" --print-errorlogs --no-rebuild "$@" 2>&1 | tee "$out" || rc=$?
  local ok fail skip timeout
  ok=$(sed -n 's/^Ok: *\([0-9]*\).*/\1/p' "$out" | tail -1)
  fail=$(sed -n 's/^Fail: *\([0-9]*\).*/\1/p' "$out" | tail -1)
  timeout=$(sed -n 's/^Timeout: *\([0-9]*\).*/\1/p' "$out" | tail -1)
  skip=$(sed -n 's/^Skipped: *\([0-9]*\).*/\1/p' "$out" | tail -1)
  fail=$(( ${fail:-0} + ${timeout:-0} ))
  [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ] && fail=1
  echo "${skip:-0} skipped"
  echo "${ok:-0} passed, ${fail} failed"
  return "$rc"
}

cmd_test() {
  install_apt
  install_npm
  build
  run_tests "$@"
}

cmd_run() {
  install_apt
  build
  mkdir -p .run
  local config=${TROLLPROXY_CONFIG:-configs/example.json}
  local ledger=${TROLLPROXY_LEDGER:-sqlite:.run/demo.db}
  local pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
  if [ -z "${TROLLPROXY_UPSTREAM_KEYS:-}" ]; then
    log "no TROLLPROXY_UPSTREAM_KEYS: starting the test upstream on 127.0.0.1:9009"
    "$BUILD/tests/fake_upstream/trollproxy-fake-upstream" --listen 127.0.0.1:9009 --chunk-delay-ms 30 >.run/upstream.log 2>&1 &
    pids+=($!)
    export TROLLPROXY_UPSTREAM_KEYS=demo-upstream-key
  fi
  local admin="$BUILD/server/trollproxy-admin --ledger $ledger"
  $admin user add demo >/dev/null 2>&1 || true
  local key
  key=$($admin key add demo)
  $admin credit demo creditsNew 5 >/dev/null
  $admin credit demo credits 1 >/dev/null
  local port
  port=$(sed -n 's/^ *"port": *\([0-9]*\).*/\1/p' "$config" | head -1)
  cat <<MSG

  demo user: demo    key: $key
  balance:   $admin balance demo

  curl -s http://127.0.0.1:$port/v1/chat/completions -H "Authorization: Bearer $key" \\
       -H 'Content-Type: application/json' \\
       -d '{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"Hello"}]}'

  then: $admin balance demo ; $admin usage demo

MSG
  "$BUILD/server/trollproxy" --config "$config" --ledger "$ledger" &
  pids+=($!)
  wait "${pids[-1]}"
}

cmd_fuzz() {
  install_apt
  local secs=${1:-600} failed=()
  for t in sse usage config request; do
    tests/fuzz/run.sh "$t" "$secs" || failed+=("$t")
  done
  if [ ${#failed[@]} -gt 0 ]; then
    log "fuzz: FAILED: ${failed[*]}"
    return 1
  fi
  log "fuzz: all targets passed"
}

case "${1:-}" in
  test) shift; cmd_test "$@" ;;
  run) shift; cmd_run "$@" ;;
  build) install_apt; build ;;
  fuzz) shift; cmd_fuzz "$@" ;;
  bench) shift; install_apt; build; exec tests/bench/run.sh "$@" ;;
  drills) shift; install_apt; install_npm; build; exec tests/drills/run.sh "$@" ;;
  *) sed -n '2,8p' "$0"; exit 2 ;;
esac
