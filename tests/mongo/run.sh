#!/usr/bin/env bash
# Runs one test command against each MongoDB-protocol server available, with
# TROLLPROXY_TEST_LEDGER_URI set to a fresh database on it:
#   - CongoDB (tests/mongo/node_modules, from install.sh) started on a free port
#     and stopped afterwards; it stores only ObjectId `_id`s, so the test also
#     gets TROLLPROXY_TEST_OBJECTID_IDS=1;
#   - a real mongod / replica set when TROLLPROXY_TEST_MONGODB_URI is set.
# Exits 77 (skipped) when neither is available.
#   run.sh COMMAND [ARGS...]
set -u
here=$(cd "$(dirname "$0")" && pwd)
ran=0
status=0

# A database name no other run uses.
dbname() { echo "trollproxy_test_$(date +%s)_$$_$RANDOM"; }

run_one() { # run_one LABEL URI [ENV=VALUE...]
  local label=$1 uri=$2; shift 2
  echo "== $label: $uri"
  env "$@" TROLLPROXY_TEST_LEDGER_URI="$uri" "${cmd[@]}"
  local rc=$?
  echo "== $label: exit $rc"
  ran=1
  [ "$rc" -eq 0 ] || status=1
}

cmd=("$@")

if command -v node >/dev/null && [ -f "$here/node_modules/@push.rocks/smartmongo/dist_ts/congodb/index.js" ]; then
  out=$(mktemp)
  # congo.mjs stops when its stdin closes, so it cannot outlive this script.
  coproc CONGO { exec node "$here/congo.mjs" >"$out" 2>&1; }
  congo_pid=$CONGO_PID
  trap 'kill "$congo_pid" 2>/dev/null; wait "$congo_pid" 2>/dev/null; rm -f "$out"' EXIT
  port=
  for _ in $(seq 1 200); do
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$out")
    [ -n "$port" ] && break
    kill -0 "$congo_pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$port" ]; then
    echo "CongoDB did not start:"; cat "$out"
    exit 1
  fi
  run_one CongoDB "mongodb://127.0.0.1:$port/$(dbname)" TROLLPROXY_TEST_OBJECTID_IDS=1
fi

if [ -n "${TROLLPROXY_TEST_MONGODB_URI:-}" ]; then
  # Put a fresh database name into the URI's path, keeping hosts and options.
  u=$TROLLPROXY_TEST_MONGODB_URI
  scheme=${u%%://*}; rest=${u#*://}
  hosts=${rest%%/*}; hosts=${hosts%%\?*}
  query=; case $rest in *\?*) query="?${rest#*\?}" ;; esac
  run_one mongod "$scheme://$hosts/$(dbname)$query" TROLLPROXY_TEST_OBJECTID_IDS=0
fi

if [ "$ran" -eq 0 ]; then
  echo "skipped: no MongoDB-protocol server (run tests/mongo/install.sh for CongoDB, or set TROLLPROXY_TEST_MONGODB_URI)"
  exit 77
fi
exit $status
