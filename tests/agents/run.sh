#!/bin/sh
# Runs an agents test with node; exit 77 (skipped) when node is not installed.
command -v node >/dev/null 2>&1 || { echo "node is not installed: skipped"; exit 77; }
exec node "$@"
