#!/usr/bin/env bash
# Installs CongoDB (a MongoDB-wire server in TypeScript, from @push.rocks/smartmongo 2.2.0)
# for the MongoDB ledger tests. Its package's own dependency list is broken on npm,
# so its runtime dependencies come from package.json and its tarball is unpacked here.
set -euo pipefail
cd "$(dirname "$0")"
target=node_modules/@push.rocks/smartmongo
if [ -f "$target/dist_ts/congodb/index.js" ] && [ -d node_modules/mingo ]; then
  exit 0
fi
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
tmp=$(mktemp -d)
(cd "$tmp" && npm pack --silent @push.rocks/smartmongo@2.2.0 >/dev/null)
mkdir -p "$target"
tar xzf "$tmp"/push.rocks-smartmongo-2.2.0.tgz -C "$target" --strip-components=1
rm -rf "$tmp"
