#!/usr/bin/env python3
"""The stack's floor, side by side (tests/bench/run.sh --floor): what trollproxy's fixed
parts cost per request before any billing. Targets, each on its own test upstream:
  direct       the test upstream itself
  nginx        a plain reverse proxy (bench.py's configuration)
  floor        floor_proxy.cpp: cpp-httplib + libcurl forwarding, nothing else
  unbilled     trollproxy's count_tokens route: key check (remembered), rate limit,
               upstream call, access log line; no hold, no charge
  billed       trollproxy's chat completions with budget slices and journal_first
wrk at c=1 and c=32, ROUNDS alternating rounds; prints the medians as a markdown table."""
import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


class Routed(bench.Target):
    """A target's process on another path."""

    def __init__(self, name, label, port, headers, proc, path):
        super().__init__(name, label, port, headers, proc)
        self.path = path

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.path}"


def floor_target(run_dir, floor_bin, threads):
    up = bench.start_upstream(run_dir, "floor")
    p = bench.start("floor", [floor_bin, f"http://127.0.0.1:{up}", bench.UPSTREAM_KEY, str(threads)], run_dir)
    port = bench.wait_listening(p, run_dir)
    return Routed("floor", "floor (cpp-httplib + libcurl)", port, [], p, "/v1/chat/completions")


def trollproxy_targets(run_dir):
    # bench.py's configuration plus an Anthropic-format endpoint, which count_tokens needs.
    dump = json.dump

    def with_anthropic(obj, f, **kw):
        if isinstance(obj, dict) and "endpoints" in obj:
            base = obj["endpoints"][0]["base_url"].rsplit("/v1/", 1)[0]
            obj["endpoints"].append({"name": "bench-anthropic", "base_url": base + "/v1/messages"})
        return dump(obj, f, **kw)

    json.dump = with_anthropic
    try:
        t = bench.trollproxy_target(run_dir, "trollproxy", "trollproxy", f"sqlite:{run_dir}/ledger.db",
                                    settings=bench.SLICES)
    finally:
        json.dump = dump
    return [Routed("unbilled", "trollproxy, unbilled route (count_tokens)", t.port, t.headers, t.proc,
                   "/v1/messages/count_tokens"),
            Routed("billed", "trollproxy, billed (slices, journal_first)", t.port, t.headers, t.proc,
                   "/v1/chat/completions")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--floor-proxy", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    a = ap.parse_args()
    bench.args = a
    a.fake_upstream = os.path.join(a.build, "tests/fake_upstream/trollproxy-fake-upstream")
    a.proxy = os.path.join(a.build, "server/trollproxy")
    a.admin = os.path.join(a.build, "server/trollproxy-admin")
    run_dir = os.path.join(os.path.abspath(a.out), "floor-run")
    subprocess.run(["rm", "-rf", run_dir])
    os.makedirs(run_dir)
    try:
        direct = bench.Target("direct", "direct", bench.start_upstream(run_dir, "direct"),
                              [f"Authorization: Bearer {bench.UPSTREAM_KEY}"])
        targets = [direct, bench.nginx_target(run_dir), floor_target(run_dir, a.floor_proxy, int(os.environ.get("FLOOR_THREADS", "64")))]
        targets += trollproxy_targets(run_dir)
        for t in targets:
            if t.name in ("direct", "nginx", "billed"):  # the others answer chat requests only whole
                bench.check_target(t)
            if t.proc:
                t.pids = bench.descendants(t.proc.pid)
            bench.wrk(t, 8, 2, run_dir)
        R = {}
        for rnd in range(a.rounds):
            for c in (1, 32):
                for t in targets:
                    with bench.Usage(t.pids) as u:
                        r = bench.wrk(t, c, a.seconds, run_dir)
                    r.update(u.result)
                    r["cpu_us"] = bench.cpu_per_request(r)
                    R.setdefault(c, {}).setdefault(t.name, []).append(r)
                    bench.log(f"round {rnd} c={c} {t.label}: {r['rps']} req/s, p50 {r['p50_ms']} ms, "
                              f"CPU {r['cpu_us']} us/request, errors {r['errors']}")
        report(targets, R)
    finally:
        bench.stop_all()


def report(targets, R):
    def med(c, name, field):
        vals = [r[field] for r in R[c][name] if r.get(field) is not None]
        return statistics.median(vals) if vals else None

    print(f"\nMedians of {len(R[1]['direct'])} alternating rounds.\n")
    print("| | " + " | ".join(t.label for t in targets) + " |")
    print("|---" * (len(targets) + 1) + "|")
    rows = [("c=1 p50 (ms)", 1, "p50_ms", "{:.3f}"), ("c=1 requests/s", 1, "rps", "{:,.0f}"),
            ("c=1 CPU per request (µs)", 1, "cpu_us", "{:.0f}"),
            ("c=32 requests/s", 32, "rps", "{:,.0f}"), ("c=32 CPU per request (µs)", 32, "cpu_us", "{:.0f}")]
    for label, c, field, fmt in rows:
        cells = []
        for t in targets:
            v = med(c, t.name, field)
            cells.append("n/a" if v is None else fmt.format(v))
        print(f"| {label} | " + " | ".join(cells) + " |")
    d = med(1, "direct", "p50_ms")
    print("| c=1 added p50 (µs) | " + " | ".join(
        "n/a" if t.name == "direct" else f"{(med(1, t.name, 'p50_ms') - d) * 1000:.0f}" for t in targets) + " |")
    n = med(32, "nginx", "rps")
    print("| c=32 / nginx | " + " | ".join(f"{med(32, t.name, 'rps') / n:.2f}×" for t in targets) + " |")


if __name__ == "__main__":
    main()
