#!/usr/bin/env bash
# Runs the full fault drills (./dev.sh drills): 500-request overspend race, crash, 10 s ledger outages
# (SQLite, and MongoDB when CongoDB is installed), upstream faults, a soak (default 1800 s), and the
# budget slice drills (SQLite, and MongoDB when CongoDB is installed).
#   tests/drills/run.sh [--soak-seconds S] [--outage-seconds S] [DRILL...]
#   (DRILL: overspend crash outage upstream-faults soak slices-overspend slices-crash slices-outage
#    slices-keys slices all)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${TROLLPROXY_BUILD_DIR:-build}
ninja -C "$BUILD" tests/drills/trollproxy-drills server/trollproxy tests/fake_upstream/trollproxy-fake-upstream >/dev/null
export TROLLPROXY_BUILD_ROOT=$PWD/$BUILD TROLLPROXY_SOURCE_ROOT=$PWD
args=() drills=()
while [ $# -gt 0 ]; do
  case "$1" in
    --soak-seconds|--outage-seconds|--requests|--covers) args+=("$1" "$2"); shift 2 ;;
    --quick) args+=("$1"); shift ;;
    *) drills+=("$1"); shift ;;
  esac
done
[ ${#drills[@]} -eq 0 ] && drills=(all)
mongo=()
command -v node >/dev/null && mongo=(--mongo)
exec "$BUILD/tests/drills/trollproxy-drills" "${mongo[@]}" "${args[@]}" "${drills[@]}"
