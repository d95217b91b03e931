// The official `openai` SDK (7.57.0) against chatd's /v1/chat/completions with
// what chat apps send beyond text: tools (plain, streamed through the SDK's
// stream helper, a whole tool loop, stateless and with server-side memory),
// images, response_format with a JSON schema, reasoning, the sampling fields
// (checked in the request the fake provider received), and the refusal of
// every field a provider cannot take (400 unsupported_parameter naming it),
// or its dropping with DROP_UNSUPPORTED_PARAMS=on. Both upstream kinds: an
// Anthropic model and an OpenAI-compatible one, both served by the fake
// (tests/fake_llm/README.md, "Rich replies").
//
// Run from the repo root: CHATD_BIN=build/chatd node --test tests/openai_sdk/rich.test.mjs

import { test, before, after, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startFake, startChatd } from './servers.mjs';

// A real 1x1 PNG (signature, IHDR, IDAT, IEND).
const PNG_B64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';

let fake;
let chatd;
let dropping; // a chatd with DROP_UNSUPPORTED_PARAMS=on
// Models without a native structured-output mode (models.json "features"): JSON through a forced tool.
const NO_NATIVE = { anthropic: 'claude-json-via-tool', 'openai-compatible': 'gpt-json-via-tool' };
const modelsDir = mkdtempSync(path.join(tmpdir(), 'chatd-models-'));
const modelsFile = path.join(modelsDir, 'models.json');
writeFileSync(modelsFile, JSON.stringify({ models: [
  { name: NO_NATIVE.anthropic, provider: 'anthropic', model_id: 'claude-haiku-4-5', features: ['tools'],
    context_window: 200000, max_output: 8192, price: { input: 1, output: 5 } },
  { name: NO_NATIVE['openai-compatible'], provider: 'openai', model_id: 'gpt-4o-mini', features: ['tools'],
    context_window: 128000, max_output: 16384, price: { input: 0.15, output: 0.6 } },
  { name: 'gpt-reasoner', provider: 'openai', model_id: 'o4-mini', features: ['tools', 'reasoning_effort'],
    context_window: 200000, max_output: 100000, price: { input: 1.1, output: 4.4 } },
  // A model (or API version) that refuses sampling fields: data, not code.
  { name: 'claude-no-sampling', provider: 'anthropic', model_id: 'claude-sonnet-4-6', features: ['tools'],
    rejects: ['temperature', 'top_p', 'top_k'], context_window: 200000, max_output: 8192,
    price: { input: 3, output: 15 } },
] }));
before(async () => {
  fake = await startFake();
  chatd = await startChatd(fake, { MAX_IMAGE_SIZE: '2KiB', MODELS_FILE: modelsFile });
  dropping = await startChatd(fake, { DROP_UNSUPPORTED_PARAMS: 'on' });
});
after(async () => {
  rmSync(modelsDir, { recursive: true, force: true });
  const codes = [];
  for (const c of [chatd, dropping]) if (c) codes.push(await c.stop());
  if (fake) await fake.stop();
  for (const r of codes) assert.equal(r.code, 0, `chatd exit: ${JSON.stringify(r)}`);
});
beforeEach(async () => {
  await fake.reset();
});

const client = (server = chatd, opts = {}) => new OpenAI({ apiKey: 'unused-without-auth', baseURL: server.baseURL,
  maxRetries: 0, timeout: 15000, ...opts });

const WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};
const TIME = {
  type: 'function',
  function: { name: 'get_time', description: 'The time in a city', parameters: { type: 'object', properties: {} } },
};

const MODES = [
  { name: 'anthropic', model: 'claude-sonnet-4-6', path: '/v1/messages' },
  { name: 'openai-compatible', model: 'gpt-4o-mini', path: '/v1/chat/completions' },
];

/** The provider requests of the test (exactly n of them). */
async function upstream(n = 1) {
  const reqs = await fake.requests();
  assert.equal(reqs.length, n, JSON.stringify(reqs.map((q) => q.path)));
  return reqs;
}

/** The error a call raises (it must raise one). */
async function failure(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail('the call succeeded');
}

for (const mode of MODES) {
  const anthropic = mode.name === 'anthropic';

  describe(`tools via ${mode.name}`, () => {
    test('a tool call: message.tool_calls, content, finish_reason tool_calls, the tools sent upstream', async () => {
      await fake.script({ queue: [{ reply: 'Let me check.', tool_calls: [{ name: 'get_weather', input: { city: 'Paris' } }] }] });
      const r = await client().chat.completions.create({
        model: mode.model,
        messages: [{ role: 'user', content: 'Weather in Paris?' }],
        tools: [WEATHER],
        tool_choice: 'auto',
      });
      const c = r.choices[0];
      assert.equal(c.finish_reason, 'tool_calls');
      assert.equal(c.message.content, 'Let me check.');
      assert.equal(c.message.tool_calls.length, 1);
      const call = c.message.tool_calls[0];
      assert.equal(call.type, 'function');
      assert.match(call.id, /^(toolu_|call_)/);
      assert.equal(call.function.name, 'get_weather');
      assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
      assert.ok(r.usage.completion_tokens > 0);
      const [q] = await upstream();
      assert.equal(q.path, mode.path);
      if (anthropic) {
        assert.deepEqual(q.body.tools, [{ name: 'get_weather', description: 'The weather in a city',
          input_schema: WEATHER.function.parameters }]);
        assert.deepEqual(q.body.tool_choice, { type: 'auto' });
      } else {
        assert.equal(q.body.tools[0].type, 'function');
        assert.equal(q.body.tools[0].function.name, 'get_weather');
        assert.deepEqual(q.body.tools[0].function.parameters, WEATHER.function.parameters);
        assert.equal(q.body.tool_choice, 'auto');
      }
    });

    test('only tool calls: content null; required -> a forced tool; parallel_tool_calls false', async () => {
      await fake.script({ queue: [{ tool_calls: [{ name: 'get_time', input: {} }] }] });
      const r = await client().chat.completions.create({
        model: mode.model,
        messages: [{ role: 'user', content: 'Time?' }],
        tools: [WEATHER, TIME],
        tool_choice: 'required',
        parallel_tool_calls: false,
      });
      const m = r.choices[0].message;
      assert.equal(m.content, null);
      assert.equal(m.tool_calls.length, 1);
      assert.equal(m.tool_calls[0].function.name, 'get_time');
      assert.deepEqual(JSON.parse(m.tool_calls[0].function.arguments), {});
      assert.equal(r.choices[0].finish_reason, 'tool_calls');
      const [q] = await upstream();
      if (anthropic) {
        assert.deepEqual(q.body.tool_choice, { type: 'any', disable_parallel_tool_use: true });
      } else {
        assert.equal(q.body.tool_choice, 'required');
        assert.equal(q.body.parallel_tool_calls, false);
      }
    });

    test('streamed: the SDK stream helper accumulates two calls after text; deltas in OpenAI form', async () => {
      await fake.script({ queue: [{ reply: 'Checking both.', tool_calls: [
        { name: 'get_weather', input: { city: 'Paris' } },
        { name: 'get_weather', input: { city: 'Lyon' } },
      ] }] });
      const stream = client().chat.completions.stream({
        model: mode.model,
        messages: [{ role: 'user', content: 'Weather in Paris and Lyon?' }],
        tools: [WEATHER],
        stream_options: { include_usage: true },
      });
      const chunks = [];
      for await (const ch of stream) chunks.push(ch);
      const final = await stream.finalChatCompletion();
      const m = final.choices[0].message;
      assert.equal(m.content, 'Checking both.');
      assert.equal(final.choices[0].finish_reason, 'tool_calls');
      assert.deepEqual(m.tool_calls.map((t) => JSON.parse(t.function.arguments)), [{ city: 'Paris' }, { city: 'Lyon' }]);
      assert.ok(m.tool_calls.every((t) => t.type === 'function' && t.function.name === 'get_weather' && t.id));
      assert.notEqual(m.tool_calls[0].id, m.tool_calls[1].id);
      // The wire: the first piece of each call has index, id, type and name with empty
      // arguments; later pieces only index and arguments; text before the calls.
      const pieces = chunks.flatMap((ch) => ch.choices.flatMap((c) => c.delta?.tool_calls ?? []));
      const firsts = pieces.filter((p) => p.id);
      assert.deepEqual(firsts.map((p) => p.index), [0, 1]);
      for (const p of firsts) {
        assert.equal(p.type, 'function');
        assert.equal(p.function.name, 'get_weather');
        assert.equal(p.function.arguments, '');
      }
      for (const p of pieces.filter((x) => !x.id)) {
        assert.deepEqual(Object.keys(p).sort(), ['function', 'index']);
        assert.deepEqual(Object.keys(p.function), ['arguments']);
      }
      const firstCall = chunks.findIndex((ch) => ch.choices[0]?.delta?.tool_calls);
      const lastText = chunks.findLastIndex((ch) => ch.choices[0]?.delta?.content);
      assert.ok(lastText < firstCall, 'text comes before the calls');
      const usage = chunks.at(-1);
      assert.deepEqual(usage.choices, []);
      assert.ok(usage.usage.completion_tokens > 0);
      const [q] = await upstream();
      assert.equal(q.body.stream, true);
    });

    test('streamed, only a call: the first chunk carries the role, content null, and the call', async () => {
      await fake.script({ queue: [{ tool_calls: [{ name: 'get_time', input: {} }] }] });
      const stream = client().chat.completions.stream({ model: mode.model, tools: [TIME],
        messages: [{ role: 'user', content: 'Time?' }] });
      const chunks = [];
      for await (const ch of stream) chunks.push(ch);
      const first = chunks[0].choices[0].delta;
      assert.equal(first.role, 'assistant');
      assert.equal(first.content, null);
      assert.equal(first.tool_calls[0].function.name, 'get_time');
      const final = await stream.finalChatCompletion();
      assert.equal(final.choices[0].message.content, null);
      assert.equal(final.choices[0].finish_reason, 'tool_calls');
      assert.deepEqual(JSON.parse(final.choices[0].message.tool_calls[0].function.arguments), {});
    });

    test('a whole tool loop, stateless: the calls and results go back, the final answer comes', async () => {
      await fake.script({ queue: [{ tool_calls: [{ name: 'get_weather', input: { city: 'Paris' } },
        { name: 'get_time', input: {} }] }] });
      const messages = [{ role: 'system', content: 'Use the tools.' }, { role: 'user', content: 'Weather and time?' }];
      const first = await client().chat.completions.create({ model: mode.model, messages, tools: [WEATHER, TIME] });
      const calls = first.choices[0].message.tool_calls;
      assert.equal(calls.length, 2);
      messages.push(first.choices[0].message);
      messages.push({ role: 'tool', tool_call_id: calls[0].id, content: 'sunny' });
      messages.push({ role: 'tool', tool_call_id: calls[1].id, content: [{ type: 'text', text: 'noon' }] });
      const second = await client().chat.completions.create({ model: mode.model, messages, tools: [WEATHER, TIME] });
      assert.equal(second.choices[0].message.content, 'Tool results: sunny; noon');
      assert.equal(second.choices[0].finish_reason, 'stop');
      const reqs = await upstream(2);
      const body = reqs[1].body;
      if (anthropic) {
        assert.equal(body.system, 'Use the tools.');
        const [u, a, results] = body.messages;
        assert.equal(u.role, 'user');
        assert.equal(a.role, 'assistant');
        const uses = a.content.filter((b) => b.type === 'tool_use');
        assert.deepEqual(uses.map((b) => [b.id, b.name, b.input]),
          [[calls[0].id, 'get_weather', { city: 'Paris' }], [calls[1].id, 'get_time', {}]]);
        assert.equal(results.role, 'user');
        assert.deepEqual(results.content.map((b) => [b.type, b.tool_use_id]),
          [['tool_result', calls[0].id], ['tool_result', calls[1].id]]);
        assert.equal(body.messages.length, 3);
      } else {
        const roles = body.messages.map((m) => m.role);
        assert.deepEqual(roles, ['system', 'user', 'assistant', 'tool', 'tool']);
        assert.deepEqual(body.messages[2].tool_calls.map((t) => [t.id, t.function.name, JSON.parse(t.function.arguments)]),
          [[calls[0].id, 'get_weather', { city: 'Paris' }], [calls[1].id, 'get_time', {}]]);
        assert.deepEqual(body.messages.slice(3).map((m) => m.tool_call_id), [calls[0].id, calls[1].id]);
      }
    });

    test('the SDK runTools helper runs the loop, plain and streamed', async () => {
      for (const stream of [false, true]) {
        await fake.reset();
        await fake.script({ queue: [{ tool_calls: [{ name: 'get_weather', input: { city: 'Porto' } }] }] });
        const seen = [];
        const runner = client().chat.completions.runTools({
          model: mode.model,
          stream,
          messages: [{ role: 'user', content: 'Weather in Porto?' }],
          tools: [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
            parameters: WEATHER.function.parameters, parse: JSON.parse,
            function: (args) => { seen.push(args); return `cloudy in ${args.city}`; } } }],
        });
        assert.equal(await runner.finalContent(), 'Tool results: cloudy in Porto', `stream ${stream}`);
        assert.deepEqual(seen, [{ city: 'Porto' }]);
        await upstream(2);
      }
    });

    test('a tool loop with server-side memory: the results alone continue the session', async () => {
      const session = `tools-${mode.name}-${Date.now()}`;
      const opts = { headers: { 'X-Session-Id': session } };
      await fake.script({ queue: [{ tool_calls: [{ name: 'get_weather', input: { city: 'Oslo' } }] }] });
      const first = await client().chat.completions.create({ model: mode.model, tools: [WEATHER],
        messages: [{ role: 'user', content: 'Weather in Oslo?' }] }, opts);
      const call = first.choices[0].message.tool_calls[0];
      assert.equal(first.session_id, session);
      const second = await client().chat.completions.create({ model: mode.model, tools: [WEATHER],
        messages: [{ role: 'tool', tool_call_id: call.id, content: 'snow' }] }, opts);
      assert.equal(second.choices[0].message.content, 'Tool results: snow');
      const reqs = await upstream(2);
      const body = reqs[1].body;
      // the stored call went back with its result
      if (anthropic) {
        assert.equal(body.messages.length, 3);
        assert.equal(body.messages[1].content.find((b) => b.type === 'tool_use').id, call.id);
        assert.equal(body.messages[2].content[0].tool_use_id, call.id);
      } else {
        assert.deepEqual(body.messages.map((m) => m.role).filter((r) => r !== 'system'), ['user', 'assistant', 'tool']);
      }
      // a result for a call the session never made is refused
      const e = await failure(client().chat.completions.create({ model: mode.model, tools: [WEATHER],
        messages: [{ role: 'tool', tool_call_id: 'call_nope', content: 'x' }] }, opts));
      assert.equal(e.status, 400);
    });

    test('a tool result answering no call is refused before the provider', async () => {
      const e = await failure(client().chat.completions.create({ model: mode.model, messages: [
        { role: 'user', content: 'hi' }, { role: 'tool', tool_call_id: 'call_x', content: 'x' }] }));
      assert.equal(e.status, 400);
      assert.match(e.message, /tool_call_id "call_x" answers no tool call/);
      await upstream(0);
    });
  });

  describe(`images via ${mode.name}`, () => {
    test('a data URL image is accepted and sent as an image', async () => {
      const r = await client().chat.completions.create({
        model: mode.model,
        messages: [{ role: 'user', content: [
          { type: 'text', text: 'What is this?' },
          { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_B64}` } },
        ] }],
      });
      assert.equal(r.choices[0].message.content, 'Hello! You said: What is this?');
      assert.ok(r.usage.prompt_tokens >= 1600, 'the image counts');
      const [q] = await upstream();
      const parts = anthropic ? q.body.messages[0].content : q.body.messages.at(-1).content;
      if (anthropic) {
        assert.deepEqual(parts[1], { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG_B64 } });
      } else {
        assert.equal(parts[1].type, 'image_url');
        assert.equal(parts[1].image_url.url, `data:image/png;base64,${PNG_B64}`);
      }
    });

    test('an image over MAX_IMAGE_SIZE: 413 naming it; bad base64: 400', async () => {
      const big = Buffer.concat([Buffer.from(PNG_B64, 'base64'), Buffer.alloc(4096)]).toString('base64');
      let e = await failure(client().chat.completions.create({ model: mode.model, messages: [{ role: 'user', content: [
        { type: 'text', text: 'x' }, { type: 'image_url', image_url: { url: `data:image/png;base64,${big}` } }] }] }));
      assert.equal(e.status, 413);
      assert.match(e.message, /messages\[0\]\.content\[1\].*MAX_IMAGE_SIZE/);
      e = await failure(client().chat.completions.create({ model: mode.model, messages: [{ role: 'user', content: [
        { type: 'image_url', image_url: { url: 'data:image/png;base64,not*base64' } }] }] }));
      assert.equal(e.status, 400);
      assert.match(e.message, /not valid base64/);
      e = await failure(client().chat.completions.create({ model: mode.model, messages: [{ role: 'user', content: [
        { type: 'image_url', image_url: { url: 'ftp://example.com/a.png' } }] }] }));
      assert.equal(e.status, 400);
      await upstream(0);
    });
  });

  describe(`structured output and sampling via ${mode.name}`, () => {
    test('response_format json_schema: the content is JSON of the schema, parse() reads it', async () => {
      const schema = { type: 'object', properties: { city: { type: 'string' }, temp: { type: 'integer' } },
        required: ['city', 'temp'], additionalProperties: false };
      const r = await client().chat.completions.parse({
        model: mode.model,
        messages: [{ role: 'user', content: 'Weather as JSON' }],
        response_format: { type: 'json_schema', json_schema: { name: 'weather', schema, strict: true } },
      });
      assert.deepEqual(r.choices[0].message.parsed, { city: 'x', temp: 1 });
      assert.equal(r.choices[0].finish_reason, 'stop');
      assert.ok(!(r.choices[0].message.tool_calls?.length), 'no tool call shows');
      await upstream(1);
    });

    test('response_format json_schema on a model without a native mode: a forced tool, answered as content',
      async () => {
        const schema = { type: 'object', properties: { answer: { type: 'string' } }, required: ['answer'] };
        for (const stream of [false, true]) {
          await fake.reset();
          const params = { model: NO_NATIVE[mode.name], messages: [{ role: 'user', content: 'JSON please' }],
            response_format: { type: 'json_schema', json_schema: { name: 'reply', schema } } };
          let content;
          let finish;
          let calls;
          if (stream) {
            const s = client().chat.completions.stream(params);
            const final = await s.finalChatCompletion();
            content = final.choices[0].message.content;
            finish = final.choices[0].finish_reason;
            calls = final.choices[0].message.tool_calls;
          } else {
            const r = await client().chat.completions.create(params);
            content = r.choices[0].message.content;
            finish = r.choices[0].finish_reason;
            calls = r.choices[0].message.tool_calls;
          }
          assert.deepEqual(JSON.parse(content), { answer: 'x' }, `stream ${stream}`);
          assert.equal(finish, 'stop', `stream ${stream}`);
          assert.ok(!calls?.length, `no tool call shows (stream ${stream})`);
          const [q] = await upstream();
          const tools = anthropic ? q.body.tools.map((t) => t.name) : q.body.tools.map((t) => t.function.name);
          assert.deepEqual(tools, ['json_output']);
        }
      });

    test('temperature, top_p and stop reach the provider; the stop sequence applies', async () => {
      await fake.script({ queue: [{ reply: 'alpha beta END gamma' }] });
      const r = await client().chat.completions.create({
        model: mode.model,
        messages: [{ role: 'user', content: 'go' }],
        temperature: 0.2,
        top_p: 0.9,
        stop: ['END'],
        max_completion_tokens: 50,
      });
      assert.equal(r.choices[0].message.content, 'alpha beta ');
      assert.equal(r.choices[0].finish_reason, 'stop');
      // the sequence, where the provider says which (Anthropic), as vLLM reports it
      if (anthropic) assert.equal(r.choices[0].stop_reason, 'END');
      else assert.equal(r.choices[0].stop_reason, undefined);
      const [q] = await upstream();
      assert.equal(q.body.temperature, 0.2);
      assert.equal(q.body.top_p, 0.9);
      if (anthropic) assert.deepEqual(q.body.stop_sequences, ['END']);
      else assert.deepEqual(q.body.stop, ['END']);
    });

    test('n=2 is refused (a turn has one reply)', async () => {
      const e = await failure(client().chat.completions.create({ model: mode.model, n: 2,
        messages: [{ role: 'user', content: 'x' }] }));
      assert.equal(e.status, 400);
      assert.equal(e.code, 'unsupported_parameter');
      assert.equal(e.param, 'n');
      assert.match(e.message, new RegExp(mode.model));
      await upstream(0);
    });

    test('fields no provider takes are refused, naming them', async () => {
      for (const [field, value] of [['audio', { voice: 'alloy', format: 'mp3' }], ['modalities', ['text', 'audio']],
        ['prediction', { type: 'content', content: 'x' }], ['web_search_options', {}], ['verbosity', 'low']]) {
        const e = await failure(client().chat.completions.create({ model: mode.model, [field]: value,
          messages: [{ role: 'user', content: 'x' }] }));
        assert.equal(e.status, 400, field);
        assert.equal(e.code, 'unsupported_parameter', field);
        assert.equal(e.param, field);
      }
      const e = await failure(client().chat.completions.create({ model: mode.model, temprature: 0.5,
        messages: [{ role: 'user', content: 'x' }] }));
      assert.equal(e.status, 400);
      assert.match(e.message, /Unrecognized request argument supplied: temprature/);
      await upstream(0);
    });

    test('defaults that change nothing are accepted everywhere', async () => {
      const r = await client().chat.completions.create({ model: mode.model, n: 1, logprobs: false,
        frequency_penalty: 0, presence_penalty: 0, response_format: { type: 'text' }, store: false,
        metadata: { app: 'test' }, user: 'end-user-1', messages: [{ role: 'user', content: 'defaults' }] });
      assert.equal(r.choices[0].message.content, 'Hello! You said: defaults');
      const [q] = await upstream();
      for (const k of ['n', 'logprobs', 'frequency_penalty', 'presence_penalty', 'response_format', 'store'])
        assert.equal(q.body[k], undefined, k);
      if (anthropic) assert.equal(q.body.metadata?.user_id, 'end-user-1');
      else assert.equal(q.body.user, 'end-user-1');
    });
  });
}

describe('what each provider refuses', () => {
  const claude = 'claude-sonnet-4-6';
  for (const [field, value] of [['seed', 42], ['logit_bias', { 50256: -100 }], ['frequency_penalty', 0.5],
    ['presence_penalty', 0.5], ['temperature', 1.5]]) {
    test(`${field} to an Anthropic model: 400 unsupported_parameter naming it and the model`, async () => {
      const e = await failure(client().chat.completions.create({ model: claude, [field]: value,
        messages: [{ role: 'user', content: 'x' }] }));
      assert.equal(e.status, 400);
      assert.equal(e.code, 'unsupported_parameter');
      assert.equal(e.param, field);
      assert.match(e.message, new RegExp(`${field}.*${claude}`));
      await upstream(0);
    });
  }

  test('logprobs is refused on every model: chatd does not return them', async () => {
    for (const model of [claude, 'gpt-4o-mini']) {
      const e = await failure(client().chat.completions.create({ model, logprobs: true, top_logprobs: 2,
        messages: [{ role: 'user', content: 'x' }] }));
      assert.equal(e.status, 400);
      assert.equal(e.code, 'unsupported_parameter');
      assert.equal(e.param, 'logprobs');
    }
    await upstream(0);
  });

  test('reasoning_effort beyond minimal..high is refused; a model without reasoning refuses any', async () => {
    for (const [model, effort] of [[claude, 'xhigh'], [claude, 'none'], ['gpt-4o-mini', 'max']]) {
      const e = await failure(client().chat.completions.create({ model, reasoning_effort: effort,
        messages: [{ role: 'user', content: 'x' }] }));
      assert.equal(e.status, 400, effort);
      assert.equal(e.code, 'unsupported_parameter', effort);
      assert.equal(e.param, 'reasoning_effort');
    }
    await upstream(0);
  });

  test('seed, penalties, logit_bias and temperature 1.5 reach an OpenAI-compatible model', async () => {
    const r = await client().chat.completions.create({ model: 'gpt-4o-mini', seed: 42, frequency_penalty: 0.5,
      presence_penalty: -0.5, logit_bias: { 50256: -100 }, temperature: 1.5,
      messages: [{ role: 'user', content: 'x' }] });
    assert.equal(r.choices[0].message.content, 'Hello! You said: x');
    const [q] = await upstream();
    assert.equal(q.body.seed, 42);
    assert.equal(q.body.frequency_penalty, 0.5);
    assert.equal(q.body.presence_penalty, -0.5);
    assert.deepEqual(q.body.logit_bias, { 50256: -100 });
    assert.equal(q.body.temperature, 1.5);
  });

  test("a model whose models-table entry rejects sampling refuses temperature, top_p and top_k", async () => {
    for (const [field, value] of [['temperature', 0.5], ['top_p', 0.9], ['top_k', 10]]) {
      const e = await failure(client().chat.completions.create({ model: 'claude-no-sampling', [field]: value,
        messages: [{ role: 'user', content: 'x' }] }));
      assert.equal(e.status, 400, field);
      assert.equal(e.code, 'unsupported_parameter', field);
      assert.equal(e.param, field);
      assert.match(e.message, /claude-no-sampling/);
    }
    await upstream(0);
  });

  test('reasoning_effort to a model without reasoning: 400 naming it', async () => {
    const e = await failure(client().chat.completions.create({ model: 'gpt-4o-mini', reasoning_effort: 'low',
      messages: [{ role: 'user', content: 'x' }] }));
    assert.equal(e.status, 400);
    assert.equal(e.code, 'unsupported_parameter');
    assert.equal(e.param, 'reasoning_effort');
  });

  test('DROP_UNSUPPORTED_PARAMS=on: the answer comes, the header names what was left out', async () => {
    const { data, response } = await client(dropping).chat.completions.create({ model: claude, seed: 42,
      logprobs: true, audio: { voice: 'alloy', format: 'mp3' }, temperature: 0.5,
      messages: [{ role: 'user', content: 'dropped' }] }).withResponse();
    assert.equal(data.choices[0].message.content, 'Hello! You said: dropped');
    const header = response.headers.get('x-chatd-dropped-params');
    assert.ok(header, 'X-Chatd-Dropped-Params is set');
    assert.deepEqual(header.split(/,\s*/).sort(), ['audio', 'logprobs', 'seed']);
    const [q] = await upstream();
    assert.equal(q.body.seed, undefined);
    assert.equal(q.body.logprobs, undefined);
    assert.equal(q.body.temperature, 0.5);
  });

  test('DROP_UNSUPPORTED_PARAMS=on, streaming: the header comes with the stream', async () => {
    const { data: stream, response } = await client(dropping).chat.completions.create({ model: claude,
      frequency_penalty: 1, stream: true, messages: [{ role: 'user', content: 'streamed drop' }] }).withResponse();
    let text = '';
    for await (const ch of stream) text += ch.choices[0]?.delta?.content ?? '';
    assert.equal(text, 'Hello! You said: streamed drop');
    assert.equal(response.headers.get('x-chatd-dropped-params'), 'frequency_penalty');
  });
});

describe('reasoning', () => {
  test('reasoning_effort to an OpenAI-compatible reasoning model: forwarded, reasoning tokens reported', async () => {
    const r = await client().chat.completions.create({ model: 'gpt-reasoner', reasoning_effort: 'high',
      messages: [{ role: 'user', content: 'Think hard' }] });
    assert.equal(r.choices[0].message.content, 'Hello! You said: Think hard');
    assert.ok(r.usage.completion_tokens_details.reasoning_tokens > 0, JSON.stringify(r.usage));
    const [q] = await upstream();
    assert.equal(q.body.model, 'o4-mini');
    assert.equal(q.body.reasoning_effort, 'high');
  });

  test('a tool loop with Anthropic thinking: thinking_blocks go back with the calls, plain and streamed', async () => {
    for (const streamed of [false, true]) {
      await fake.reset();
      await fake.script({ queue: [{ thinking: 'I need the weather.', tool_calls: [{ name: 'get_weather',
        input: { city: 'Paris' } }] }] });
      const params = { model: 'claude-sonnet-4-6', reasoning_effort: 'low', max_completion_tokens: 4096,
        tools: [WEATHER], messages: [{ role: 'user', content: 'Weather in Paris?' }] };
      let message;
      if (streamed) {
        const s = client().chat.completions.stream(params);
        message = (await s.finalChatCompletion()).choices[0].message;
      } else {
        message = (await client().chat.completions.create(params)).choices[0].message;
        assert.equal(message.reasoning_content, 'I need the weather.');
      }
      assert.equal(message.thinking_blocks.length, 1, `streamed ${streamed}`);
      assert.equal(message.thinking_blocks[0].type, 'thinking');
      assert.equal(message.thinking_blocks[0].thinking, 'I need the weather.');
      assert.ok(message.thinking_blocks[0].signature);
      // The message as the SDK returned it goes back: the provider sees the signed thinking first.
      params.messages.push(message, { role: 'tool', tool_call_id: message.tool_calls[0].id, content: 'sunny' });
      const r = await client().chat.completions.create(params);
      assert.equal(r.choices[0].message.content, 'Tool results: sunny');
      const reqs = await upstream(2);
      const sent = reqs[1].body.messages[1].content;
      assert.deepEqual(sent.map((b) => b.type), ['thinking', 'tool_use']);
      assert.equal(sent[0].signature, message.thinking_blocks[0].signature);
    }
  });

  test('Anthropic thinking comes back as reasoning_content, never in content; reasoning tokens counted', async () => {
    await fake.script({ queue: [{ thinking: 'Let me think about it.', reply: 'Forty-two.' }] });
    const r = await client().chat.completions.create({ model: 'claude-sonnet-4-6', reasoning_effort: 'medium',
      max_completion_tokens: 4096, messages: [{ role: 'user', content: 'The answer?' }] });
    const m = r.choices[0].message;
    assert.equal(m.content, 'Forty-two.');
    assert.equal(m.reasoning_content, 'Let me think about it.');
    assert.ok(r.usage.completion_tokens_details.reasoning_tokens > 0);
    const [q] = await upstream();
    assert.ok(q.body.thinking, 'thinking asked for');

    await fake.script({ queue: [{ thinking: 'Hmm, streaming thoughts.', reply: 'Done.' }] });
    const stream = await client().chat.completions.create({ model: 'claude-sonnet-4-6', reasoning_effort: 'low',
      max_completion_tokens: 4096, stream: true, messages: [{ role: 'user', content: 'Stream it' }] });
    let content = '';
    let reasoning = '';
    for await (const ch of stream) {
      content += ch.choices[0]?.delta?.content ?? '';
      reasoning += ch.choices[0]?.delta?.reasoning_content ?? '';
    }
    assert.equal(content, 'Done.');
    assert.equal(reasoning, 'Hmm, streaming thoughts.');
  });
});
