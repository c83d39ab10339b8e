// The real processes for the SDK tests: test upstream, proxy on a SQLite ledger, and trollproxy-admin.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

// Starts a program that prints "listening on HOST:PORT"; resolves to { child, url, log }.
function startListening(exe, args, env, logPath) {
  return new Promise((resolve, reject) => {
    const log = fs.openSync(logPath, 'a');
    const child = spawn(exe, args, { env, stdio: ['ignore', 'pipe', log] });
    fs.closeSync(log);
    children.add(child);
    child.on('exit', () => children.delete(child));
    let out = '';
    const timer = setTimeout(() => fail(new Error(`${exe} did not listen within 10 s: ${out}`)), 10_000);
    function fail(err) {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(err);
    }
    child.on('error', fail);
    child.on('exit', (code) => fail(new Error(`${exe} exited (${code}) before listening: ` +
      fs.readFileSync(logPath, 'utf8').slice(-2000))));
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on ([0-9.]+):(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        child.on('exit', () => children.delete(child));
        child.stdout.resume();
        resolve({ child, url: `http://${m[1]}:${m[2]}`, log: logPath });
      }
    });
  });
}

function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.on('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/// Parses "1.234000000" (USD, up to 9 decimals) into nano-USD as a BigInt.
export function nanos(usd) {
  const m = /^(-?)(\d+)(?:\.(\d{1,9}))?$/.exec(String(usd).trim());
  if (!m) throw new Error(`not a USD amount: ${usd}`);
  const n = BigInt(m[2]) * 1_000_000_000n + BigInt((m[3] ?? '').padEnd(9, '0'));
  return m[1] ? -n : n;
}

export class Stack {
  constructor(buildRoot, models) {
    this.buildRoot = buildRoot;
    this.models = models;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trollproxy-sdk-'));
    this.ledger = `sqlite:${path.join(this.dir, 'l.db')}`;
    this.configPath = path.join(this.dir, 'config.json');
  }

  exe(rel) {
    return path.join(this.buildRoot, rel);
  }

  async start() {
    const env = { ...process.env, TROLLPROXY_UPSTREAM_KEYS: 'sdk-upstream-key' };
    this.upstream = await startListening(this.exe('tests/fake_upstream/trollproxy-fake-upstream'),
      ['--listen', '127.0.0.1:0', '--keys', 'sdk-upstream-key', '--threads', '16'], env,
      path.join(this.dir, 'upstream.log'));
    const config = {
      port: 8080, // unused: --listen 127.0.0.1:0 picks the port
      endpoints: [
        { name: 'fake-openai', base_url: `${this.upstream.url}/v1/chat/completions` },
        { name: 'fake-anthropic', base_url: `${this.upstream.url}/v1/messages` },
      ],
      models: this.models,
      system_prompt: '',
      user_agent: 'trollproxy-sdk-test/1.0',
      trollproxy: {
        rate_limit_per_minute: 100000,
        forward_headers: ['x-fake-*'],
        ledger_failure_mode: 'fail_closed',
        journal_path: path.join(this.dir, 'journal'),
      },
    };
    fs.writeFileSync(this.configPath, JSON.stringify(config, null, 2));
    this.proxy = await startListening(this.exe('server/trollproxy'),
      ['--config', this.configPath, '--ledger', this.ledger, '--listen', '127.0.0.1:0'], env,
      path.join(this.dir, 'proxy.log'));
    this.url = this.proxy.url;
  }

  async stop() {
    await Promise.all([stop(this.proxy?.child), stop(this.upstream?.child)]);
  }

  /// Removes the temporary directory (keep it when a test failed, to read the logs).
  cleanUp() {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  admin(...args) {
    return execFileSync(this.exe('server/trollproxy-admin'), ['--ledger', this.ledger, ...args],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  }

  /// A new user with a key and the given pool amounts ({ creditsNew: '5', ... }); returns the key.
  addUser(name, pools) {
    this.admin('user', 'add', name);
    const key = this.admin('key', 'add', name);
    for (const [pool, amount] of Object.entries(pools)) this.admin('credit', name, pool, amount);
    return key;
  }

  /// The user's balance fields, money as nano-USD BigInts and tokens as BigInts.
  balance(name) {
    const out = {};
    for (const line of this.admin('balance', name).split('\n')) {
      const [k, v] = line.split(' ');
      out[k] = v.includes('.') ? nanos(v) : BigInt(v);
    }
    return out;
  }

  /// The user's ledger entries, newest first, as objects.
  usage(name, last = 1) {
    const text = this.admin('usage', name, '--last', String(last));
    return text ? text.split('\n').map((line) => {
      const [time, requestId, model, ...rest] = line.split(' ');
      const e = { time, requestId, model, estimated: false };
      for (const f of rest) {
        const eq = f.indexOf('=');
        if (eq < 0) e[f] = true;
        else e[f.slice(0, eq)] = f.slice(eq + 1);
      }
      return e;
    }) : [];
  }

  /// The proxy's price for these token counts (USD with 9 decimals), as nano-USD.
  quote(model, { input, output, cacheWrite = 0, cacheRead = 0 }) {
    return nanos(execFileSync(this.exe('server/trollproxy-admin'),
      ['quote', '--config', this.configPath, '--model', model, '--input', String(input),
        '--output', String(output), '--cache-write', String(cacheWrite), '--cache-read', String(cacheRead)],
      { encoding: 'utf8' }));
  }

  async upstreamStats() {
    return (await fetch(`${this.upstream.url}/_stats`)).json();
  }
}
