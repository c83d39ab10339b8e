// Coding agents through the proxy: Claude Code (/v1/messages), the Codex CLI (/v1/responses) and
// the OpenAI SDK's Responses API get their answers, and every request they make is charged exactly.
//   node agents_test.mjs claude|codex|sdk [BUILD_ROOT]
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Stack, nanos, priceOf } from './stack.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const which = process.argv[2];
const buildRoot = process.env.TROLLPROXY_BUILD_ROOT ?? process.argv[3];
if (!['claude', 'codex', 'sdk'].includes(which) || !buildRoot) {
  console.error('usage: agents_test.mjs claude|codex|sdk [BUILD_ROOT] (or set TROLLPROXY_BUILD_ROOT)');
  process.exit(1);
}

// A test whose package did not install is skipped (77), saying why.
function skip(why) {
  console.log(`${why}: skipped (run ${path.join(here, 'install.sh')})`);
  process.exit(77);
}
const bin = (name) => path.join(here, 'node_modules', '.bin', name);
function needProgram(name) {
  try {
    execFileSync(bin(name), ['--version'], { stdio: 'pipe', timeout: 30_000 });
  } catch (e) {
    skip(`${name} is not installed or does not run (${e.message.split('\n')[0]})`);
  }
}
let OpenAI;
if (which === 'claude') needProgram('claude');
if (which === 'codex') needProgram('codex');
if (which === 'sdk') {
  try {
    OpenAI = (await import('openai')).default;
  } catch (e) {
    skip(`the openai SDK is not installed (${e.message})`);
  }
}

// One model per pool for each API. Prices as in configs/config-openhands-prod.json.
const SONNET = {
  name: 'Claude Sonnet 4.5', id: 'claude-sonnet-4-5-20250929', id_aliases: ['claude-sonnet-4-5'],
  type: 'openhands', upstream: 'openhands', upstream_model_id: 'claude-sonnet-4-5-20250929',
  billing_upstream: 'openhands', input_price_per_mtok: 3.0, output_price_per_mtok: 15.0,
  cache_write_price_per_mtok: 3.75, cache_hit_price_per_mtok: 0.3, billing_multiplier: 1.1,
};
const HAIKU = {
  name: 'Claude Haiku 4.5', id: 'claude-haiku-4-5-20251001', id_aliases: ['claude-haiku-4-5'],
  type: 'ohmygpt', upstream: 'openhands', upstream_model_id: 'claude-haiku-4-5-20251001',
  billing_upstream: 'ohmygpt', input_price_per_mtok: 1.0, output_price_per_mtok: 5.0,
  cache_write_price_per_mtok: 1.25, cache_hit_price_per_mtok: 0.1, billing_multiplier: 1.1,
};
const CODEX_MAX = {
  name: 'GPT-5.1 Codex Max', id: 'gpt-5.1-codex-max', type: 'openhands', upstream: 'openhands',
  upstream_model_id: 'gpt-5.1-codex-max', billing_upstream: 'openhands', input_price_per_mtok: 1.25,
  output_price_per_mtok: 10.0, cache_write_price_per_mtok: 1.56, cache_hit_price_per_mtok: 0.13, billing_multiplier: 1.1,
};
const GPT = {
  name: 'GPT 5.1', id: 'gpt-5.1', type: 'ohmygpt', upstream: 'openhands', upstream_model_id: 'gpt-5.1',
  billing_upstream: 'ohmygpt', input_price_per_mtok: 1.25, output_price_per_mtok: 10.0,
  cache_hit_price_per_mtok: 0.13, billing_multiplier: 1.1,
};
const MODELS = [SONNET, HAIKU, CODEX_MAX, GPT];
const TEXT = 'Hello word1 word2 word3 word4 word5 word6 word7';

const stack = new Stack(buildRoot, MODELS);
let userKey, otherKey;
let failed = false;

before(async () => {
  failed = true; // until the stack is up: keep its logs
  await stack.start();
  userKey = stack.addUser('alice', { creditsNew: '50', credits: '20', refCredits: '20' });
  otherKey = stack.addUser('bob', { creditsNew: '1' });
  failed = false;
});

after(async () => {
  await stack.stop();
  if (failed) console.log(`logs kept in ${stack.dir}`);
  else stack.cleanUp();
});

// Marks the run failed (logs kept) when `fn` throws.
function keepLogsOnFailure(fn) {
  return async (t) => {
    try {
      await fn(t);
    } catch (e) {
      failed = true;
      throw e;
    }
  };
}

const BILLED_PATHS = new Set(['/v1/messages', '/v1/chat/completions', '/v1/responses']);
const lowerKeys = (h) => Object.fromEntries(Object.entries(h).map(([k, v]) => [k.toLowerCase(), v]));

function modelByUpstreamId(id) {
  const m = MODELS.find((x) => x.upstream_model_id === id);
  assert.ok(m, `the upstream was asked for a configured model (got ${id})`);
  return m;
}

// The usage the upstream reported for one request it answered (x-fake-usage:
// input,output,cacheWrite,cacheRead; the Responses API reports no cache writes).
function reportedTokens(req) {
  const h = lowerKeys(req.headers)['x-fake-usage'];
  assert.ok(h, `the proxy forwarded x-fake-usage to ${req.target ?? req.path}`);
  const [input, output, cacheWrite, cacheRead] = h.split(',').map(Number);
  return { input, output, cacheWrite: req.path === '/v1/responses' ? 0 : cacheWrite, cacheRead };
}

// What an agent sent, for the log: headers (no secrets) and the shape of the body.
function describe(req) {
  const headers = Object.fromEntries(Object.entries(req.headers)
    .filter(([k]) => !['authorization', 'x-api-key', 'host', 'content-length'].includes(k.toLowerCase())));
  let body;
  try {
    body = JSON.parse(req.body);
  } catch {
    body = req.body ? { unparsed: req.body.length } : {};
  }
  const shape = {};
  for (const [k, v] of Object.entries(body)) {
    if (v === null || typeof v !== 'object') shape[k] = typeof v === 'string' && v.length > 200 ? `<${v.length} chars>` : v;
    else if (Array.isArray(v)) shape[k] = `[${v.length}] ${JSON.stringify(v).length} chars`;
    else shape[k] = JSON.stringify(v).length > 300 ? `{${Object.keys(v).join(',')}}` : v;
  }
  const turns = (list) => list?.map((m) => `${m.type ?? 'message'}:${m.role ?? ''}`).join(' ');
  return {
    method: req.method, target: req.target ?? req.path, headers, body: shape,
    messages: turns(body.messages), input: Array.isArray(body.input) ? turns(body.input) : undefined,
    system: Array.isArray(body.system) ? body.system.map((b) => `${b.type}:${b.text?.slice(0, 60)}`) : undefined,
    tools: Array.isArray(body.tools) ? body.tools.map((t) => `${t.type ?? ''}:${t.name ?? t.function?.name ?? ''}`).join(' ')
      : undefined,
  };
}

function logRequests(label, reqs) {
  console.log(`# ${label}: ${reqs.length} request(s) reached the upstream`);
  for (const r of reqs) console.log(`# ${JSON.stringify(describe(r))}`);
}

/// Runs `run`, then checks that each request the upstream answered was charged exactly the price
/// of the usage it reported, from its model's pool, and that nothing else was charged.
async function expectExactCharges(label, run) {
  await stack.resetUpstream();
  const before = stack.balance('alice');
  const seen = new Set(stack.usage('alice', 1000).map((e) => e.requestId));
  const result = await run();
  const reqs = await stack.upstreamRequests();
  logRequests(label, reqs);
  const billed = reqs.filter((r) => r.method === 'POST' && BILLED_PATHS.has(r.path));
  assert.ok(billed.length > 0, 'a billed request reached the upstream' +
    (result?.stderr !== undefined ? ` (exit ${result.code}): ${result.stderr.slice(-1500)}` : ''));
  const expected = [];
  const byPool = { openhands: 0n, ohmygpt: 0n };
  for (const r of billed) {
    const model = modelByUpstreamId(JSON.parse(r.body).model);
    const t = reportedTokens(r);
    const price = priceOf(model, t);
    assert.equal(stack.quote(model.id, t), price, 'trollproxy-admin quote agrees with the price computed here');
    byPool[model.billing_upstream] += price;
    expected.push([model.id, t.input, t.output, t.cacheWrite, t.cacheRead, price].join(' '));
  }
  const entries = stack.usage('alice', 1000).filter((e) => !seen.has(e.requestId));
  for (const e of entries) {
    assert.equal(e.status, '200', `ledger entry ${e.requestId} status`);
    assert.equal(e.estimated, false, `ledger entry ${e.requestId} is not an estimate`);
  }
  const charged = entries.map((e) =>
    [e.model, e.input, e.output, e.cache_write, e.cache_read, nanos(e.cost)].join(' '));
  assert.deepEqual(charged.sort(), expected.sort(), 'one ledger entry per answered request, at its exact price');
  const after = stack.balance('alice');
  assert.equal(before.creditsNew - after.creditsNew, byPool.openhands, 'creditsNew paid the openhands models');
  assert.equal((before.credits + before.refCredits) - (after.credits + after.refCredits), byPool.ohmygpt,
    'credits and refCredits paid the ohmygpt models');
  console.log(`# ${label}: ${billed.length} billed request(s), charged ${byPool.openhands} + ${byPool.ohmygpt} nano-USD`);
  return { result, reqs };
}

// Runs a program to its end (killed after `timeoutMs`); resolves to { code, stdout, stderr }.
function runProgram(exe, args, { env, cwd, timeoutMs = 120_000 }) {
  return new Promise((resolve, reject) => {
    const child = spawn(exe, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: signal ? `killed (${signal})` : code, stdout, stderr });
    });
  });
}

function tempDir(name) {
  const d = path.join(stack.dir, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

// The environment an agent gets: no variables of this machine's own agents or providers.
function agentEnv(home, extra) {
  return { PATH: process.env.PATH, HOME: home, LANG: 'C.UTF-8', TERM: 'dumb', ...extra };
}

if (which === 'claude') {
  // Claude Code in print mode on each pool. x-fake-tool-call: 0 makes the upstream answer text
  // although the request carries tools, so the agent finishes in one turn.
  for (const [model, usage] of [[SONNET, '1234,567,89,321'], [HAIKU, '2345,678,91,432']]) {
    test(`Claude Code: claude -p on ${model.id_aliases[0]} (${model.billing_upstream}) answers and is charged exactly`,
      keepLogsOnFailure(async () => {
        const home = tempDir(`claude-home-${model.id_aliases[0]}`);
        const { result } = await expectExactCharges(`claude ${model.id_aliases[0]}`, () =>
          runProgram(bin('claude'), ['-p', 'say hi', '--model', model.id_aliases[0]], {
            cwd: home,
            env: agentEnv(home, {
              ANTHROPIC_BASE_URL: stack.url,
              ANTHROPIC_API_KEY: userKey,
              CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
              DISABLE_AUTOUPDATER: '1',
              ANTHROPIC_CUSTOM_HEADERS: `x-fake-tool-call: 0\nx-fake-usage: ${usage}`,
            }),
          }));
        assert.equal(result.code, 0, `claude exited ${result.code}: ${result.stderr.slice(-2000)}${result.stdout.slice(-2000)}`);
        assert.match(result.stdout, /Hello word1/, 'claude printed the answer');
      }));
  }
}

if (which === 'codex') {
  // codex exec on each pool, through a custom provider speaking the Responses API; then a turn
  // with a tool call (the upstream calls the first function tool, Codex sends its output back).
  const cases = [
    { model: CODEX_MAX, usage: '3456,789,0,543', requests: 1 },
    { model: GPT, usage: '4567,890,0,654', requests: 1 },
    { model: GPT, usage: '5678,901,0,765', requests: 2, tool: true },
  ];
  for (const { model, usage, requests, tool } of cases) {
    const name = `codex exec on ${model.id} (${model.billing_upstream})${tool ? ' with a tool call' : ''}`;
    test(`Codex CLI: ${name} answers and is charged exactly`, keepLogsOnFailure(async () => {
      const home = tempDir(`codex-${model.id}${tool ? '-tool' : ''}`);
      const codexHome = tempDir(`codex-${model.id}${tool ? '-tool' : ''}/.codex`);
      const work = tempDir(`codex-${model.id}${tool ? '-tool' : ''}/work`);
      const headers = { 'x-fake-usage': usage, 'x-fake-reasoning-tokens': '123', ...(tool ? { 'x-fake-tool-call': '1' } : {}) };
      fs.writeFileSync(path.join(codexHome, 'config.toml'), [
        `model = "${model.id}"`,
        'model_provider = "trollproxy"',
        'approval_policy = "never"',
        'sandbox_mode = "read-only"',
        '',
        '[model_providers.trollproxy]',
        'name = "trollproxy"',
        `base_url = "${stack.url}/v1"`,
        'env_key = "TROLLPROXY_API_KEY"',
        'wire_api = "responses"',
        `http_headers = { ${Object.entries(headers).map(([k, v]) => `"${k}" = "${v}"`).join(', ')} }`,
        '',
      ].join('\n'));
      const { result, reqs } = await expectExactCharges(name, () =>
        runProgram(bin('codex'), ['exec', '--skip-git-repo-check', '-s', 'read-only', 'say hi'], {
          cwd: work,
          env: agentEnv(home, { CODEX_HOME: codexHome, TROLLPROXY_API_KEY: userKey }),
        }));
      assert.equal(result.code, 0, `codex exited ${result.code}: ${result.stderr.slice(-3000)}`);
      assert.match(result.stdout, /Hello word1/, `codex printed the answer: ${result.stderr.slice(-2000)}`);
      const turns = reqs.filter((r) => r.path === '/v1/responses');
      assert.equal(turns.length, requests, 'requests Codex made');
      if (tool) {
        const input = JSON.parse(turns[1].body).input;
        assert.deepEqual(input.slice(-3).map((i) => i.type), ['reasoning', 'function_call', 'function_call_output'],
          'the second turn sends the reasoning item, the call and its output back');
      }
    }));
  }
}

if (which === 'sdk') {
  const client = (key = userKey) => new OpenAI({ apiKey: key, baseURL: `${stack.url}/v1`, maxRetries: 0, timeout: 20_000 });
  const fake = (usage, extra = {}) => ({ headers: { 'x-fake-usage': usage, ...extra } });
  const uncached = (u) => ({ input: u.input_tokens - u.input_tokens_details.cached_tokens,
    output: u.output_tokens, cacheRead: u.input_tokens_details.cached_tokens });
  let caseNo = 0;
  // Distinct token counts per case: input,output,cacheWrite,cacheRead (no cache writes here).
  const nextUsage = () => {
    caseNo += 1;
    return { input: 1500 + 41 * caseNo, output: 200 + 13 * caseNo, cacheRead: 70 + 7 * caseNo };
  };
  const header = (t) => `${t.input},${t.output},0,${t.cacheRead}`;

  for (const model of [CODEX_MAX, GPT]) {
    test(`openai SDK: responses.create on ${model.id} (${model.billing_upstream}) answers and is charged exactly`,
      keepLogsOnFailure(async () => {
        const t = nextUsage();
        const { result } = await expectExactCharges(`responses.create ${model.id}`, () =>
          client().responses.create({ model: model.id, input: 'say hi', reasoning: { effort: 'low', summary: 'auto' } },
            fake(header(t), { 'x-fake-reasoning-tokens': '50' })));
        assert.equal(result.status, 'completed');
        assert.equal(result.output_text, TEXT);
        assert.deepEqual(result.output.map((o) => o.type), ['reasoning', 'message']);
        assert.deepEqual(uncached(result.usage), t);
        assert.equal(result.usage.output_tokens_details.reasoning_tokens, 50);
      }));

    test(`openai SDK: responses.stream on ${model.id} (${model.billing_upstream}): finalResponse and an exact charge`,
      keepLogsOnFailure(async () => {
        const t = nextUsage();
        let deltas = 0;
        const { result } = await expectExactCharges(`responses.stream ${model.id}`, async () => {
          const s = client().responses.stream({ model: model.id, input: 'say hi', instructions: 'Be brief.' }, fake(header(t)));
          s.on('response.output_text.delta', () => { deltas += 1; });
          return s.finalResponse();
        });
        assert.equal(result.status, 'completed');
        assert.equal(result.output_text, TEXT);
        assert.equal(deltas, 8);
        assert.deepEqual(uncached(result.usage), t);
      }));
  }

  test('openai SDK: a streamed function call is charged exactly', keepLogsOnFailure(async () => {
    const t = nextUsage();
    const tools = [{ type: 'function', name: 'get_weather', description: 'The weather in a city', strict: false,
      parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' } }, required: ['city'] } }];
    const { result } = await expectExactCharges('responses.stream function call', () =>
      client().responses.stream({ model: GPT.id, input: 'weather in Paris?', tools }, fake(header(t), { 'x-fake-tool-call': '1' }))
        .finalResponse());
    const [call] = result.output;
    assert.equal(call.type, 'function_call');
    assert.equal(call.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.arguments), { city: 'Paris', unit: 'celsius' });
    assert.deepEqual(uncached(result.usage), t);
  }));

  test('openai SDK: an incomplete response (max_output_tokens) is charged exactly', keepLogsOnFailure(async () => {
    const t = nextUsage();
    const { result } = await expectExactCharges('responses.stream incomplete', () =>
      // A client limit makes the hold a bound on the charge (docs/billing.md): large enough here for
      // the made-up input counts of x-fake-usage.
      client().responses.stream({ model: CODEX_MAX.id, input: 'say hi', max_output_tokens: 100_000 },
        fake(header(t), { 'x-fake-incomplete': '1' })).finalResponse());
    assert.equal(result.status, 'incomplete');
    assert.deepEqual(result.incomplete_details, { reason: 'max_output_tokens' });
    assert.deepEqual(uncached(result.usage), t);
  }));

  test('openai SDK: a stored response can be read and deleted by its owner only, without charge',
    keepLogsOnFailure(async () => {
      const t = nextUsage();
      const { result: made } = await expectExactCharges('responses.create store', () =>
        client().responses.create({ model: GPT.id, input: 'say hi', store: true }, fake(header(t))));
      const before = stack.balance('alice');
      const entries = stack.usage('alice', 1000).length;
      const got = await client().responses.retrieve(made.id);
      assert.equal(got.id, made.id);
      assert.equal(got.output_text, TEXT);
      await assert.rejects(client(otherKey).responses.retrieve(made.id), (e) => e.status === 404,
        'another user cannot read it');
      await client().responses.delete(made.id);
      await assert.rejects(client().responses.retrieve(made.id), (e) => e.status === 404, 'gone after delete');
      assert.deepEqual(stack.balance('alice'), before, 'reading and deleting cost nothing');
      assert.equal(stack.usage('alice', 1000).length, entries);
    }));

  test('count_tokens is answered and never charged', keepLogsOnFailure(async () => {
    const before = stack.balance('alice');
    const entries = stack.usage('alice', 1000).length;
    const body = JSON.stringify({ model: 'claude-sonnet-4-5', messages: [{ role: 'user', content: 'How many tokens is this?' }] });
    const res = await fetch(`${stack.url}/v1/messages/count_tokens?beta=true`, {
      method: 'POST', body,
      headers: { 'x-api-key': userKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
    });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    assert.ok(Number.isInteger(JSON.parse(text).input_tokens), text);
    assert.deepEqual(stack.balance('alice'), before);
    assert.equal(stack.usage('alice', 1000).length, entries);
  }));
}
