# shellcheck shell=bash
# Shared by tests/container/*.sh: skips, packages from Debian, and podman set up with its own
# storage and settings under the cache directory (the host's are not touched).
#   TROLLPROXY_CONTAINER_CACHE   cache directory (default /var/cache/trollproxy-test/container):
#                                base rootfs tarballs, container storage, layer cache
#   TROLLPROXY_DEBIAN_MIRROR     Debian mirror for debootstrap (default: the one apt uses)

CACHE=${TROLLPROXY_CONTAINER_CACHE:-/var/cache/trollproxy-test/container}

skip() { echo "skip: $*"; exit 77; }
fail() { echo "FAIL: $*" >&2; exit 1; }
# grep -q on the whole of stdin, read first (with pipefail, a producer that grep -q cut off
# would fail the pipeline).
has() { local text; text=$(cat); grep -q "$@" <<<"$text"; }
log() { printf '== [%s] %s\n' "$(date +%T)" "$*"; }

# Installs the Debian packages that are missing (apt-get; nothing else is downloaded).
# Cannot install: the caller's test is skipped.
need_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || skip "needs root to install ${missing[*]}"
  log "installing ${missing[*]}"
  { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
      --no-install-recommends "${missing[@]}"; } >"${TMPDIR:-/tmp}/trollproxy-container-apt.log" 2>&1 ||
    { tail -20 "${TMPDIR:-/tmp}/trollproxy-container-apt.log"; skip "apt-get could not install ${missing[*]}"; }
}

# podman (and the buildah in it) with this suite's own storage and containers.conf: the runc runtime,
# cgroupfs, and ulimits no higher than this process's own (a sandbox without
# CAP_SYS_RESOURCE cannot raise them, and podman's defaults would).
containers_env() {
  [ "$(id -u)" -eq 0 ] || skip "the container suite runs rootful podman (needs root)"
  mkdir -p "$CACHE"
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nofile" -gt 1048576 ] && nofile=1048576
  # A fixed process limit: the sandbox this was written on refused any above 32768
  # (its pid_max) although its hard limit was higher; 8192 threads is plenty here.
  nproc=8192
  cat >"$CACHE/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  cat >"$CACHE/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "/run/trollproxy-test/containers"
CONF
  export CONTAINERS_CONF=$CACHE/containers.conf CONTAINERS_STORAGE_CONF=$CACHE/storage.conf
}

# One container test at a time on this machine (they share the cache and build one image).
lock_cache() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock -w 1200 9 || fail "another container test holds $CACHE/.lock"
}

# Makes the base images (base-images.sh), then builds the repository's Dockerfile as IMAGE
# with podman: chroot isolation and host networking (no nested namespaces needed), never
# pulling. Layers are cached between runs. Sets T_BASE and T_BUILD (seconds).
IMAGE=trollproxy:latest
build_image() { # BUILD_LOG
  local log_file=$1 t0=$SECONDS stage
  "$(dirname "${BASH_SOURCE[0]}")/base-images.sh"
  T_BASE=$((SECONDS - t0))
  log "podman build -t $IMAGE ."
  t0=$SECONDS
  podman build --isolation chroot --pull=never --network host --layers -t "$IMAGE" \
    "${TROLLPROXY_SOURCE_ROOT:?}" >"$log_file" 2>&1 || { tail -40 "$log_file"; fail "podman build"; }
  T_BUILD=$((SECONDS - t0))
  # Keep this build's layers for the next run (the image keeps its own stage's, a tag keeps
  # the build stage's) and drop earlier builds': the cache does not grow with each source
  # change, and the apt-get layers stay.
  stage=$(awk '/^\[[0-9]+\/[0-9]+\] STEP 1\// && last { print last; exit } /^--> / { last = $NF }' \
    "$log_file")
  [ -z "$stage" ] || podman tag "$stage" localhost/trollproxy-build-cache:latest
  podman image prune -f >/dev/null
}

# Starts the test upstream on the host (127.0.0.1, a free port); sets UPORT and UPSTREAM_PID.
start_upstream() { # LOG
  local bin=${TROLLPROXY_BUILD_ROOT:?}/tests/fake_upstream/trollproxy-fake-upstream
  [ -x "$bin" ] || fail "no test upstream at $bin"
  "$bin" --listen 127.0.0.1:0 >"$1" 2>&1 &
  UPSTREAM_PID=$!
  for _ in $(seq 100); do grep -q 'listening on' "$1" && break; sleep 0.1; done
  UPORT=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$1")
  [ -n "$UPORT" ] || fail "the test upstream did not start"
}

# configs/example.json pointed at the test upstream, with the x-fake-* headers forwarded to it
# and /metrics on a free port (host networking: the default 9464 may be taken). PORT: the
# proxy's port (default 8080; --listen may override it).
test_config() { # OUT [PORT]
  python3 - "${TROLLPROXY_SOURCE_ROOT:?}/configs/example.json" "$1" "$UPORT" "${2:-8080}" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
for ep in cfg["endpoints"]:
    ep["base_url"] = ep["base_url"].replace("127.0.0.1:9009", "127.0.0.1:" + sys.argv[3])
cfg["port"] = int(sys.argv[4])
cfg["trollproxy"] = {"forward_headers": ["x-fake-*"], "metrics_listen": "127.0.0.1:0"}
json.dump(cfg, open(sys.argv[2], "w"), indent=2)
PY
}

# A port nothing listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A request with the test user's key (KEY) to the proxy at URL; x-fake-usage sets the tokens
# the test upstream reports.
chat() { # BODY_EXTRA USAGE [curl options]
  local extra=$1 usage=$2; shift 2
  curl -sS "$@" "$URL/v1/chat/completions" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -H "x-fake-usage: $usage" \
    -d '{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"Hello"}]'"$extra"'}'
}

# Two charged requests, then a stop while the second runs. A whole request: 1000 input and
# 100 output tokens of claude-sonnet-4-5 at $3 and $15 per million, x1.1 = $0.00495. A stream
# of 10 chunks 300 ms apart (2000 and 200 tokens: $0.0099); STOP_COMMAND (returns once the
# server exited) runs while it is in flight, and the stream must still end normally.
# Sets STOP_S (seconds the stop took).
charge_and_stop() { # DIR STOP_COMMAND...
  local dir=$1 code pid t0; shift
  code=$(chat '' 1000,100,0,0 -o "$dir/whole.json" -w '%{http_code}')
  [ "$code" = 200 ] || { cat "$dir/whole.json"; fail "the request answered $code"; }
  chat ',"stream":true' 2000,200,0,0 -N -H 'x-fake-chunks: 10' -H 'x-fake-chunk-delay-ms: 300' \
    -o "$dir/stream.txt" &
  pid=$!
  for _ in $(seq 50); do [ -s "$dir/stream.txt" ] && break; sleep 0.1; done
  [ -s "$dir/stream.txt" ] || fail "the stream did not start"
  if grep -q '^data: \[DONE\]' "$dir/stream.txt"; then fail "the stream ended before the stop"; fi
  t0=$(date +%s%N)
  "$@" || fail "stop: $*"
  STOP_S=$(printf %.1f "$(( ($(date +%s%N) - t0) / 1000000 ))e-3")
  wait "$pid" || fail "the stream in flight failed at the stop"
  grep -q '^data: \[DONE\]' "$dir/stream.txt" || { cat "$dir/stream.txt"; fail "the stream was cut at the stop"; }
}

# `trollproxy-admin balance alice` after charge_and_stop: creditsNew 1 - 0.00495 - 0.0099 USD.
check_charged() { # BALANCE_OUTPUT
  echo "$1" | grep -qx 'creditsNew 0.985150000' && echo "$1" | grep -qx 'creditsNewUsed 0.014850000' ||
    { echo "$1"; fail "creditsNew is not 1 - 0.00495 - 0.0099"; }
}
