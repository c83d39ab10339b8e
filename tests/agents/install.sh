#!/usr/bin/env bash
# Installs Claude Code, the Codex CLI and the OpenAI SDK (pinned in package-lock.json) for the
# agents suite. Both CLIs are native programs from platform packages (optional dependencies):
# the check runs them, so a missing platform package fails here rather than in the tests.
set -euo pipefail
cd "$(dirname "$0")"
works() {
  node_modules/.bin/claude --version >/dev/null 2>&1 && node_modules/.bin/codex --version >/dev/null 2>&1 &&
    [ -f node_modules/openai/package.json ]
}
if works && [ node_modules/.package-lock.json -nt package-lock.json ]; then
  exit 0
fi
npm ci --no-audit --no-fund --loglevel=error
if ! works; then
  echo "tests/agents/install.sh: claude or codex does not run after npm ci (platform package missing?)" >&2
  exit 1
fi
