// The official `openai` SDK (package.json pins it) pointed at chatd's /v1 as its
// baseURL: chat completions, non-streaming and streaming, through chatd to each
// provider mode of the fake (Anthropic Messages; OpenAI-compatible via
// OPENAI_BASE_URL), and server-side memory with X-Session-Id.
//
// Run from the repo root: CHATD_BIN=build/chatd node --test tests/openai_sdk/

import { test, before, after, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startFake, startChatd } from './servers.mjs';

const echo = (t) => `Hello! You said: ${t}`;
const words = (t) => t.match(/\S+\s*/g).length;
const ceil4 = (n) => Math.ceil(n / 4);

let fake;
let chatd;
before(async () => {
  fake = await startFake();
  chatd = await startChatd(fake);
});
after(async () => {
  const r = chatd ? await chatd.stop() : { code: 0 };
  if (fake) await fake.stop();
  assert.equal(r.code, 0, `chatd exit: ${JSON.stringify(r)}`);
});
beforeEach(async () => {
  await fake.reset();
});

const client = (opts = {}) => new OpenAI({ apiKey: 'unused-without-auth', baseURL: chatd.baseURL, maxRetries: 0,
  timeout: 15000, ...opts });

const MODES = [
  { name: 'anthropic', model: 'claude-sonnet-4-6', path: '/v1/messages' },
  { name: 'openai-compatible', model: 'gpt-4o-mini', path: '/v1/chat/completions' },
];

for (const mode of MODES) {
  describe(`provider mode ${mode.name}`, () => {
    const system = 'Be terse.';

    /** The one provider request of the test, and the system prompt it carried. */
    async function upstream() {
      const reqs = await fake.requests();
      assert.equal(reqs.length, 1, JSON.stringify(reqs.map((q) => q.path)));
      const q = reqs[0];
      assert.equal(q.path, mode.path);
      assert.equal(q.body.model, mode.model);
      const sys = mode.name === 'anthropic' ? q.body.system : q.body.messages[0].content;
      assert.equal(sys, system);
      return q;
    }

    test('chat.completions.create, non-streaming', async () => {
      const text = `non streaming via ${mode.name}`;
      const r = await client().chat.completions.create({
        model: mode.model,
        messages: [{ role: 'system', content: system }, { role: 'user', content: text }],
      });
      assert.equal(r.object, 'chat.completion');
      assert.match(r.id, /^chatcmpl-/);
      assert.equal(r.model, mode.model);
      assert.equal(r.choices.length, 1);
      assert.equal(r.choices[0].index, 0);
      assert.equal(r.choices[0].message.role, 'assistant');
      assert.equal(r.choices[0].message.content, echo(text));
      assert.equal(r.choices[0].finish_reason, 'stop');
      assert.equal(r.usage.prompt_tokens, ceil4(system.length + text.length));
      assert.equal(r.usage.completion_tokens, words(echo(text)));
      assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
      const q = await upstream();
      assert.notEqual(q.body.stream, true);
    });

    test('chat.completions.create, streaming with include_usage', async () => {
      const text = `streaming via ${mode.name} with usage`;
      const stream = await client().chat.completions.create({
        model: mode.model,
        messages: [{ role: 'system', content: system }, { role: 'user', content: text }],
        stream: true,
        stream_options: { include_usage: true },
      });
      const chunks = [];
      for await (const c of stream) chunks.push(c);
      assert.ok(chunks.length >= 3, `${chunks.length} chunks`);
      const ids = new Set(chunks.map((c) => c.id));
      assert.equal(ids.size, 1);
      for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.equal(c.model, mode.model);
      }
      assert.equal(chunks[0].choices[0].delta.role, 'assistant');
      const content = chunks.flatMap((c) => c.choices.map((ch) => ch.delta.content ?? '')).join('');
      assert.equal(content, echo(text));
      const last = chunks.at(-1);
      assert.deepEqual(last.choices, []);
      assert.equal(last.usage.prompt_tokens, ceil4(system.length + text.length));
      assert.equal(last.usage.completion_tokens, words(echo(text)));
      assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
      assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
      for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
      const q = await upstream();
      assert.equal(q.body.stream, true);
    });

    test('streaming without include_usage sends no usage chunk', async () => {
      const stream = await client().chat.completions.create({
        model: mode.model, stream: true,
        messages: [{ role: 'system', content: system }, { role: 'user', content: 'no usage please' }],
      });
      const chunks = [];
      for await (const c of stream) chunks.push(c);
      assert.ok(chunks.every((c) => c.usage === undefined || c.usage === null));
      assert.ok(chunks.every((c) => c.choices.length === 1));
      assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
      await upstream();
    });

    test('chat.completions.stream().finalChatCompletion() assembles the message', async () => {
      const text = `helper stream via ${mode.name}`;
      const runner = client().chat.completions.stream({
        model: mode.model,
        messages: [{ role: 'system', content: system }, { role: 'user', content: text }],
        stream_options: { include_usage: true },
      });
      const deltas = [];
      runner.on('content', (delta) => deltas.push(delta));
      const final = await runner.finalChatCompletion();
      assert.equal(final.choices[0].message.role, 'assistant');
      assert.equal(final.choices[0].message.content, echo(text));
      assert.equal(final.choices[0].finish_reason, 'stop');
      assert.equal(deltas.join(''), echo(text));
      assert.equal(final.usage.completion_tokens, words(echo(text)));
      assert.equal(await runner.finalContent(), echo(text));
      await upstream();
    });
  });
}

describe('server-side memory', () => {
  test('X-Session-Id in defaultHeaders: the second call sees the first turn', async () => {
    const sid = 'sdk-memory-1';
    const c = client({ defaultHeaders: { 'X-Session-Id': sid } });
    const first = 'My name is Ada.';
    const second = 'What is my name?';
    const r1 = await c.chat.completions.create({ model: 'claude-sonnet-4-6', messages: [{ role: 'user', content: first }] });
    assert.equal(r1.choices[0].message.content, echo(first));
    // Only the last user message is the new turn: the history is chatd's.
    const r2 = await c.chat.completions.create({ model: 'claude-sonnet-4-6', messages: [{ role: 'user', content: second }] });
    assert.equal(r2.choices[0].message.content, echo(second));
    const reqs = await fake.requests();
    assert.equal(reqs.length, 2);
    assert.deepEqual(reqs[1].body.messages, [
      { role: 'user', content: first },
      { role: 'assistant', content: echo(first) },
      { role: 'user', content: second },
    ]);
    const s = await (await fetch(`${chatd.url}/v1/sessions/${sid}`)).json();
    assert.equal(s.turn_count, 2);
    assert.equal(s.model, 'claude-sonnet-4-6');
  });

  test('X-Session-Id per request, streaming, OpenAI-compatible provider', async () => {
    const sid = 'sdk-memory-2';
    const c = client();
    const opts = { headers: { 'X-Session-Id': sid } };
    const collect = async (content) => {
      const stream = await c.chat.completions.create(
        { model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content }] }, opts);
      let text = '';
      for await (const ch of stream) text += ch.choices[0]?.delta?.content ?? '';
      return text;
    };
    assert.equal(await collect('remember the number 42'), echo('remember the number 42'));
    assert.equal(await collect('which number?'), echo('which number?'));
    const reqs = await fake.requests();
    assert.equal(reqs.length, 2);
    assert.equal(reqs[1].path, '/v1/chat/completions');
    assert.deepEqual(reqs[1].body.messages.slice(1), [
      { role: 'user', content: 'remember the number 42' },
      { role: 'assistant', content: echo('remember the number 42') },
      { role: 'user', content: 'which number?' },
    ]);
  });

  test('without a session the request carries the whole conversation and nothing is stored', async () => {
    const messages = [
      { role: 'system', content: 'Stateless.' },
      { role: 'user', content: 'first' },
      { role: 'assistant', content: 'an answer' },
      { role: 'user', content: 'second' },
    ];
    const r = await client().chat.completions.create({ model: 'claude-sonnet-4-6', messages });
    assert.equal(r.choices[0].message.content, echo('second'));
    const [q] = await fake.requests();
    assert.equal(q.body.system, 'Stateless.');
    assert.deepEqual(q.body.messages, messages.slice(1));
    const list = await (await fetch(`${chatd.url}/v1/sessions`)).json();
    assert.ok(!list.data.some((s) => s.turn_count > 0 && s.system_prompt === 'Stateless.'));
  });
});
