#!/usr/bin/env bash
# Runs the end-to-end test against a MongoDB-protocol ledger (tests/mongo/run.sh starts CongoDB);
# skipped (77) when nginx or every MongoDB-protocol server is missing.
set -u
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ] && [ -z "${TROLLPROXY_NGINX:-}" ]; then
  echo "skipped: nginx is not installed"
  exit 77
fi
export TROLLPROXY_E2E_LEDGER=mongo
exec "$(dirname "$0")/../mongo/run.sh" "$@"
