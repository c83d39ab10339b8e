#!/usr/bin/env bash
# Installs the official OpenAI and Anthropic SDKs (pinned in package-lock.json) for the sdk suite.
set -euo pipefail
cd "$(dirname "$0")"
if [ -f node_modules/openai/package.json ] && [ -f node_modules/@anthropic-ai/sdk/package.json ] &&
   [ node_modules/.package-lock.json -nt package-lock.json ]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
