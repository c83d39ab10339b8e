#!/usr/bin/env bash
# Installs Portkey's open-source AI gateway (the peer gateway in the benchmarks) from npm,
# pinned by package-lock.json; @hono/node-server is held at 1.14.1, under which its streaming works.
set -euo pipefail
cd "$(dirname "$0")"
if [ -f node_modules/@portkey-ai/gateway/build/start-server.js ] &&
   grep -q '"version": "1.14.1"' node_modules/@hono/node-server/package.json 2>/dev/null; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
