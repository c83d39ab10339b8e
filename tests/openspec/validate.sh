#!/usr/bin/env bash
# Validates docs/openspec with the real OpenSpec CLI (`openspec validate --strict`), and checks
# that the same CLI rejects a deliberately broken copy of the billing spec.
set -euo pipefail

SRC=${TROLLPROXY_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
CLI=$SRC/tests/openspec/node_modules/.bin/openspec
if [ ! -x "$CLI" ]; then
  echo "skip: the OpenSpec CLI is not installed (run tests/openspec/install.sh)"
  exit 77
fi
# No telemetry, no update check, no global config in the user's home.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/trollproxy-openspec.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export OPENSPEC_TELEMETRY=0 DO_NOT_TRACK=1 OPENSPEC_NO_UPDATE_CHECK=1 NO_COLOR=1 XDG_CONFIG_HOME=$TMP/config
if ! version=$("$CLI" --version 2>"$TMP/version.err"); then
  echo "skip: the OpenSpec CLI does not run here (it needs node >= 20.19; node is $(node --version 2>/dev/null || echo missing)):"
  cat "$TMP/version.err"
  exit 77
fi
echo "openspec $version"

# validate ROOT_DIR: runs `openspec validate billing --type spec --strict --json` with ROOT_DIR as
# the working directory (the CLI takes the nearest openspec/ directory), prints the result and
# checks it validated ROOT_DIR's spec. Its exit status is the CLI's.
validate() {
  local dir=$1 rc=0
  (cd "$dir" && "$CLI" validate billing --type spec --strict --json --no-interactive) >"$TMP/out.json" 2>"$TMP/err" || rc=$?
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
    if (r.root && r.root.path !== process.argv[2]) { console.error("validated " + r.root.path + ", not " + process.argv[2]); process.exit(2); }
    const item = r.items.find((i) => i.id === "billing" && i.type === "spec");
    if (!item) { console.error("no spec \"billing\" was validated"); process.exit(2); }
    console.log((item.valid ? "valid" : "INVALID") + ": " + process.argv[2] + "/openspec/specs/billing/spec.md");
    for (const i of item.issues) console.log("  " + i.level + " " + i.path + ": " + i.message.split("\n")[0]);
  ' "$TMP/out.json" "$(cd "$dir" && pwd -P)" || { cat "$TMP/err" "$TMP/out.json"; return 2; }
  return "$rc"
}

# 1. The spec itself, strictly.
validate "$SRC/docs" || { echo "FAIL: docs/openspec/specs/billing/spec.md does not pass openspec validate --strict"; exit 1; }

# 2. Every spec under docs/openspec, in bulk (catches a broken spec added next to billing).
(cd "$SRC/docs" && "$CLI" validate --specs --strict --no-interactive) ||
  { echo "FAIL: openspec validate --specs --strict"; exit 1; }

# 3. The check can fail: copies of the spec with one defect each must be rejected.
broken=$TMP/broken
mkdir -p "$broken/openspec/specs/billing"
spec=$SRC/docs/openspec/specs/billing/spec.md
while IFS='|' read -r what script; do
  sed "$script" "$spec" >"$broken/openspec/specs/billing/spec.md"
  if cmp -s "$spec" "$broken/openspec/specs/billing/spec.md"; then
    echo "FAIL: the defect \"$what\" changed nothing in the spec (update this test)"; exit 1
  fi
  rc=0; validate "$broken" >"$TMP/broken.out" || rc=$?
  if [ "$rc" -ne 1 ]; then
    cat "$TMP/broken.out"; echo "FAIL: a spec with \"$what\" was not rejected (exit $rc)"; exit 1
  fi
  echo "rejected as expected: $what"
done <<'DEFECTS'
a scenario written as a bullet|s/^#### Scenario: Not enough credits/- Not enough credits/
a requirement without SHALL or MUST|/^### Requirement: Insufficient Credits/,/^####/{s/SHALL/will/;s/MUST/will/}
no Purpose section|s/^## Purpose/## About/
DEFECTS
echo "PASS"
