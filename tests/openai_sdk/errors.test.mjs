// The official `openai` SDK's typed errors when chatd is its baseURL: 400
// (BadRequestError), 401 (AuthenticationError), 429 (RateLimitError) and the
// 5xx class (InternalServerError), each with its status and chatd's message;
// and an error in the middle of a stream. maxRetries: 0 throughout, so every
// status is the first answer.
//
// Run from the repo root: CHATD_BIN=build/chatd node --test tests/openai_sdk/

import { test, before, after, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startFake, startChatd } from './servers.mjs';

const TOKEN = 'chatd-sdk-admin-token';
let fake;
const servers = {};
before(async () => {
  fake = await startFake();
  [servers.open, servers.auth, servers.limited] = await Promise.all([
    startChatd(fake),
    startChatd(fake, { API_TOKEN: TOKEN }),
    startChatd(fake, { RATE_LIMIT: '1/minute' }),
  ]);
});
after(async () => {
  const exits = [];
  for (const s of Object.values(servers)) if (s) exits.push(await s.stop());
  if (fake) await fake.stop();
  for (const r of exits) assert.equal(r.code, 0, `chatd exit: ${JSON.stringify(r)}`);
});
beforeEach(async () => {
  await fake.reset();
});

const client = (server, opts = {}) => new OpenAI({ apiKey: 'unused-without-auth', baseURL: server.baseURL,
  maxRetries: 0, timeout: 15000, ...opts });
const hello = (model = 'claude-sonnet-4-6', extra = {}) => ({
  model, messages: [{ role: 'user', content: 'hello' }], ...extra,
});

/** Asserts that promise rejects with an instance of cls with this status; returns the error. */
async function rejectsWith(promise, cls, status) {
  let err;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, 'expected an error');
  assert.ok(err instanceof cls, `${err?.constructor?.name} is not ${cls.name}: ${err?.message}`);
  assert.ok(err instanceof OpenAI.APIError);
  assert.equal(err.status, status);
  assert.equal(typeof err.message, 'string');
  return err;
}

describe('400 BadRequestError', () => {
  test('empty messages', async () => {
    const e = await rejectsWith(client(servers.open).chat.completions.create({ model: 'claude-sonnet-4-6', messages: [] }),
      OpenAI.BadRequestError, 400);
    assert.match(e.message, /messages must be a non-empty array/);
    assert.equal(e.param, 'messages');
    assert.equal(e.type, 'invalid_request_error');
    assert.equal((await fake.requests()).length, 0);
  });

  test('last message not from the user', async () => {
    const e = await rejectsWith(client(servers.open).chat.completions.create({
      model: 'claude-sonnet-4-6', messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }],
    }), OpenAI.BadRequestError, 400);
    assert.match(e.message, /last message must be a non-empty user message/);
  });

  test('unknown model, streaming request', async () => {
    const e = await rejectsWith(client(servers.open).chat.completions.create(hello('no-such-model', { stream: true })),
      OpenAI.BadRequestError, 400);
    assert.match(e.message, /no-such-model/);
  });

  test('the provider\'s own 400 is passed on', async () => {
    await fake.script({ default: { status: 400, error_message: 'prompt is too long: 300000 tokens' } });
    const e = await rejectsWith(client(servers.open).chat.completions.create(hello()), OpenAI.BadRequestError, 400);
    assert.match(e.message, /prompt is too long/);
  });
});

describe('401 AuthenticationError', () => {
  test('wrong apiKey', async () => {
    const e = await rejectsWith(client(servers.auth, { apiKey: 'wrong-token' }).chat.completions.create(hello()),
      OpenAI.AuthenticationError, 401);
    assert.ok(e.message.length > 0);
    assert.match(e.headers.get('www-authenticate') ?? '', /^Bearer realm="chatd"/);
    assert.equal((await fake.requests()).length, 0);
  });

  test('the right apiKey works', async () => {
    const r = await client(servers.auth, { apiKey: TOKEN }).chat.completions.create(hello());
    assert.equal(r.choices[0].message.content, 'Hello! You said: hello');
  });
});

describe('429 RateLimitError', () => {
  test('RATE_LIMIT=1/minute: the second call', async () => {
    const c = client(servers.limited);
    const r = await c.chat.completions.create(hello());
    assert.equal(r.choices[0].message.content, 'Hello! You said: hello');
    const e = await rejectsWith(c.chat.completions.create(hello()), OpenAI.RateLimitError, 429);
    assert.ok(e.message.length > 0);
    assert.ok(Number(e.headers.get('retry-after')) >= 1, e.headers.get('retry-after'));
    assert.equal((await fake.requests()).length, 1);
  });

  test('the provider\'s 429 comes out as RateLimitError too', async () => {
    await fake.script({ default: { status: 429, retry_after: '7' } });
    const e = await rejectsWith(client(servers.open).chat.completions.create(hello()), OpenAI.RateLimitError, 429);
    assert.match(e.message, /rate limit/);
    assert.equal(e.headers.get('retry-after'), '7');
  });
});

describe('5xx InternalServerError', () => {
  for (const [label, model, variant] of [['Anthropic', 'claude-sonnet-4-6', undefined],
    ['OpenAI-compatible', 'gpt-4o-mini', 'openai']]) {
    test(`provider 500 -> chatd 502 (${label})`, async () => {
      await fake.script({ default: { status: 500, error_message: 'kaboom upstream', ...(variant ? { variant } : {}) } });
      const e = await rejectsWith(client(servers.open).chat.completions.create(hello(model)),
        OpenAI.InternalServerError, 502);
      assert.match(e.message, /kaboom upstream/);
      assert.equal(e.type, 'server_error');
    });
  }

  test('provider 500 on a streaming request: a real status, InternalServerError', async () => {
    // chatd opens the SSE stream only at the first token (or after a heartbeat
    // interval of silence), so a provider failure before it keeps its HTTP
    // status and the SDK raises its typed error.
    await fake.script({ default: { status: 500, error_message: 'kaboom upstream' } });
    const e = await rejectsWith(
      client(servers.open).chat.completions.create(hello('claude-sonnet-4-6', { stream: true })),
      OpenAI.InternalServerError, 502);
    assert.match(e.message, /kaboom upstream/);
  });

  test('provider overloaded (529) -> chatd 503', async () => {
    await fake.script({ default: { status: 529 } });
    const e = await rejectsWith(client(servers.open).chat.completions.create(hello()), OpenAI.InternalServerError, 503);
    assert.match(e.message, /overloaded/);
  });
});

describe('an error in the middle of a stream', () => {
  test('the SDK raises APIError after the first chunks', async () => {
    await fake.script({ default: { reply_words: 6, fault: 'midstream_error', after: 2 } });
    const stream = await client(servers.open).chat.completions.create(hello('claude-sonnet-4-6', { stream: true }));
    let text = '';
    let err;
    try {
      for await (const ch of stream) text += ch.choices[0]?.delta?.content ?? '';
    } catch (e) {
      err = e;
    }
    assert.equal(text, 'w1 w2 ');
    assert.ok(err instanceof OpenAI.APIError, String(err));
    assert.match(err.message, /overloaded/i);
  });
});
