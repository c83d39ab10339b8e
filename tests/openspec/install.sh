#!/usr/bin/env bash
# Installs the OpenSpec CLI (@fission-ai/openspec, pinned in package-lock.json) for the 'openspec' test suite.
set -euo pipefail
cd "$(dirname "$0")"
want=$(sed -n 's/.*"@fission-ai\/openspec": *"\([^"]*\)".*/\1/p' package.json | head -1)
have=$(sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' node_modules/@fission-ai/openspec/package.json 2>/dev/null | head -1 || true)
if [ -x node_modules/.bin/openspec ] && [ "$have" = "$want" ]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
