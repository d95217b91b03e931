// The official `@anthropic-ai/sdk` (package.json pins it) pointed at chatd as its
// baseURL: POST /v1/messages (create, stream with its helpers, a tool loop,
// images, memory with X-Session-Id), POST /v1/messages/count_tokens, both
// anthropic-version values, the typed error of each refusal chatd makes (401,
// 404 model, 409 busy session, 413, 429 with retry-after), and cancellation by
// AbortController seen at the fake provider; each through an Anthropic model and
// an OpenAI-compatible one (the same fake, both wire formats).
//
// Run from the repo root: CHATD_BIN=build/chatd node --test tests/anthropic_sdk/

import { test, before, after, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { startFake, startChatd } from '../openai_sdk/servers.mjs';

const echo = (t) => `Hello! You said: ${t}`;
const TOKEN = 'chatd-anthropic-sdk-token';
// A 1x1 PNG.
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';

let fake;
const servers = {};
before(async () => {
  fake = await startFake();
  [servers.open, servers.auth, servers.limited, servers.small] = await Promise.all([
    startChatd(fake),
    startChatd(fake, { API_TOKEN: TOKEN }),
    startChatd(fake, { RATE_LIMIT: '1/minute' }),
    startChatd(fake, { MAX_BODY_SIZE: '4096' }),
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

/** An SDK client on chatd's base URL (the SDK adds /v1 itself). */
const client = (server = servers.open, opts = {}) => new Anthropic({ apiKey: 'unused-without-auth', baseURL: server.url,
  maxRetries: 0, timeout: 15000, ...opts });

const MODELS = [
  { name: 'anthropic', model: 'claude-sonnet-4-6', path: '/v1/messages' },
  { name: 'openai-compatible', model: 'gpt-4o-mini', path: '/v1/chat/completions' },
];

/** The provider requests of the test (asserting how many). */
async function upstream(n = 1) {
  const reqs = await fake.requests();
  assert.equal(reqs.length, n, JSON.stringify(reqs.map((q) => q.path)));
  return reqs;
}

/** The text of the last user message the provider got, whatever its format. */
function lastUserText(q) {
  const msgs = q.body.messages.filter((m) => m.role === 'user');
  const c = msgs[msgs.length - 1].content;
  if (typeof c === 'string') return c;
  return c.filter((b) => b.type === 'text').map((b) => b.text).join('');
}

async function rejectsWith(promise, cls, status) {
  let err;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, 'expected an error');
  assert.ok(err instanceof cls, `${err?.constructor?.name} is not ${cls.name}: ${err?.message}`);
  assert.ok(err instanceof Anthropic.APIError);
  assert.equal(err.status, status);
  assert.equal(err.error?.type, 'error', JSON.stringify(err.error));
  assert.ok(err.requestID, 'request-id header');
  assert.equal(err.error.request_id, err.requestID);
  return err;
}

for (const mode of MODELS) {
  describe(`messages via ${mode.name} (${mode.model})`, () => {
    test('messages.create', async () => {
      const text = `create via ${mode.name}`;
      const { data: r, response } = await client().messages.create({
        model: mode.model, max_tokens: 100, system: 'Be terse.', messages: [{ role: 'user', content: text }],
      }).withResponse();
      assert.equal(r.type, 'message');
      assert.equal(r.role, 'assistant');
      assert.match(r.id, /^msg_/);
      assert.equal(r.model, mode.model);
      assert.deepEqual(r.content.map((b) => b.type), ['text']);
      assert.equal(r.content[0].text, echo(text));
      assert.equal(r.stop_reason, 'end_turn');
      assert.equal(r.stop_sequence, null);
      assert.ok(r.usage.input_tokens > 0);
      assert.ok(r.usage.output_tokens > 0);
      assert.equal(typeof r.usage.cache_read_input_tokens, 'number');
      assert.equal(typeof r.usage.cache_creation_input_tokens, 'number');
      assert.ok(response.headers.get('request-id'));
      assert.equal(r._request_id, response.headers.get('request-id'));
      const [q] = await upstream();
      assert.equal(q.path, mode.path);
      assert.equal(lastUserText(q), text);
      if (mode.name === 'anthropic') assert.equal(q.body.system, 'Be terse.');
      else assert.equal(q.body.messages[0].content, 'Be terse.');
    });

    test('messages.stream: text events, finalMessage(), the exact event sequence', async () => {
      const text = `stream via ${mode.name} please`;
      const stream = client().messages.stream({
        model: mode.model, max_tokens: 100, messages: [{ role: 'user', content: text }],
      });
      let texts = '';
      const types = [];
      stream.on('text', (t) => { texts += t; });
      stream.on('streamEvent', (e) => { types.push(e.type); });
      const final = await stream.finalMessage();
      assert.equal(texts, echo(text));
      assert.equal(final.content[0].text, echo(text));
      assert.equal(final.stop_reason, 'end_turn');
      assert.ok(final.usage.output_tokens > 0);
      assert.ok(final.usage.input_tokens > 0, JSON.stringify(final.usage));
      const seq = types.filter((t) => t !== 'ping');
      assert.equal(seq[0], 'message_start');
      assert.equal(seq[1], 'content_block_start');
      assert.deepEqual(seq.slice(-3), ['content_block_stop', 'message_delta', 'message_stop']);
      assert.ok(seq.slice(2, -3).every((t) => t === 'content_block_delta'), seq.join(','));
      const [q] = await upstream();
      assert.equal(q.body.stream, true);
    });

    test('a tool loop: tool_use, then tool_result', async () => {
      const tools = [{
        name: 'get_weather', description: 'The weather in a city',
        input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      }];
      const ask = 'Weather in Paris? [[fake:{"tool_calls":[{"name":"get_weather","input":{"city":"Paris"}}]}]]';
      const first = await client().messages.create({
        model: mode.model, max_tokens: 200, tools, messages: [{ role: 'user', content: ask }],
      });
      assert.equal(first.stop_reason, 'tool_use');
      const call = first.content.find((b) => b.type === 'tool_use');
      assert.ok(call, JSON.stringify(first.content));
      assert.equal(call.name, 'get_weather');
      assert.deepEqual(call.input, { city: 'Paris' });
      const second = await client().messages.create({
        model: mode.model, max_tokens: 200, tools,
        messages: [
          { role: 'user', content: ask },
          { role: 'assistant', content: first.content },
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: 'sunny, 21 C' }] },
        ],
      });
      assert.equal(second.stop_reason, 'end_turn');
      assert.equal(second.content[0].text, 'Tool results: sunny, 21 C');
      const reqs = await upstream(2);
      const up = reqs[1].body;
      if (mode.name === 'anthropic') {
        assert.equal(up.tools[0].name, 'get_weather');
        assert.deepEqual(up.tools[0].input_schema, tools[0].input_schema);
        const last = up.messages[up.messages.length - 1];
        assert.equal(last.content[0].type, 'tool_result');
        assert.equal(last.content[0].tool_use_id, call.id);
      } else {
        assert.equal(up.tools[0].function.name, 'get_weather');
        const tool = up.messages.find((m) => m.role === 'tool');
        assert.equal(tool.tool_call_id, call.id);
        assert.equal(tool.content, 'sunny, 21 C');
      }
    });

    test('a streamed tool call: input_json_delta pieces make the input', async () => {
      const tools = [{ name: 'lookup', input_schema: { type: 'object', properties: { q: { type: 'string' } } } }];
      const stream = client().messages.stream({
        model: mode.model, max_tokens: 200, tools,
        messages: [{ role: 'user', content: 'find it [[fake:{"tool_calls":[{"name":"lookup","input":{"q":"chatd streams"}}]}]]' }],
      });
      const deltas = [];
      stream.on('inputJson', (partial) => { deltas.push(partial); });
      const final = await stream.finalMessage();
      assert.equal(final.stop_reason, 'tool_use');
      const call = final.content.find((b) => b.type === 'tool_use');
      assert.deepEqual(call.input, { q: 'chatd streams' });
      assert.ok(deltas.length >= 1);
    });

    test('an image block reaches the provider', async () => {
      const r = await client().messages.create({
        model: mode.model, max_tokens: 100,
        messages: [{ role: 'user', content: [
          { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG } },
          { type: 'text', text: 'what is this?' },
        ] }],
      });
      assert.equal(r.content[0].text, echo('what is this?'));
      const [q] = await upstream();
      const last = q.body.messages[q.body.messages.length - 1];
      if (mode.name === 'anthropic') {
        const img = last.content.find((b) => b.type === 'image');
        assert.equal(img.source.data, PNG);
      } else {
        const img = last.content.find((p) => p.type === 'image_url');
        assert.equal(img.image_url.url, `data:image/png;base64,${PNG}`);
      }
    });

    test('memory: X-Session-Id keeps the history, the last user message is the turn', async () => {
      const sid = `an-sdk-${mode.name}-${Date.now()}`;
      const c = client(servers.open, { defaultHeaders: { 'X-Session-Id': sid } });
      await c.messages.create({ model: mode.model, max_tokens: 50, messages: [{ role: 'user', content: 'first' }] });
      const r = await c.messages.create({
        model: mode.model, max_tokens: 50,
        messages: [{ role: 'user', content: 'ignored' }, { role: 'assistant', content: 'ignored too' },
          { role: 'user', content: 'second' }],
      });
      assert.equal(r.content[0].text, echo('second'));
      const reqs = await upstream(2);
      const texts = JSON.stringify(reqs[1].body.messages);
      assert.match(texts, /first/);
      assert.match(texts, /Hello! You said: first/);
      assert.doesNotMatch(texts, /ignored/);
    });

    test('cancellation: AbortController closes the provider request', async () => {
      await fake.script({ default: { reply_words: 50, gap_ms: 200 } });
      const ac = new AbortController();
      const stream = await client().messages.create({
        model: mode.model, max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'long one' }],
      }, { signal: ac.signal });
      let n = 0;
      try {
        for await (const ev of stream) {
          if (ev.type === 'content_block_delta' && ++n === 2) ac.abort();
        }
      } catch (e) {
        // The SDK ends the iteration quietly on an abort, or raises APIUserAbortError.
        assert.ok(e instanceof Anthropic.APIUserAbortError, String(e));
      }
      assert.equal(n, 2);
      let q;
      for (let i = 0; i < 50; i++) {
        [q] = await fake.requests();
        if (q?.outcome) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      assert.equal(q.outcome, 'client_closed');
    });
  });
}

describe('anthropic-version', () => {
  test('2026-10-21 (the SDK default) refuses temperature as an extra input', async () => {
    const e = await rejectsWith(client().messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, temperature: 0.5, messages: [{ role: 'user', content: 'hi' }],
    }), Anthropic.BadRequestError, 400);
    assert.match(e.message, /temperature: Extra inputs are not permitted/);
    assert.equal(e.error.error.type, 'invalid_request_error');
    assert.equal((await fake.requests()).length, 0);
  });

  for (const mode of MODELS) {
    test(`2023-06-01 takes temperature; stop_sequences and metadata.user_id are mapped (${mode.name})`, async () => {
      const c = client(servers.open, { defaultHeaders: { 'anthropic-version': '2023-06-01' } });
      const r = await c.messages.create({
        model: mode.model, max_tokens: 10, temperature: 0.5, stop_sequences: ['STOP'], metadata: { user_id: 'u-7' },
        messages: [{ role: 'user', content: 'hi' }],
      });
      assert.equal(r.type, 'message');
      const [q] = await upstream();
      assert.equal(q.body.temperature, 0.5);
      if (mode.name === 'anthropic') {
        assert.deepEqual(q.body.stop_sequences, ['STOP']);
        assert.equal(q.body.metadata.user_id, 'u-7');
      } else {
        assert.deepEqual(q.body.stop, ['STOP']);
        assert.equal(q.body.user, 'u-7');
      }
    });
  }

  test('an unknown version is a 400', async () => {
    const c = client(servers.open, { defaultHeaders: { 'anthropic-version': '2020-01-01' } });
    const e = await rejectsWith(c.messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }],
    }), Anthropic.BadRequestError, 400);
    assert.match(e.message, /anthropic-version/);
  });

  test('2026-10-21 refuses a document block in an assistant message', async () => {
    const doc = { type: 'document', source: { type: 'text', media_type: 'text/plain', data: 'x' } };
    await rejectsWith(client().messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10,
      messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: [doc] }, { role: 'user', content: 'b' }],
    }), Anthropic.BadRequestError, 400);
  });
});

describe('typed errors for chatd refusals', () => {
  test('401 AuthenticationError: wrong key (Bearer), right key works, x-api-key works too', async () => {
    const e = await rejectsWith(client(servers.auth, { apiKey: 'wrong' }).messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }],
    }), Anthropic.AuthenticationError, 401);
    assert.equal(e.error.error.type, 'authentication_error');
    const ok = await client(servers.auth, { apiKey: TOKEN }).messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }],
    });
    assert.equal(ok.content[0].text, echo('hi'));
    const viaHeader = new Anthropic({ apiKey: null, baseURL: servers.auth.url, maxRetries: 0,
      defaultHeaders: { 'x-api-key': TOKEN } });
    const ok2 = await viaHeader.messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }],
    });
    assert.equal(ok2.content[0].text, echo('hi'));
  });

  test('404 NotFoundError: an unknown model', async () => {
    const e = await rejectsWith(client().messages.create({
      model: 'claude-no-such-model', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }],
    }), Anthropic.NotFoundError, 404);
    assert.equal(e.error.error.type, 'not_found_error');
    assert.match(e.message, /claude-no-such-model/);
  });

  test('400 BadRequestError: max_tokens missing', async () => {
    const e = await rejectsWith(client().messages.create({
      model: 'claude-sonnet-4-6', messages: [{ role: 'user', content: 'hi' }],
    }), Anthropic.BadRequestError, 400);
    assert.match(e.message, /max_tokens/);
  });

  test('409 ConflictError: a session already answering', async () => {
    await fake.script({ queue: [{ header_delay_ms: 1500 }] });
    const sid = `busy-${Date.now()}`;
    const c = client(servers.open, { defaultHeaders: { 'X-Session-Id': sid } });
    const body = { model: 'claude-sonnet-4-6', max_tokens: 10, messages: [{ role: 'user', content: 'slow' }] };
    const first = c.messages.create(body);
    await new Promise((res) => setTimeout(res, 400));
    const e = await rejectsWith(c.messages.create(body), Anthropic.ConflictError, 409);
    assert.equal(e.error.error.type, 'conflict_error');
    assert.equal(e.error.error.details.error_code, 'session_busy');
    await first;
  });

  test('413 ContentTooLargeError: a body over MAX_BODY_SIZE', async () => {
    const e = await rejectsWith(client(servers.small).messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, messages: [{ role: 'user', content: 'x'.repeat(8000) }],
    }), Anthropic.APIError, 413);
    assert.equal(e.error.error.type, 'request_too_large');
    assert.equal((await fake.requests()).length, 0);
  });

  test('429 RateLimitError with retry-after', async () => {
    const c = client(servers.limited);
    const body = { model: 'claude-sonnet-4-6', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] };
    await c.messages.create(body);
    const e = await rejectsWith(c.messages.create(body), Anthropic.RateLimitError, 429);
    assert.equal(e.error.error.type, 'rate_limit_error');
    assert.ok(Number(e.headers.get('retry-after')) >= 1, e.headers.get('retry-after'));
  });

  test('a provider 529 before the first byte of a stream is a real status (OverloadedError class by status 503)', async () => {
    await fake.script({ default: { status: 529 } });
    const e = await rejectsWith(client().messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'hi' }],
    }), Anthropic.InternalServerError, 503);
    assert.equal(e.error.error.type, 'overloaded_error');
  });

  test('an error after the stream started is an error event: the SDK raises APIError', async () => {
    await fake.script({ default: { reply_words: 6, fault: 'midstream_error', after: 2 } });
    const stream = client().messages.stream({
      model: 'claude-sonnet-4-6', max_tokens: 50, messages: [{ role: 'user', content: 'hi' }],
    });
    let text = '';
    stream.on('text', (t) => { text += t; });
    let err;
    try {
      await stream.finalMessage();
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof Anthropic.APIError, String(err));
    assert.equal(text, 'w1 w2 ');
  });
});

describe('count_tokens', () => {
  for (const mode of MODELS) {
    test(`${mode.model}: ${mode.name === 'anthropic' ? "the provider's count" : "chatd's estimate"}`, async () => {
      const { data: r, response } = await client().messages.countTokens({
        model: mode.model, system: 'abcd', messages: [{ role: 'user', content: 'abcdefgh' }],
      }).withResponse();
      assert.equal(r.input_tokens, 3);
      const reqs = await fake.requests();
      if (mode.name === 'anthropic') {
        assert.equal(response.headers.get('x-chatd-token-count'), 'provider');
        assert.equal(reqs.length, 1);
        assert.equal(reqs[0].path, '/v1/messages/count_tokens');
        assert.equal(reqs[0].body.model, mode.model);
        assert.equal(reqs[0].body.system, 'abcd');
        assert.equal(reqs[0].body.max_tokens, undefined);
      } else {
        assert.equal(response.headers.get('x-chatd-token-count'), 'estimate');
        assert.equal(reqs.length, 0);
      }
    });
  }
});

describe('prompt caching', () => {
  const long = 'lorem ipsum dolor sit amet '.repeat(800);
  const conversation = (cc) => {
    const messages = [];
    for (let i = 0; i < 4; i++) {
      messages.push({ role: 'user', content: [{ type: 'text', text: `${long} ${i}`, ...(cc ? { cache_control: cc } : {}) }] });
      messages.push({ role: 'assistant', content: `answer ${i} ${long}` });
    }
    messages.push({ role: 'user', content: 'and now?' });
    return messages;
  };
  const markers = (q) => JSON.stringify(q.body).split('"cache_control"').length - 1;

  test('without client markers chatd places its own breakpoints', async () => {
    await client().messages.create({ model: 'claude-sonnet-4-6', max_tokens: 10, system: long, messages: conversation() });
    const [q] = await upstream();
    assert.ok(markers(q) >= 1 && markers(q) <= 4, String(markers(q)));
  });

  test('four client breakpoints: chatd adds none, the provider accepts', async () => {
    const r = await client().messages.create({
      model: 'claude-sonnet-4-6', max_tokens: 10, system: long, messages: conversation({ type: 'ephemeral' }),
    });
    assert.equal(r.content[0].text, echo('and now?'));
    const [q] = await upstream();
    assert.equal(markers(q), 4);
  });

  test('three client breakpoints: chatd adds at most one', async () => {
    const messages = conversation({ type: 'ephemeral' });
    delete messages[0].content[0].cache_control;
    await client().messages.create({ model: 'claude-sonnet-4-6', max_tokens: 10, system: long, messages });
    const [q] = await upstream();
    assert.ok(markers(q) >= 3 && markers(q) <= 4, String(markers(q)));
  });
});
