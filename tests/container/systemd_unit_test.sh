#!/usr/bin/env bash
# configs/systemd: `systemd-analyze verify` finds nothing to say about trollproxy@.service
# (its ExecStart pointed at this build's trollproxy; the unit names /usr/local/bin/trollproxy,
# where `meson install` and the Dockerfile put it), `systemd-analyze security` rates its
# exposure at most 2.0, it carries the settings an operator relies on, and systemd-sysusers
# makes its user.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
SRC=${TROLLPROXY_SOURCE_ROOT:?}
BUILD=${TROLLPROXY_BUILD_ROOT:?}
UNIT=$SRC/configs/systemd/trollproxy@.service
SYSUSERS=$SRC/configs/systemd/trollproxy.sysusers

need_packages systemd
TMP=$(mktemp -d "${TMPDIR:-/tmp}/trollproxy-systemd.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# The settings, as the unit file states them.
for line in 'User=trollproxy' 'Group=trollproxy' 'EnvironmentFile=-/etc/trollproxy/%i.env' \
  'StateDirectory=trollproxy/%i' 'WorkingDirectory=%S/trollproxy/%i' \
  'ExecStart=/usr/local/bin/trollproxy --config /etc/trollproxy/%i.json' \
  'ExecReload=/bin/kill -HUP $MAINPID' 'KillSignal=SIGTERM' 'KillMode=mixed' \
  'Restart=on-failure' 'NoNewPrivileges=yes' 'ProtectSystem=strict'; do
  grep -qxF "$line" "$UNIT" || fail "$UNIT has no line $line"
done
grep -q '^LimitNOFILE=[0-9]' "$UNIT" || fail "no LimitNOFILE"
# Stopping waits longer than trollproxy's own grace (shutdown_grace_seconds, 30 s by default).
stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$UNIT")
[ -n "$stop" ] && [ "$stop" -gt 30 ] || fail "TimeoutStopSec=${stop:-unset}, not above the 30 s grace"

# verify prints what it ignores and still exits 0: any output is a failure.
sed "s|^ExecStart=/usr/local/bin/trollproxy |ExecStart=$BUILD/server/trollproxy |" "$UNIT" \
  >"$TMP/trollproxy@.service"
out=$(cd "$TMP" && systemd-analyze verify ./trollproxy@.service 2>&1) || { echo "$out"; fail "systemd-analyze verify"; }
[ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify had something to say (above)"; }
echo "systemd-analyze verify: no findings"

# Overall exposure at most 2.0 of 10 (1.1 when written; --threshold counts tenths).
cp "$TMP/trollproxy@.service" "$TMP/trollproxy@test.service"
out=$(cd "$TMP" && systemd-analyze security --offline=yes --threshold=20 ./trollproxy@test.service 2>&1) ||
  { echo "$out"; fail "systemd-analyze security: exposure above 2.0"; }
echo "$out" | tail -1

# The user the unit runs as, made by systemd-sysusers in an empty root.
mkdir -p "$TMP/root/etc"
systemd-sysusers --root="$TMP/root" "$SYSUSERS" >/dev/null 2>&1 || fail "systemd-sysusers $SYSUSERS"
grep -E '^trollproxy:x:[0-9]+:[0-9]+:[^:]*:/var/lib/trollproxy:/usr/sbin/nologin$' "$TMP/root/etc/passwd" ||
  fail "systemd-sysusers made no trollproxy user with /usr/sbin/nologin"
echo "PASS: trollproxy@.service verified, exposure OK, sysusers makes its user"
