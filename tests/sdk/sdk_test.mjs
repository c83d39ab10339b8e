// The official OpenAI and Anthropic SDKs against the real proxy: answers, streams and tool calls parse, and each charge is exact.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Stack, nanos } from './stack.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
let OpenAI, Anthropic;
try {
  OpenAI = (await import('openai')).default;
  Anthropic = (await import('@anthropic-ai/sdk')).default;
} catch (e) {
  console.log(`SDKs not installed (run ${path.join(here, 'install.sh')}): skipped (${e.message})`);
  process.exit(77);
}
const buildRoot = process.env.TROLLPROXY_BUILD_ROOT ?? process.argv[2];
if (!buildRoot) {
  console.error('set TROLLPROXY_BUILD_ROOT to the meson build directory');
  process.exit(1);
}

// Two models, one per pool. Prices as in configs/example.json.
const CLAUDE = {
  name: 'Claude Sonnet 4.5', id: 'claude-sonnet-4-5-20250929', id_aliases: ['claude-sonnet-4-5'],
  type: 'openhands', upstream: 'openhands', upstream_model_id: 'claude-sonnet-4-5-20250929',
  billing_upstream: 'openhands', input_price_per_mtok: 3.0, output_price_per_mtok: 15.0,
  cache_write_price_per_mtok: 3.75, cache_hit_price_per_mtok: 0.3, billing_multiplier: 1.1,
};
const GPT = {
  name: 'GPT 5.1', id: 'gpt-5.1', type: 'ohmygpt', upstream: 'openhands', upstream_model_id: 'gpt-5.1',
  billing_upstream: 'ohmygpt', input_price_per_mtok: 1.25, output_price_per_mtok: 10.0,
  cache_hit_price_per_mtok: 0.13, billing_multiplier: 1.1,
};
const MODELS = [CLAUDE, GPT];

const stack = new Stack(buildRoot, MODELS);
let openai, anthropic, brokeOpenai, brokeAnthropic;
let failed = false;
let splitCharges = 0; // ohmygpt charges paid partly from credits, partly from refCredits

before(async () => {
  failed = true; // until the stack is up: keep its logs
  await stack.start();
  failed = false;
  // credits is smaller than one answer, so the first ohmygpt charge spills into refCredits.
  const key = stack.addUser('alice', { creditsNew: '5', credits: '0.0005', refCredits: '2' });
  const brokeKey = stack.addUser('broke', {});
  const opts = { maxRetries: 0, timeout: 20_000 };
  openai = new OpenAI({ apiKey: key, baseURL: `${stack.url}/v1`, ...opts });
  anthropic = new Anthropic({ apiKey: key, baseURL: stack.url, ...opts });
  brokeOpenai = new OpenAI({ apiKey: brokeKey, baseURL: `${stack.url}/v1`, ...opts });
  brokeAnthropic = new Anthropic({ apiKey: brokeKey, baseURL: stack.url, ...opts });
});

after(async () => {
  await stack.stop();
  if (failed) console.log(`logs kept in ${stack.dir}`);
  else stack.cleanUp();
});

// Each case gets its own token counts (x-fake-usage: input,output,cache_write,cache_read).
let caseNo = 0;
function nextTokens(cacheWrite) {
  caseNo += 1;
  return { input: 1200 + 37 * caseNo, output: 300 + 11 * caseNo, cacheWrite: cacheWrite ? 400 + caseNo : 0, cacheRead: 90 + caseNo };
}
const fakeHeaders = (t, extra = {}) => ({
  headers: { 'x-fake-usage': `${t.input},${t.output},${t.cacheWrite},${t.cacheRead}`, ...extra },
});

// Price in nano-USD, computed here from the config: Σ tokens × price, × multiplier, one rounding half up.
function priceHere(model, t) {
  const n = (v) => nanos(Number(v ?? 0).toFixed(9));
  const perMtok = BigInt(t.input) * n(model.input_price_per_mtok) + BigInt(t.output) * n(model.output_price_per_mtok) +
    BigInt(t.cacheWrite) * n(model.cache_write_price_per_mtok) + BigInt(t.cacheRead) * n(model.cache_hit_price_per_mtok);
  const denom = 1_000_000n * 1_000_000_000n;
  return (perMtok * n(model.billing_multiplier) + denom / 2n) / denom;
}

// Token counts from usage as the OpenAI SDK reports it (cached tokens are inside prompt_tokens).
function fromOpenAIUsage(u) {
  assert.ok(u, 'the SDK reported usage');
  const cached = u.prompt_tokens_details?.cached_tokens ?? 0;
  return { input: u.prompt_tokens - cached, output: u.completion_tokens, cacheWrite: 0, cacheRead: cached };
}

// Token counts from usage as the Anthropic SDK reports it.
function fromAnthropicUsage(u) {
  assert.ok(u, 'the SDK reported usage');
  return { input: u.input_tokens, output: u.output_tokens, cacheWrite: u.cache_creation_input_tokens ?? 0,
    cacheRead: u.cache_read_input_tokens ?? 0 };
}

// Runs `fn`, then checks the user was charged exactly the price of `tokens` from the model's pool.
async function expectCharge(model, fn) {
  const user = 'alice';
  const before = stack.balance(user);
  const logBefore = stack.usage(user, 1)[0]?.requestId;
  const { tokens, costHeader } = await fn();
  const expected = stack.quote(model.id, tokens);
  assert.equal(expected, priceHere(model, tokens), 'trollproxy-admin quote agrees with the price computed here');
  assert.ok(expected > 0n);
  if (costHeader !== undefined) assert.equal(nanos(costHeader), expected, 'x-trollproxy-cost');
  const after = stack.balance(user);
  if (model.billing_upstream === 'openhands') {
    assert.equal(before.creditsNew - after.creditsNew, expected, 'creditsNew decreased by the cost');
    assert.equal(after.creditsNewUsed - before.creditsNewUsed, expected);
    assert.equal(after.credits, before.credits);
    assert.equal(after.refCredits, before.refCredits);
  } else {
    const fromCredits = before.credits < expected ? before.credits : expected;
    assert.equal(before.credits - after.credits, fromCredits, 'credits paid first');
    assert.equal(before.refCredits - after.refCredits, expected - fromCredits, 'refCredits paid the rest');
    if (fromCredits > 0n && fromCredits < expected) splitCharges += 1;
    assert.equal(after.creditsUsed - before.creditsUsed, expected);
    assert.equal(after.creditsNew, before.creditsNew);
  }
  assert.equal(after.totalInputTokens - before.totalInputTokens, BigInt(tokens.input + tokens.cacheWrite + tokens.cacheRead));
  assert.equal(after.totalOutputTokens - before.totalOutputTokens, BigInt(tokens.output));
  const [entry] = stack.usage(user, 1);
  assert.notEqual(entry.requestId, logBefore, 'a new ledger entry');
  assert.equal(entry.model, model.id);
  assert.equal(entry.status, '200');
  assert.equal(entry.estimated, false);
  assert.deepEqual([entry.input, entry.output, entry.cache_write, entry.cache_read].map(Number),
    [tokens.input, tokens.output, tokens.cacheWrite, tokens.cacheRead]);
  assert.equal(nanos(entry.cost), expected);
}

const TEXT = 'Hello word1 word2 word3 word4 word5 word6 word7';
const WEATHER_ARGS = { city: 'Paris', unit: 'celsius' };
const openaiTool = {
  type: 'function',
  function: {
    name: 'get_weather', description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' } }, required: ['city'] },
  },
};
const anthropicTool = {
  name: 'get_weather', description: 'The weather in a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' }, unit: { type: 'string' } }, required: ['city'] },
};
const wrap = (fn) => async (t) => {
  try {
    await fn(t);
  } catch (e) {
    failed = true;
    throw e;
  }
};

for (const model of MODELS) {
  const pool = model.billing_upstream === 'openhands' ? 'creditsNew' : 'credits+refCredits';
  const msgs = [{ role: 'user', content: 'What is the weather in Paris?' }];

  test(`openai chat.completions.create, ${model.id} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(false);
      const { data, response } = await openai.chat.completions
        .create({ model: model.id, messages: msgs, max_tokens: 1000 }, fakeHeaders(want)).withResponse();
      assert.equal(data.object, 'chat.completion');
      assert.equal(data.choices[0].message.content, TEXT);
      assert.equal(data.choices[0].finish_reason, 'stop');
      assert.match(response.headers.get('content-type'), /^application\/json/);
      const tokens = fromOpenAIUsage(data.usage);
      assert.deepEqual(tokens, want, 'the SDK saw the usage the upstream reported');
      return { tokens, costHeader: response.headers.get('x-trollproxy-cost') };
    });
  }));

  test(`openai chat.completions.create stream without include_usage, ${model.id} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(false);
      const { data: stream, response } = await openai.chat.completions
        .create({ model: model.id, messages: msgs, stream: true }, fakeHeaders(want)).withResponse();
      assert.match(response.headers.get('content-type'), /^text\/event-stream/);
      let text = '', finish = null, chunks = 0;
      for await (const chunk of stream) {
        chunks += 1;
        assert.equal(chunk.object, 'chat.completion.chunk');
        assert.ok(!chunk.usage, 'no usage chunk for a client that did not ask for one');
        assert.equal(chunk.choices.length, 1);
        text += chunk.choices[0].delta.content ?? '';
        finish = chunk.choices[0].finish_reason ?? finish;
      }
      assert.equal(text, TEXT);
      assert.equal(finish, 'stop');
      assert.equal(chunks, 10);
      return { tokens: want }; // the client saw no usage: the upstream's counts are the truth
    });
  }));

  test(`openai chat.completions.create stream with include_usage, ${model.id} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(false);
      const stream = await openai.chat.completions.create(
        { model: model.id, messages: msgs, stream: true, stream_options: { include_usage: true } }, fakeHeaders(want));
      let text = '', usage = null, usageChunks = 0;
      for await (const chunk of stream) {
        if (chunk.usage) {
          usageChunks += 1;
          usage = chunk.usage;
          assert.deepEqual(chunk.choices, []);
        }
        text += chunk.choices[0]?.delta.content ?? '';
      }
      assert.equal(text, TEXT);
      assert.equal(usageChunks, 1);
      const tokens = fromOpenAIUsage(usage);
      assert.deepEqual(tokens, want);
      return { tokens };
    });
  }));

  test(`openai tool call, ${model.id} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(false);
      const { data, response } = await openai.chat.completions.create({
        model: model.id, messages: msgs, tools: [openaiTool],
        tool_choice: { type: 'function', function: { name: 'get_weather' } },
      }, fakeHeaders(want)).withResponse();
      const choice = data.choices[0];
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.equal(choice.message.tool_calls.length, 1);
      const call = choice.message.tool_calls[0];
      assert.equal(call.type, 'function');
      assert.equal(call.function.name, 'get_weather');
      assert.deepEqual(JSON.parse(call.function.arguments), WEATHER_ARGS);
      const tokens = fromOpenAIUsage(data.usage);
      assert.deepEqual(tokens, want);
      return { tokens, costHeader: response.headers.get('x-trollproxy-cost') };
    });
  }));

  test(`openai chat.completions.stream tool call, finalChatCompletion(), ${model.id} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(false);
      const stream = openai.chat.completions.stream({
        model: model.id, messages: msgs, tools: [openaiTool], tool_choice: 'required',
        stream_options: { include_usage: true },
      }, fakeHeaders(want));
      let argDeltas = '';
      stream.on('tool_calls.function.arguments.delta', (e) => { argDeltas += e.arguments_delta; });
      const final = await stream.finalChatCompletion();
      const call = final.choices[0].message.tool_calls[0];
      assert.equal(final.choices[0].finish_reason, 'tool_calls');
      assert.equal(call.function.name, 'get_weather');
      assert.deepEqual(JSON.parse(call.function.arguments), WEATHER_ARGS);
      assert.deepEqual(JSON.parse(argDeltas), WEATHER_ARGS);
      const tokens = fromOpenAIUsage(final.usage);
      assert.deepEqual(tokens, want);
      return { tokens };
    });
  }));

  const aModel = model.id_aliases?.[0] ?? model.id; // Anthropic cases ask by alias where there is one

  test(`anthropic messages.create, ${aModel} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(true);
      const { data, response } = await anthropic.messages
        .create({ model: aModel, max_tokens: 1024, messages: msgs }, fakeHeaders(want)).withResponse();
      assert.equal(data.type, 'message');
      assert.equal(data.stop_reason, 'end_turn');
      assert.equal(data.content[0].type, 'text');
      assert.equal(data.content[0].text, TEXT);
      const tokens = fromAnthropicUsage(data.usage);
      assert.deepEqual(tokens, want);
      return { tokens, costHeader: response.headers.get('x-trollproxy-cost') };
    });
  }));

  test(`anthropic messages.stream finalMessage(), ${aModel} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(true);
      const stream = anthropic.messages.stream({ model: aModel, max_tokens: 1024, messages: msgs }, fakeHeaders(want));
      let text = '';
      const events = [];
      stream.on('text', (delta) => { text += delta; });
      stream.on('streamEvent', (e) => { if (events.at(-1) !== e.type) events.push(e.type); });
      const final = await stream.finalMessage();
      assert.equal(text, TEXT);
      assert.equal(final.content[0].text, TEXT);
      assert.equal(final.stop_reason, 'end_turn');
      assert.deepEqual(events, ['message_start', 'content_block_start', 'content_block_delta',
        'content_block_stop', 'message_delta', 'message_stop']);
      const tokens = fromAnthropicUsage(final.usage);
      assert.deepEqual(tokens, want);
      return { tokens };
    });
  }));

  test(`anthropic tool use, ${aModel} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(true);
      const { data, response } = await anthropic.messages.create({
        model: aModel, max_tokens: 1024, messages: msgs, tools: [anthropicTool],
        tool_choice: { type: 'tool', name: 'get_weather' },
      }, fakeHeaders(want)).withResponse();
      assert.equal(data.stop_reason, 'tool_use');
      const block = data.content.find((b) => b.type === 'tool_use');
      assert.equal(block.name, 'get_weather');
      assert.deepEqual(block.input, WEATHER_ARGS);
      const tokens = fromAnthropicUsage(data.usage);
      assert.deepEqual(tokens, want);
      return { tokens, costHeader: response.headers.get('x-trollproxy-cost') };
    });
  }));

  test(`anthropic messages.stream tool use, ${aModel} (${pool})`, wrap(async () => {
    await expectCharge(model, async () => {
      const want = nextTokens(true);
      const stream = anthropic.messages.stream({
        model: aModel, max_tokens: 1024, messages: msgs, tools: [anthropicTool], tool_choice: { type: 'any' },
      }, fakeHeaders(want));
      let json = '';
      stream.on('inputJson', (delta) => { json += delta; });
      const final = await stream.finalMessage();
      assert.equal(final.stop_reason, 'tool_use');
      const block = final.content.find((b) => b.type === 'tool_use');
      assert.equal(block.name, 'get_weather');
      assert.deepEqual(block.input, WEATHER_ARGS);
      assert.deepEqual(JSON.parse(json), WEATHER_ARGS);
      const tokens = fromAnthropicUsage(final.usage);
      assert.deepEqual(tokens, want);
      return { tokens };
    });
  }));
}

test('ohmygpt: a charge larger than credits took the rest from refCredits', wrap(async () => {
  assert.equal(splitCharges, 1);
  const b = stack.balance('alice');
  assert.equal(b.credits, 0n);
  assert.ok(b.refCredits < nanos('2') && b.refCredits > 0n);
}));

// Runs `fn`, expecting it to throw; checks nothing reached the upstream and no balance moved.
async function expectRefused(fn) {
  const statsBefore = await stack.upstreamStats();
  const balances = [stack.balance('alice'), stack.balance('broke')];
  let error = null;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  assert.ok(error, 'the SDK raised an error');
  assert.equal((await stack.upstreamStats()).requests, statsBefore.requests, 'nothing reached the upstream');
  assert.deepEqual([stack.balance('alice'), stack.balance('broke')], balances, 'no balance moved');
  return error;
}

for (const model of MODELS) {
  test(`insufficient credits: openai APIError 402, ${model.id}`, wrap(async () => {
    for (const stream of [false, true]) {
      const e = await expectRefused(async () => {
        const r = await brokeOpenai.chat.completions.create({ model: model.id, messages: [{ role: 'user', content: 'hi' }], stream });
        if (stream) for await (const _ of r);
      });
      assert.ok(e instanceof OpenAI.APIError, `${e}`);
      assert.equal(e.status, 402);
      assert.equal(e.code, 'insufficient_credits');
      assert.match(e.message, /insufficient credits/);
    }
  }));

  test(`insufficient credits: anthropic APIError 402, ${model.id}`, wrap(async () => {
    const e = await expectRefused(() => brokeAnthropic.messages.create(
      { model: model.id, max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] }));
    assert.ok(e instanceof Anthropic.APIError, `${e}`);
    assert.equal(e.status, 402);
    assert.equal(e.error?.error?.type, 'billing_error');
    const s = await expectRefused(() => brokeAnthropic.messages.stream(
      { model: model.id, max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] }).finalMessage());
    assert.ok(s instanceof Anthropic.APIError, `${s}`);
    assert.equal(s.status, 402);
  }));
}

test('unknown model: openai NotFoundError 404', wrap(async () => {
  const e = await expectRefused(() => openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }));
  assert.ok(e instanceof OpenAI.NotFoundError, `${e}`);
  assert.equal(e.status, 404);
  assert.equal(e.code, 'model_not_found');
}));

test('unknown model: anthropic NotFoundError 404', wrap(async () => {
  const e = await expectRefused(() => anthropic.messages.create({ model: 'no-such-model', max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] }));
  assert.ok(e instanceof Anthropic.NotFoundError, `${e}`);
  assert.equal(e.status, 404);
  assert.equal(e.error?.error?.type, 'not_found_error');
}));
