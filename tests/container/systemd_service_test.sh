#!/usr/bin/env bash
# configs/systemd/trollproxy@.service run by systemd: a container with systemd as PID 1
# (systemd-host.Containerfile: the trollproxy image's /usr/local plus systemd) on the host's
# network, the install steps of docs/deployment.md run in it, then: the hardening is in effect
# (read-only root, seccomp, no new privileges, no capabilities), /health, reload, a restart
# after a crash, two charged requests, `systemctl stop` with a stream in flight, and the ledger
# in the StateDirectory read afterwards.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
SRC=${TROLLPROXY_SOURCE_ROOT:?}
command -v curl >/dev/null || skip "curl is not installed"
command -v python3 >/dev/null || skip "python3 is not installed"

need_packages podman runc debootstrap debian-archive-keyring
containers_env
lock_cache

TMP=$(mktemp -d "${TMPDIR:-/tmp}/trollproxy-systemd.XXXXXX")
NAME=trollproxy-systemd-test-$$
HOST_IMAGE=trollproxy-systemd-host:latest
UPSTREAM_PID=
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && podman container exists "$NAME" 2>/dev/null; then
    echo "--- journal of trollproxy@test:" >&2
    podman exec "$NAME" journalctl -u trollproxy@test --no-pager >&2 2>&1 || true
  fi
  podman rm -f -t 5 "$NAME" >/dev/null 2>&1 || true
  [ -z "$UPSTREAM_PID" ] || kill "$UPSTREAM_PID" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
# A command on the systemd host, from a copy of the repository's configs/.
inhost() { podman exec -w /src "$NAME" "$@"; }
unit_journal() { inhost journalctl -u trollproxy@test --no-pager -o cat; }
main_pid() { inhost systemctl show -p MainPID --value trollproxy@test; }

build_image "$TMP/build.log"
log "podman build -t $HOST_IMAGE (systemd-host.Containerfile)"
podman build --isolation chroot --pull=never --network host --layers -t "$HOST_IMAGE" \
  -f "$HERE/systemd-host.Containerfile" "$HERE" >"$TMP/host-build.log" 2>&1 ||
  { tail -30 "$TMP/host-build.log"; fail "podman build $HOST_IMAGE"; }
podman image prune -f >/dev/null

start_upstream "$TMP/upstream.log"
PORT=$(free_port)
mkdir -p "$TMP/src/configs"
cp -r "$SRC/configs/systemd" "$TMP/src/configs/"
test_config "$TMP/src/test.json" "$PORT"

# systemd needs CAP_SYS_ADMIN in its container to set up the unit's mount namespaces
# (ProtectSystem=, PrivateTmp=, ...); without it, it skips them and says nothing.
podman run -d --name "$NAME" --network host --systemd=always --image-volume=ignore \
  --cap-add SYS_ADMIN -v "$TMP/src:/src:ro" "$HOST_IMAGE" >/dev/null
state=
for _ in $(seq 100); do
  state=$(podman exec "$NAME" systemctl is-system-running 2>/dev/null || true)
  case $state in running | degraded) break ;; esac
  sleep 0.2
done
case $state in running | degraded) ;; *) fail "systemd in the container: '$state'" ;; esac
inhost rm -rf /var/lib/trollproxy # the image's, not a host's (see systemd-host.Containerfile)

log "install steps of docs/deployment.md, with NAME=test"
inhost sh -euc '
  install -D -m 0644 configs/systemd/trollproxy.sysusers /etc/sysusers.d/trollproxy.conf
  systemd-sysusers
  install -m 0644 configs/systemd/trollproxy@.service /etc/systemd/system/
  install -d -m 0755 /etc/trollproxy
  install -m 0640 -g trollproxy test.json /etc/trollproxy/test.json
  install -m 0600 /dev/null /etc/trollproxy/test.env
  echo TROLLPROXY_UPSTREAM_KEYS=test-upstream-key >/etc/trollproxy/test.env
  systemctl daemon-reload
  systemctl enable --now trollproxy@test' >/dev/null 2>&1 || fail "the install steps"
out=$(inhost systemd-analyze verify trollproxy@test.service 2>&1) && [ -z "$out" ] ||
  { echo "$out"; fail "systemd-analyze verify on the installed unit"; }
for _ in $(seq 100); do unit_journal | has '^metrics listening on' && break; sleep 0.1; done
unit_journal | has "^trollproxy listening on 0.0.0.0:$PORT$" || fail "trollproxy@test does not listen on $PORT"
URL=http://127.0.0.1:$PORT
[ "$(curl -fsS "$URL/health")" = '{"status":"ok"}' ] || fail "/health"
[ "$(curl -fsS "$URL/ready")" = '{"status":"ready"}' ] || fail "/ready"

# The hardening, as the kernel sees the process.
pid=$(main_pid)
uid=$(inhost id -u trollproxy)
inhost sh -c "grep -E '^(Uid|NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/$pid/status" >"$TMP/status"
grep -Eq "^Uid:[[:space:]]+${uid}[[:space:]]" "$TMP/status" &&
  grep -Eq '^NoNewPrivs:[[:space:]]+1$' "$TMP/status" &&
  grep -Eq '^Seccomp:[[:space:]]+2$' "$TMP/status" &&
  grep -Eq '^CapEff:[[:space:]]+0+$' "$TMP/status" &&
  grep -Eq '^CapBnd:[[:space:]]+0+$' "$TMP/status" || { cat "$TMP/status"; fail "process status"; }
inhost cat "/proc/$pid/mountinfo" | awk '{ print $5, $6 }' >"$TMP/mounts"
grep -Eq '^/ ro(,|$)' "$TMP/mounts" && grep -Eq '^/var/lib/trollproxy/test rw(,|$)' "$TMP/mounts" ||
  { cat "$TMP/mounts"; fail "the root is not read-only or the state directory not writable"; }
echo "hardening in effect: uid $uid, seccomp, no new privileges, no capabilities, / read-only"

# The admin tool as the service's user, on the ledger in its StateDirectory.
admin() {
  inhost runuser -u trollproxy -- trollproxy-admin --ledger sqlite:/var/lib/trollproxy/test/trollproxy.db "$@"
}
admin user add alice >/dev/null
KEY=$(admin key add alice)
admin credit alice creditsNew 1 >/dev/null

inhost systemctl reload trollproxy@test || fail "systemctl reload"
for _ in $(seq 50); do unit_journal | has 'config reload applied' && break; sleep 0.1; done
unit_journal | has 'config reload applied' || fail "no 'config reload applied' after systemctl reload"

# Restart=on-failure: a crash (SIGKILL) brings it back after RestartSec.
inhost kill -KILL "$pid"
for _ in $(seq 100); do
  new=$(main_pid)
  [ "$new" != 0 ] && [ "$new" != "$pid" ] && curl -fsS "$URL/health" >/dev/null 2>&1 && break
  sleep 0.1
done
[ "$(inhost systemctl show -p NRestarts --value trollproxy@test)" = 1 ] || fail "not restarted after SIGKILL"
curl -fsS "$URL/health" >/dev/null || fail "/health after the restart"
echo "restarted after SIGKILL"

charge_and_stop "$TMP" inhost systemctl stop trollproxy@test
result=$(inhost systemctl show -p Result -p ExecMainCode -p ExecMainStatus trollproxy@test | sort | tr '\n' ' ')
[ "$result" = "ExecMainCode=1 ExecMainStatus=0 Result=success " ] || fail "after stop: $result"
unit_journal >"$TMP/journal"
grep -q 'shutting down' "$TMP/journal" || fail "no 'shutting down' in the journal"
if grep '"level":"error"' "$TMP/journal"; then fail "errors in the journal"; fi
echo "systemctl stop took $STOP_S s with a stream in flight; exited 0"

check_charged "$(admin balance alice)"
left=$(inhost sh -c 'cat /var/lib/trollproxy/test/*.journal 2>/dev/null | grep -c . || true')
[ "$left" = 0 ] || fail "$left charges left in the journal file"
echo "PASS: trollproxy@test installed as documented, hardened, reloaded, restarted, charged, stopped"
