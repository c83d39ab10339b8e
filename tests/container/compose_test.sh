#!/usr/bin/env bash
# Validates docker-compose.prod.yml with a real compose implementation from Debian
# (docker-compose 1.29) and the environment docs/deployment.md names, then checks what the
# rendered file says against the repository: each proxy's config file exists where it is
# mounted, its port is the one exposed and health-checked, the stop grace period outlasts the
# proxy's own, MONGODB_URI defaults to the compose MongoDB. Nothing is pulled or started.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
SRC=${TROLLPROXY_SOURCE_ROOT:?}

need_packages docker-compose python3-yaml
TMP=$(mktemp -d "${TMPDIR:-/tmp}/trollproxy-compose.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
: >"$TMP/empty.env" # not an .env a working tree may hold
dc() {
  (cd "$SRC" && env -u MONGODB_URI -u MONGODB_DB_NAME -u OPENHANDS_UPSTREAM_KEYS "$@" \
    docker-compose --env-file "$TMP/empty.env" -f docker-compose.prod.yml config)
}
docker-compose version | sed -n 1p

# The docs' check: `OPENHANDS_UPSTREAM_KEYS=x dc config -q`.
dc OPENHANDS_UPSTREAM_KEYS=x >"$TMP/rendered.yml" 2>"$TMP/err" || { cat "$TMP/err"; fail "compose config"; }
# Without the upstream keys the file refuses to render, naming the variable.
if dc >/dev/null 2>"$TMP/err"; then fail "compose config passed without OPENHANDS_UPSTREAM_KEYS"; fi
grep -q 'set OPENHANDS_UPSTREAM_KEYS' "$TMP/err" || { cat "$TMP/err"; fail "no message naming OPENHANDS_UPSTREAM_KEYS"; }
# An external MongoDB replaces the default.
dc OPENHANDS_UPSTREAM_KEYS=x MONGODB_URI=mongodb://db.example:27017/fproxy >"$TMP/external.yml" ||
  fail "compose config with MONGODB_URI"
grep -q 'MONGODB_URI: mongodb://db.example:27017/fproxy' "$TMP/external.yml" ||
  fail "MONGODB_URI from the environment is not used"

python3 - "$TMP/rendered.yml" "$SRC" <<'PY'
import json, os, re, sys
import yaml

doc = yaml.safe_load(open(sys.argv[1]))
src = sys.argv[2]
errors = []

def seconds(text):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(text))
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)

proxies = {n: s for n, s in doc["services"].items() if "build" in s}
if sorted(proxies) != ["goproxy-ohmygpt", "goproxy-openhands"]:
    errors.append(f"built services: {sorted(proxies)}")
for name, svc in proxies.items():
    env = svc["environment"]
    if env.get("TROLLPROXY_UPSTREAM_KEYS") != "x":
        errors.append(f"{name}: TROLLPROXY_UPSTREAM_KEYS is not OPENHANDS_UPSTREAM_KEYS")
    if env.get("MONGODB_URI") != "mongodb://mongodb:27017/fproxy":
        errors.append(f"{name}: MONGODB_URI default {env.get('MONGODB_URI')}")
    # The --config path, through the bind mount, to a file of the repository.
    path = svc["command"][svc["command"].index("--config") + 1]
    host = None
    for v in svc["volumes"]:
        h, c = v.split(":")[:2]
        if path.startswith(c.rstrip("/") + "/") and h.startswith("/"):
            host = os.path.join(h, os.path.relpath(path, c))
    if not host or not os.path.isfile(host):
        errors.append(f"{name}: --config {path} is no file of the repository ({host})")
        continue
    cfg = json.load(open(host))
    port = str(cfg["port"])
    if svc.get("expose") != [port]:
        errors.append(f"{name}: exposes {svc.get('expose')}, config port {port}")
    check = " ".join(svc["healthcheck"]["test"])
    if re.findall(r"127\.0\.0\.1:(\d+)/", check) != [port, port]:
        errors.append(f"{name}: health check {check!r} is not on port {port}")
    grace = cfg.get("trollproxy", {}).get("shutdown_grace_seconds", 30)
    if seconds(svc["stop_grace_period"]) <= grace:
        errors.append(f"{name}: stop_grace_period {svc['stop_grace_period']} <= grace {grace} s")
    if not any(v.endswith(":/var/lib/trollproxy:rw") and not v.startswith("/") for v in svc["volumes"]):
        errors.append(f"{name}: no named volume on /var/lib/trollproxy")
    print(f"{name}: {os.path.relpath(host, src)}, port {port}, stop grace "
          f"{svc['stop_grace_period']} > {grace} s")
for name, svc in doc["services"].items():
    for v in svc.get("volumes", []):
        h = v.split(":")[0]
        if h.startswith("/") and not os.path.exists(h):
            errors.append(f"{name}: mounts {h}, which does not exist")
    if name not in proxies:
        print(f"{name}: image {svc['image']} (pulled from a registry: not run by this test)")
if errors:
    sys.exit("FAIL: " + "; ".join(errors))
PY
echo "PASS: docker-compose.prod.yml renders with OPENHANDS_UPSTREAM_KEYS, refuses without it"
