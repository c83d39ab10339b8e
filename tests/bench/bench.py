#!/usr/bin/env python3
"""Benchmarks trollproxy against the direct test upstream, nginx and Portkey's gateway, side by side.

Started by run.sh (which builds and raises limits). Every target gets its own test upstream;
each measurement point runs all targets back to back so that ratios hold on a noisy machine.
Writes raw results (results.json), a Markdown report (results.md) and plots into --out, and
with --docs also the report block in docs/benchmarks.md and the PNG under docs/.
The report ends with each proxy's idle, peak and after-run RSS and threads. --memory-only measures
just that around one burst of slow streams (memory.json, memory.md), optionally next to a --baseline
trollproxy binary.
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "tests", "bench")
CLK_TCK = os.sysconf("SC_CLK_TCK")
UPSTREAM_KEY = "bench-upstream-key"
MODEL = "bench-model"
PROMPT = "Write one short sentence about proxies."
BODY = json.dumps({"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}]})
# A coding agent's request late in a session: its context runs to hundreds of KB.
BIG_BODY_KB = 300
BIG_BODY = json.dumps({"model": MODEL, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Context line. " * (BIG_BODY_KB * 1024 // 14)}]})
STREAM_BODY = json.dumps({"model": MODEL, "max_tokens": 64, "stream": True,
                          "messages": [{"role": "user", "content": PROMPT}]})
CHUNKS, CHUNK_DELAY_MS = 64, 20
# trollproxy's worker_threads: room for 4,096 streams; threads start only as connections need them.
WORKERS = 4096
AFTER_RUN_S = 10  # RSS "after the run" is read this long after the last load (workers idle 5 s, then exit)

children = []  # every process we started, stopped in reverse order at exit


def log(msg):
    print(f"== {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, argv, run_dir, env=None, cwd=None, stdin=subprocess.DEVNULL):
    out = open(os.path.join(run_dir, f"{name}.out"), "w")
    err = open(os.path.join(run_dir, f"{name}.err"), "w")
    p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=stdin, env=env, cwd=cwd)
    p.bench_name = name
    children.append(p)
    with open(os.path.join(run_dir, "pids"), "a") as f:
        f.write(f"{p.pid}\n")
    return p


def wait_listening(p, run_dir, timeout=30):
    """Waits for 'listening on HOST:PORT' on the process's stdout; returns the port."""
    path = os.path.join(run_dir, f"{p.bench_name}.out")
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(r"listening on [0-9.]+:(\d+)", open(path).read())
        if m:
            return int(m.group(1))
        if p.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{p.bench_name} did not start: " + open(os.path.join(run_dir, f"{p.bench_name}.err")).read()[-2000:])


def wait_http(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def stop_all():
    for p in reversed(children):
        if p.poll() is None:
            try:
                p.terminate()
            except OSError:
                pass
    deadline = time.time() + 10
    for p in reversed(children):
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    children.clear()


# ---------- process accounting ----------

def descendants(pid):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def threads(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("Threads:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total


def listen_overflows():
    lines = [l.split() for l in open("/proc/net/netstat") if l.startswith("TcpExt:")]
    return int(lines[1][lines[0].index("ListenOverflows")])


class Usage:
    """Samples a target's RSS while a load runs; CPU from /proc/PID/stat before and after."""

    def __init__(self, pids):
        self.pids, self.peak, self.peak_threads, self.stop = pids, 0, 0, threading.Event()

    def __enter__(self):
        self.t0, self.c0, self.lo0 = time.time(), cpu_ticks(self.pids), listen_overflows()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pids))
            self.peak_threads = max(self.peak_threads, threads(self.pids))
            self.stop.wait(0.2)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        wall = time.time() - self.t0
        self.result = {"rss_peak_mib": round(max(self.peak, rss_kib(self.pids)) / 1024, 1),
                       "threads_peak": max(self.peak_threads, threads(self.pids)),
                       "cpu_pct": round(100.0 * (cpu_ticks(self.pids) - self.c0) / CLK_TCK / wall, 1),
                       "listen_overflows": listen_overflows() - self.lo0,
                       "load1": float(open("/proc/loadavg").read().split()[0])}


# ---------- targets ----------

class Target:
    def __init__(self, name, label, port, headers, proc=None):
        self.name, self.label, self.port, self.headers, self.proc = name, label, port, headers, proc
        self.pids = descendants(proc.pid) if proc else []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


def start_upstream(run_dir, name, delay_ms=CHUNK_DELAY_MS):
    p = start(f"upstream-{name}", [args.fake_upstream, "--listen", "127.0.0.1:0", "--chunks", str(CHUNKS),
                                    "--chunk-delay-ms", str(delay_ms), "--threads", "2400"], run_dir)
    return wait_listening(p, run_dir)


def nginx_target(run_dir, delay_ms=CHUNK_DELAY_MS):
    up = start_upstream(run_dir, "nginx", delay_ms)
    port = free_port()
    prefix = os.path.join(run_dir, "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""# nginx as a plain reverse proxy: no auth, no billing, streaming unbuffered.
worker_processes auto;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 10000; }}
http {{
  access_log {prefix}/logs/access.log;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  keepalive_requests 100000;
  upstream fake {{ server 127.0.0.1:{up}; keepalive 512; keepalive_requests 100000; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
""")
    p = start("nginx", ["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"], run_dir)
    wait_http(port)
    time.sleep(0.3)  # workers
    return Target("nginx", "nginx", port, [f"Authorization: Bearer {UPSTREAM_KEY}"], p)


def portkey_target(run_dir):
    up = start_upstream(run_dir, "portkey")
    port = free_port()
    pk = os.path.join(BENCH, "portkey")
    env = dict(os.environ, NODE_ENV="production")
    p = start("portkey", ["node", "--require", os.path.join(pk, "loopback.cjs"),
                          os.path.join(pk, "node_modules/@portkey-ai/gateway/build/start-server.js"),
                          f"--port={port}", "--headless"], run_dir, env=env, cwd=run_dir)
    wait_http(port)
    headers = [f"Authorization: Bearer {UPSTREAM_KEY}", "x-portkey-provider: openai",
               f"x-portkey-custom-host: http://127.0.0.1:{up}/v1"]
    return Target("portkey", "Portkey", port, headers, p)


# Budget slices with journal-first settlement: one user runs up to 256 requests
# at once in the bench, each holding about 0.14 USD (8192 output tokens), so a
# slice must be able to hold that many.
SLICES = {"settlement": "journal_first", "slice_max_usd": 100}


def trollproxy_target(run_dir, name, label, ledger, proxy=None, delay_ms=CHUNK_DELAY_MS, settings=None):
    up = start_upstream(run_dir, name, delay_ms)
    cfg = os.path.join(run_dir, f"{name}.json")
    with open(cfg, "w") as f:
        json.dump({
            "port": 8000,  # --listen below picks a free port
            "endpoints": [{"name": "bench", "base_url": f"http://127.0.0.1:{up}/v1/chat/completions"}],
            "models": [{"name": "Bench model", "id": MODEL, "type": "openhands", "upstream": "openhands",
                        "upstream_model_id": MODEL, "billing_upstream": "openhands",
                        "input_price_per_mtok": 3.0, "output_price_per_mtok": 15.0,
                        "cache_write_price_per_mtok": 3.75, "cache_hit_price_per_mtok": 0.3,
                        "billing_multiplier": 1.1}],
            "trollproxy": {"rate_limit_per_minute": 0, "worker_threads": WORKERS,
                           "journal_path": os.path.join(run_dir, f"{name}.journal"), **(settings or {})},
        }, f, indent=1)
    admin = [args.admin, "--ledger", ledger]
    env = dict(os.environ, TROLLPROXY_UPSTREAM_KEYS=UPSTREAM_KEY)
    def run(*a):
        r = subprocess.run(admin + list(a), capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"trollproxy-admin {' '.join(a)}: {r.stderr.strip()}")
        return r.stdout
    # CongoDB (the MongoDB-protocol test server) cannot store string _ids: an ObjectId-shaped name.
    user = "oid:" + "b" * 24 if ledger.startswith("mongodb") else "bench"
    run("user", "add", user)
    key = run("key", "add", user).strip().split()[-1]
    for pool in ("credits", "creditsNew", "refCredits"):
        run("credit", user, pool, "1000000")
    p = start(name, [proxy or args.proxy, "--config", cfg, "--ledger", ledger, "--listen", "127.0.0.1:0"], run_dir, env=env)
    port = wait_listening(p, run_dir)
    t = Target(name, label, port, [f"Authorization: Bearer {key}"], p)
    t.admin, t.env, t.user = admin, env, user
    return t


def mongo_target(run_dir):
    mongo = os.path.join(ROOT, "tests", "mongo")
    if not os.path.exists(os.path.join(mongo, "congo.mjs")):
        raise RuntimeError("tests/mongo/congo.mjs is missing")
    inst = os.path.join(mongo, "install.sh")
    if os.access(inst, os.X_OK):
        subprocess.run([inst], check=True, capture_output=True)
    # congo.mjs stops when its stdin closes: keep a pipe open until the end.
    p = start("congo", ["node", os.path.join(mongo, "congo.mjs")], run_dir, cwd=mongo, stdin=subprocess.PIPE)
    port = wait_listening(p, run_dir)
    return [trollproxy_target(run_dir, "trollproxy-mongo", "trollproxy (MongoDB ledger)",
                              f"mongodb://127.0.0.1:{port}/trollproxy_bench"),
            trollproxy_target(run_dir, "trollproxy-mongo-slices", "trollproxy (MongoDB ledger, slices, journal_first)",
                              f"mongodb://127.0.0.1:{port}/trollproxy_bench_slices",
                              settings=SLICES)]


def check_target(t):
    """One non-streaming and one streaming request: the target must answer 200 with the upstream's text."""
    for body in (BODY, STREAM_BODY):
        cmd = ["curl", "-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}", t.url, "-H", "Content-Type: application/json",
               "-d", body] + sum((["-H", h] for h in t.headers), [])
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        if not out.endswith("\n200") or ("[DONE]" not in out if "stream" in body else "choices" not in out):
            raise RuntimeError(f"{t.label} answered: {out[-400:]}")


# ---------- load tools ----------

WRK_LUA = """
wrk.method = "POST"
wrk.body = {body}
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def lua_string(s):
    return "[==[" + s + "]==]"


def wrk(t, conns, seconds, run_dir, big=False):
    script = os.path.join(run_dir, f"wrk-{t.name}{'-big' if big else ''}.lua")
    if not os.path.exists(script):
        hdrs = "\n".join(f"wrk.headers[ {lua_string(h.split(':', 1)[0])} ] = {lua_string(h.split(':', 1)[1].strip())}"
                         for h in t.headers + ["Content-Type: application/json"])
        open(script, "w").write(WRK_LUA.format(body=lua_string(BIG_BODY if big else BODY), headers=hdrs))
    threads_n = min(2, conns)
    out = subprocess.run(["wrk", f"-t{threads_n}", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", script, t.url],
                         capture_output=True, text=True).stdout
    m = re.search(r"^WRK (\{.*\})$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk gave no result for {t.label}: {out[-500:]}")
    r = json.loads(m.group(1))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {"rps": round(r["requests"] / (r["duration_us"] / 1e6), 1), "requests": r["requests"], "errors": errors,
            "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "mean_ms": round(r["mean_us"] / 1000, 3), "max_ms": r["max_us"] / 1000}


def hey(t, conns, seconds, run_dir):
    body = os.path.join(run_dir, "body.json")
    open(body, "w").write(BODY)
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(conns), "-m", "POST", "-T", "application/json", "-D", body]
    for h in t.headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [t.url], capture_output=True, text=True).stdout
    def num(pattern):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else None
    ok = sum(int(n) for n in re.findall(r"\[200\]\s+(\d+) responses", out))
    total = sum(int(n) for n in re.findall(r"\[\d+\]\s+(\d+) responses", out))
    errs = 0
    m = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)*)", out)
    if m:
        errs = sum(int(n) for n in re.findall(r"\[(\d+)\]", m.group(1)))
    p50, p99 = num(r"50%+ in ([0-9.]+) secs"), num(r"99%+ in ([0-9.]+) secs")
    return {"rps": num(r"Requests/sec:\s+([0-9.]+)"), "p50_ms": p50 * 1000 if p50 is not None else None,
            "p99_ms": p99 * 1000 if p99 is not None else None, "errors": errs + (total - ok)}


def sse(t, streams, rounds, run_dir):
    body = os.path.join(run_dir, "stream-body.json")
    open(body, "w").write(STREAM_BODY)
    cmd = [args.sse_load, "--target", f"127.0.0.1:{t.port}", "--streams", str(streams), "--rounds", str(rounds),
           "--ramp-ms", str(max(1, streams // 2)), "--body-file", body, "--expect-events", str(CHUNKS),
           "--timeout-s", "90"]
    for h in t.headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"sse-load failed: {out.stderr}")
    return json.loads(out.stdout)


# ---------- report ----------

def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:,}{unit}"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}×"


def table(title, rows, targets, note=""):
    """rows: (label, unit, {target name: value}); columns: each target, then trollproxy's ratios."""
    names = [t.name for t in targets]
    ours = [t for t in targets if t.name.startswith("trollproxy")]
    others = [(n, l) for n, l in (("nginx", "nginx"), ("portkey", "Portkey")) if n in names]
    head = ["", *[t.label for t in targets]]
    for o in ours:
        short = {"trollproxy": "trollproxy", "trollproxy-mongo": "tp-mongo",
                 "trollproxy-mongo-slices": "tp-mongo-slices"}.get(o.name, o.name[len("trollproxy-"):])
        head += [f"{short} / {label}" for _, label in others]
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, unit, vals in rows:
        cells = [label] + [fmt(vals.get(n), unit) for n in names]
        for o in ours:
            cells += [ratio(vals.get(o.name), vals.get(n)) for n, _ in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cpu_per_request(r):
    """The proxy's CPU time per answered request, in microseconds."""
    if not r or not r.get("rps") or r.get("cpu_pct") is None:
        return None
    return round(r["cpu_pct"] / 100.0 * 1e6 / r["rps"], 1)


def added(point, target, field, sub=None):
    """The target's figure minus the direct upstream's at the same point."""
    a, b = point.get(target), point.get("direct")
    if not a or not b:
        return None
    if sub:
        a, b = a.get(sub, {}), b.get(sub, {})
    if a.get(field) is None or b.get(field) is None:
        return None
    return round(a[field] - b[field], 3)


def report(R, targets):
    out = []
    proxies = [t for t in targets if t.name != "direct"]
    c1 = R["wrk"].get("1", {})
    rows = []
    for f, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        rows.append((f"latency {label}", " ms", {t.name: c1.get(t.name, {}).get(f) for t in targets}))
    for f, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        rows.append((f"added {label} (over direct)", " ms",
                     {t.name: None if t.name == "direct" else added(c1, t.name, f) for t in targets}))
    rows.append(("requests/s", "", {t.name: c1.get(t.name, {}).get("rps") for t in targets}))
    out.append(table("Non-streaming, concurrency 1 (wrk, %d s)" % args.wrk_seconds, rows, targets,
                     "Added latency = the target's percentile minus the direct upstream's."))
    rows = []
    for c in (32, 256):
        w = R["wrk"].get(str(c), {})
        rows.append((f"c={c} requests/s", "", {t.name: w.get(t.name, {}).get("rps") for t in targets}))
        rows.append((f"c={c} p99", " ms", {t.name: w.get(t.name, {}).get("p99_ms") for t in targets}))
        rows.append((f"c={c} errors", "", {t.name: w.get(t.name, {}).get("errors") for t in targets}))
        rows.append((f"c={c} proxy CPU", " %", {t.name: w.get(t.name, {}).get("cpu_pct") for t in proxies}))
        rows.append((f"c={c} CPU per request", " µs", {t.name: cpu_per_request(w.get(t.name, {})) for t in proxies}))
        rows.append((f"c={c} proxy RSS", " MiB", {t.name: w.get(t.name, {}).get("rss_peak_mib") for t in proxies}))
    out.append(table("Non-streaming throughput (wrk, %d s per point)" % args.wrk_seconds, rows, targets,
                     "CPU is percent of one core over the run (2 cores = 200 %); RSS is the peak of VmRSS "
                     "summed over the target's processes (nginx: master and workers)."))
    if R.get("big"):
        rows = []
        for c in sorted(R["big"], key=int):
            w = R["big"][c]
            rows.append((f"c={c} latency p50", " ms", {t.name: w.get(t.name, {}).get("p50_ms") for t in targets}))
            rows.append((f"c={c} added p50 (over direct)", " ms",
                         {t.name: None if t.name == "direct" else added(w, t.name, "p50_ms") for t in targets}))
            rows.append((f"c={c} p99", " ms", {t.name: w.get(t.name, {}).get("p99_ms") for t in targets}))
            rows.append((f"c={c} requests/s", "", {t.name: w.get(t.name, {}).get("rps") for t in targets}))
            rows.append((f"c={c} errors", "", {t.name: w.get(t.name, {}).get("errors") for t in targets}))
            rows.append((f"c={c} CPU per request", " µs", {t.name: cpu_per_request(w.get(t.name, {})) for t in proxies}))
        out.append(table(f"Non-streaming, {BIG_BODY_KB} KB request body (wrk, %d s per point)" % args.wrk_seconds,
                         rows, targets, "A coding agent's request late in a session: one user message of "
                         f"{BIG_BODY_KB} KB of text. nginx buffers bodies this large to a temporary file "
                         "(client_body_buffer_size)."))
    if R.get("hey"):
        rows = []
        for c in sorted(R["hey"], key=int):
            h = R["hey"][c]
            rows.append((f"hey c={c} requests/s", "", {t.name: h.get(t.name, {}).get("rps") for t in targets}))
            rows.append((f"hey c={c} p50", " ms", {t.name: h.get(t.name, {}).get("p50_ms") for t in targets}))
            rows.append((f"hey c={c} p99", " ms", {t.name: h.get(t.name, {}).get("p99_ms") for t in targets}))
            rows.append((f"hey c={c} errors", "", {t.name: h.get(t.name, {}).get("errors") for t in targets}))
        out.append(table("Cross-check with hey (%d s per point)" % args.hey_seconds, rows, targets))
    rows = []
    for n in sorted(R["sse"], key=int):
        s = R["sse"][n]
        g = lambda t, k, f: s.get(t, {}).get(k, {}).get(f)
        rows.append((f"N={n} errors", "", {t.name: s.get(t.name, {}).get("errors") for t in targets}))
        for f in ("p50", "p99"):
            rows.append((f"N={n} TTFB {f}", " ms", {t.name: g(t.name, "ttfb_ms", f) for t in targets}))
        for f in ("p50", "p99"):
            rows.append((f"N={n} added TTFB {f}", " ms",
                         {t.name: None if t.name == "direct" else added(s, t.name, f, "ttfb_ms") for t in targets}))
        for f in ("p50", "p99", "p999"):
            rows.append((f"N={n} gap {f}", " ms", {t.name: g(t.name, "gap_ms", f) for t in targets}))
        rows.append((f"N={n} added gap p99", " ms",
                     {t.name: None if t.name == "direct" else added(s, t.name, "p99", "gap_ms") for t in targets}))
        rows.append((f"N={n} stream span p99", " ms", {t.name: g(t.name, "span_ms", "p99") for t in targets}))
        rows.append((f"N={n} proxy CPU", " %", {t.name: s.get(t.name, {}).get("cpu_pct") for t in proxies}))
        rows.append((f"N={n} proxy RSS", " MiB", {t.name: s.get(t.name, {}).get("rss_peak_mib") for t in proxies}))
        rows.append((f"N={n} listen overflows (host)", "", {t.name: s.get(t.name, {}).get("listen_overflows") for t in targets}))
    out.append(table(f"Streaming: N concurrent SSE streams ({CHUNKS} chunks, {CHUNK_DELAY_MS} ms apart, "
                     f"{args.rounds} streams per slot)", rows, targets,
                     f"TTFB runs from connect (or from the request on a reused connection) to the first complete SSE "
                     f"event. A gap is the time between consecutive events (ideal: {CHUNK_DELAY_MS} ms; 0 when two "
                     f"arrive in one read); span = first to {CHUNKS}th event (ideal {CHUNKS * CHUNK_DELAY_MS} ms). "
                     f"Errors: streams that did not answer 200 with all {CHUNKS} chunks and [DONE]."))
    out.append(memory_table("Memory", R["idle"], targets,
                            f"Idle: after two requests at start. Peak: the highest sample (every 0.2 s) over every "
                            f"load above. After: {AFTER_RUN_S} s after the last load. trollproxy runs with "
                            f"worker_threads {WORKERS}."))
    return "\n".join(out)


def memory_table(title, M, targets, note=""):
    """M: {target name: {"start", "peak", "end" (MiB), "threads", "threads_peak", "threads_end"}}."""
    proxies = [t for t in targets if t.name != "direct"]
    g = lambda k: {t.name: M.get(t.name, {}).get(k) for t in proxies}
    rows = [("idle RSS at start", " MiB", g("start")), ("peak RSS", " MiB", g("peak")),
            (f"RSS {AFTER_RUN_S} s after the run", " MiB", g("end")),
            ("threads at start", "", g("threads")), ("peak threads", "", g("threads_peak")),
            (f"threads {AFTER_RUN_S} s after the run", "", g("threads_end"))]
    return table(title, rows, targets, note)


def note_peak(R, t, usage):
    """Raises the target's run-wide peak RSS and threads with one load point's."""
    m = R["idle"].setdefault(t.name, {})
    m["peak"] = max(m.get("peak") or 0, usage["rss_peak_mib"])
    m["threads_peak"] = max(m.get("threads_peak") or 0, usage["threads_peak"])


def plot(R, targets, out_png, run_dir):
    cs = sorted((int(c) for c in R["wrk"]))
    data = os.path.join(run_dir, "latency.dat")
    with open(data, "w") as f:
        for t in targets:
            f.write(f"# {t.label}\n")
            for c in cs:
                w = R["wrk"][str(c)].get(t.name)
                if w:
                    f.write(f"{c} {w['p50_ms']} {w['p99_ms']} {w['rps']}\n")
            f.write("\n\n")
    plots = lambda col: ", ".join(f"'{data}' index {i} using 1:{col} with linespoints lw 2 title '{t.label}'"
                                  for i, t in enumerate(targets))
    gp = f"""set terminal pngcairo size 1500,480 font 'sans,10'
set output '{out_png}'
set multiplot layout 1,3 title 'Non-streaming chat completions on 127.0.0.1 against the test upstream ({R["machine"]["date"][:10]}, {R["machine"]["nproc"]} cores)'
set logscale x 2
set xlabel 'concurrent connections (wrk)'
set grid
set key top left
set logscale y
set ylabel 'ms'
set title 'p50 latency'
plot {plots(2)}
set title 'p99 latency'
plot {plots(3)}
set ylabel 'requests/s'
set title 'throughput'
plot {plots(4)}
unset multiplot
"""
    r = subprocess.run(["gnuplot"], input=gp, text=True, capture_output=True)
    if r.returncode != 0:
        log("gnuplot failed: " + r.stderr)


def profile(t, run_dir):
    """perf (software cpu-clock sampling; no hardware counters needed) on trollproxy under load."""
    res = {}
    perf_ok = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o", os.path.join(run_dir, "perf-probe.data"),
                              "--", "true"], capture_output=True).returncode == 0
    if not perf_ok:
        return {"note": "perf record does not work here; no profile"}
    for name, load in (("wrk-c32", lambda: wrk(t, 32, args.wrk_seconds, run_dir)),
                       ("sse-1000", lambda: sse(t, 1000, 2, run_dir))):
        data = os.path.join(run_dir, f"perf-{name}.data")
        p = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(t.proc.pid),
                              "-o", data], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        load()
        p.send_signal(signal.SIGINT)
        p.wait()
        txt = []
        for sort in ("dso", "dso,sym"):
            r = subprocess.run(["perf", "report", "-i", data, "--stdio",
                                "--sort", sort, "--percent-limit", "0.7"], capture_output=True, text=True)
            txt.append("\n".join(l for l in r.stdout.splitlines() if l and not l.startswith("#")))
        out = os.path.join(args.out, f"profile-{name}.txt")
        open(out, "w").write(f"# perf cpu-clock samples of trollproxy under {name}; by DSO, then by symbol\n\n" +
                             "\n\n".join(txt) + "\n")
        res[name] = out
        os.remove(data)
    return res


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    def ver(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    commit = ver(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    try:
        pk = json.load(open(os.path.join(BENCH, "portkey/node_modules/@portkey-ai/gateway/package.json")))["version"]
    except OSError:
        pk = "not installed"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(), "cpu": cpu, "kernel": os.uname().release,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "load_at_start": open("/proc/loadavg").read().split()[:3],
            "trollproxy": commit, "nginx": ver(["nginx", "-v"]), "node": ver(["node", "--version"]),
            "portkey_gateway": pk, "wrk": ver(["wrk", "--version"]).split(" [")[0]}


def main():
    global args
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sse-load", required=True)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--hey-seconds", type=int, default=5)
    ap.add_argument("--concurrency", default="1,8,32,64,128,256")
    ap.add_argument("--streams", default="100,1000,2000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-mongo", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--docs", action="store_true", help="write the report into docs/benchmarks.md and the plot into docs/")
    ap.add_argument("--from-json", action="store_true", help="no measuring: report again from --out's results.json")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the memory comparison: idle, one burst of --memory-streams slow streams, "
                         f"{AFTER_RUN_S} s after (nginx and trollproxy, and --baseline if given)")
    ap.add_argument("--baseline", help="another trollproxy binary (an earlier commit's) to measure next to this one")
    ap.add_argument("--baseline-slices", action="store_true",
                    help="run --baseline with the slices settings (budget slices + journal_first), not the defaults")
    ap.add_argument("--memory-streams", type=int, default=2000)
    ap.add_argument("--memory-delay-ms", type=int, default=100, help="the test upstream's chunk delay in the burst")
    args = ap.parse_args()
    args.fake_upstream = os.path.join(args.build, "tests/fake_upstream/trollproxy-fake-upstream")
    args.proxy = os.path.join(args.build, "server/trollproxy")
    args.admin = os.path.join(args.build, "server/trollproxy-admin")
    args.out = os.path.abspath(args.out)
    run_dir = os.path.join(args.out, "run")
    if args.from_json:
        os.makedirs(run_dir, exist_ok=True)
        R = json.load(open(os.path.join(args.out, "results.json")))
        labels = R.get("labels") or {"direct": "direct", "nginx": "nginx", "portkey": "Portkey", "trollproxy": "trollproxy",
                                     "trollproxy-mongo": "trollproxy (MongoDB ledger)",
                                     "trollproxy-jf": "trollproxy (journal_first)", "trollproxy-baseline": "trollproxy (baseline)",
                                     "trollproxy-mongo-jf": "trollproxy (MongoDB ledger, journal_first)"}
        names = list(R["wrk"][next(iter(R["wrk"]))])
        write_report(R, [Target(n, labels[n], 0, []) for n in names], run_dir)
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    try:
        run_memory(run_dir) if args.memory_only else run(run_dir)
    finally:
        stop_all()


def run(run_dir):
    started = time.time()
    R = {"machine": machine(), "notes": [], "wrk": {}, "hey": {}, "sse": {}, "idle": {}}
    log(f"machine: {R['machine']}")
    targets = [Target("direct", "direct", start_upstream(run_dir, "direct"), [f"Authorization: Bearer {UPSTREAM_KEY}"])]
    targets.append(nginx_target(run_dir))
    targets.append(portkey_target(run_dir))
    db = os.path.join(run_dir, "ledger.db")
    targets.append(trollproxy_target(run_dir, "trollproxy", "trollproxy", f"sqlite:{db}"))
    # The same binary with budget slices and journal-first settlement, on its own ledger file.
    targets.append(trollproxy_target(run_dir, "trollproxy-slices", "trollproxy (slices, journal_first)",
                                     f"sqlite:{os.path.join(run_dir, 'ledger-slices.db')}",
                                     settings=SLICES))
    if args.baseline:
        targets.append(trollproxy_target(run_dir, "trollproxy-baseline",
                                         "trollproxy (baseline" + (", slices, journal_first)" if args.baseline_slices else ")"),
                                         f"sqlite:{os.path.join(run_dir, 'ledger-baseline.db')}",
                                         proxy=args.baseline, settings=SLICES if args.baseline_slices else None))
    if not args.no_mongo:
        before = len(children)
        try:
            for t in mongo_target(run_dir):
                check_target(t)
                targets.append(t)
        except Exception as e:  # the row is optional: say why it is missing
            R["notes"].append(f"MongoDB row left out: {e}")
            log(R["notes"][-1])
            for p in children[before:]:
                p.terminate()
                p.wait()
            del children[before:]
    for t in targets:
        check_target(t)
        if t.proc:
            t.pids = descendants(t.proc.pid)
            R["idle"][t.name] = {"start": round(rss_kib(t.pids) / 1024, 1), "threads": threads(t.pids)}
    log("targets: " + ", ".join(f"{t.label} on {t.port}" for t in targets))
    for t in targets:  # warm up (Portkey's JIT, connection pools)
        wrk(t, 8, 2, run_dir)

    # Before the concurrency points: after c=256 the MongoDB targets' settlement
    # backlog keeps CongoDB busy on a core for minutes.
    def wrk_point(section, c, big=False):
        R[section][str(c)] = {}
        for t in targets:
            with Usage(t.pids) as u:
                r = wrk(t, c, args.wrk_seconds, run_dir, big=big)
            r.update(u.result)
            note_peak(R, t, u.result)
            R[section][str(c)][t.name] = r
            log(f"wrk {f'{BIG_BODY_KB} KB ' if big else ''}c={c} {t.label}: {r}")

    R["big"] = {}
    for c in (1, 8):
        wrk_point("big", c, big=True)
    for c in [int(x) for x in args.concurrency.split(",")]:
        wrk_point("wrk", c)
    for c in (1, 32):
        R["hey"][str(c)] = {}
        for t in targets:
            R["hey"][str(c)][t.name] = r = hey(t, c, args.hey_seconds, run_dir)
            log(f"hey c={c} {t.label}: {r}")
    for n in [int(x) for x in args.streams.split(",")]:
        R["sse"][str(n)] = {}
        for t in targets:
            with Usage(t.pids) as u:
                r = sse(t, n, args.rounds, run_dir)
            r.update(u.result)
            note_peak(R, t, u.result)
            R["sse"][str(n)][t.name] = r
            log(f"sse N={n} {t.label}: errors {r['errors']} {r['error_kinds']} ttfb {r['ttfb_ms']} gap {r['gap_ms']} "
                f"cpu {r['cpu_pct']} rss {r['rss_peak_mib']} overflows {r['listen_overflows']}")
            time.sleep(1)
    time.sleep(AFTER_RUN_S)  # past the servers' keep-alive timeouts and trollproxy's worker idle time
    for t in targets:
        if t.proc:
            R["idle"][t.name]["end"] = round(rss_kib(t.pids) / 1024, 1)
            R["idle"][t.name]["threads_end"] = threads(t.pids)
    troll = next(t for t in targets if t.name == "trollproxy")
    out = subprocess.run(troll.admin + ["balance", troll.user], capture_output=True, text=True, env=troll.env)
    R["trollproxy_balance_after"] = out.stdout.strip()
    if not args.no_profile:
        log("profiling trollproxy")
        R["profile"] = profile(troll, run_dir)
    R["machine"]["load_at_end"] = open("/proc/loadavg").read().split()[:3]
    R["seconds"] = round(time.time() - started)
    R["labels"] = {t.name: t.label for t in targets}
    json.dump(R, open(os.path.join(args.out, "results.json"), "w"), indent=1)
    write_report(R, targets, run_dir)
    # Large logs are of no further use.
    for f in os.listdir(run_dir):
        p = os.path.join(run_dir, f)
        if os.path.isfile(p) and os.path.getsize(p) > 20 << 20:
            os.remove(p)


def run_memory(run_dir):
    """Idle, peak and after-burst RSS and threads of nginx and trollproxy (and a baseline binary), one at a time."""
    delay = args.memory_delay_ms
    targets = [nginx_target(run_dir, delay),
               trollproxy_target(run_dir, "trollproxy", "trollproxy", f"sqlite:{run_dir}/ledger.db", delay_ms=delay)]
    if args.baseline:
        targets.append(trollproxy_target(run_dir, "trollproxy-baseline", "trollproxy (baseline)",
                                         f"sqlite:{run_dir}/ledger-baseline.db", proxy=args.baseline, delay_ms=delay))
    M, bursts = {}, {}
    for t in targets:
        check_target(t)
        t.pids = descendants(t.proc.pid)
    time.sleep(AFTER_RUN_S)  # the checks' workers and connections gone
    for t in targets:
        M[t.name] = {"start": round(rss_kib(t.pids) / 1024, 1), "threads": threads(t.pids)}
    for t in targets:
        with Usage(t.pids) as u:
            r = sse(t, args.memory_streams, 1, run_dir)
        M[t.name].update(peak=u.result["rss_peak_mib"], threads_peak=u.result["threads_peak"])
        bursts[t.name] = {"errors": r["errors"], "error_kinds": r["error_kinds"], "ttfb_ms": r["ttfb_ms"],
                          "span_ms": r["span_ms"]}
        log(f"burst {t.label}: {M[t.name]} errors {r['errors']} {r['error_kinds']}")
        time.sleep(AFTER_RUN_S)
        M[t.name].update(end=round(rss_kib(t.pids) / 1024, 1), threads_end=threads(t.pids))
        log(f"{AFTER_RUN_S} s after {t.label}: {M[t.name]}")
    R = {"machine": machine(), "memory": M, "bursts": bursts, "labels": {t.name: t.label for t in targets}}
    json.dump(R, open(os.path.join(args.out, "memory.json"), "w"), indent=1)
    m = R["machine"]
    md = (f"Run {m['date']} on {m['nproc']} × {m['cpu']}, Linux {m['kernel']}; trollproxy {m['trollproxy']}, "
          f"{m['nginx']}.\n\n")
    md += memory_table(f"Memory: one burst of {args.memory_streams:,} concurrent streams "
                       f"({CHUNKS} chunks, {delay} ms apart)", M, targets,
                       f"Each target alone: idle {AFTER_RUN_S} s after two requests, the burst, then {AFTER_RUN_S} s "
                       f"of quiet. trollproxy: worker_threads {WORKERS}. Streams not served in full: " +
                       ", ".join(f"{t.label} {bursts[t.name]['errors']}" for t in targets) + ".")
    open(os.path.join(args.out, "memory.md"), "w").write(md)
    print(md)


def write_report(R, targets, run_dir):
    png = os.path.join(args.out, "benchmarks-latency.png")
    plot(R, targets, png, run_dir)
    m = R["machine"]
    md = (f"Run {m['date']} on {m['nproc']} × {m['cpu']}, {m['memory_gib']} GiB, Linux {m['kernel']}; "
          f"load average {' '.join(m['load_at_start'])} at start, {' '.join(m['load_at_end'])} at end; "
          f"trollproxy {m['trollproxy']}, {m['nginx']}, node {m['node']}, Portkey gateway {m['portkey_gateway']}, "
          f"{m['wrk']}; {R['seconds']} s.\n\n")
    for n in R["notes"]:
        md += f"Note: {n}\n\n"
    md += report(R, targets)
    if R.get("profile"):
        md += "\nProfiles: " + ", ".join(f"`{os.path.relpath(v, ROOT)}`" for v in R["profile"].values() if v.endswith('.txt')) + "\n"
    open(os.path.join(args.out, "results.md"), "w").write(md)
    print(md)
    if args.docs:
        shutil.copy(png, os.path.join(ROOT, "docs", "benchmarks-latency.png"))
        doc = os.path.join(ROOT, "docs", "benchmarks.md")
        text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n\n<!-- results:begin -->\n<!-- results:end -->\n"
        begin, end = "<!-- results:begin -->", "<!-- results:end -->"
        i, j = text.index(begin) + len(begin), text.index(end)
        open(doc, "w").write(text[:i] + "\n" + md + "\n" + text[j:])
        log(f"wrote {os.path.relpath(doc, ROOT)} and docs/benchmarks-latency.png")


if __name__ == "__main__":
    main()
