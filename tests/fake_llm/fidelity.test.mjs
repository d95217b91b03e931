// Fidelity tests of the fake LLM provider (tests/fake_llm/server.mjs), using the official
// SDKs (@anthropic-ai/sdk, openai) as independent reference clients. What each fault must
// look like to the SDKs is docs/PROTOCOLS.md section D2.
//
// Run from the repo root: node --test tests/fake_llm/

import { test, before, after, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { startFake, stopFake } from './spawn.mjs';


let fake;
let BASE;
before(async () => {
  fake = await startFake();
  BASE = fake.base;
});
after(async () => {
  await stopFake(fake);
});

async function ctl(p, body) {
  const r = await fetch(BASE + p, body === undefined ? {} : { method: 'POST', body: JSON.stringify(body) });
  const j = await r.json();
  if (r.status !== 200) throw new Error(`${p}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}
const script = (s) => ctl('/_fake/script', s);
const requests = async () => (await ctl('/_fake/requests')).requests;
const stats = () => ctl('/_fake/stats');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(fn, what, timeoutMs = 3000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const client = (opts = {}) => new Anthropic({ apiKey: 'sk-ant-test', baseURL: BASE, maxRetries: 0, timeout: 10_000, ...opts });
const client2023 = (opts = {}) => client({ defaultHeaders: { 'anthropic-version': '2023-06-01' }, ...opts });

const MODEL = 'claude-fake-1';
const params = (text, extra = {}) => ({ model: MODEL, max_tokens: 256, messages: [{ role: 'user', content: text }], ...extra });
const expectedReply = (text) => `Hello! You said: ${text}`;
const tokensFor = (chars) => Math.ceil(chars / 4);

// Raw HTTP POST that collects the body chunk by chunk as the client receives them.
function rawPost(p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = http.request(BASE + p, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': 'k', 'anthropic-version': '2023-06-01', 'content-length': data.length, ...headers },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, chunks, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}

// Minimal WHATWG SSE parse of a complete body (docs/PROTOCOLS.md C), for wire-shape checks.
function parseSse(text) {
  const events = [];
  let ev = '';
  let data = [];
  for (const line of text.split(/\r\n|\r|\n/)) {
    if (line === '') {
      if (data.length) events.push({ event: ev || null, data: data.join('\n') });
      ev = '';
      data = [];
      continue;
    }
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') ev = value;
    else if (field === 'data') data.push(value);
  }
  return events;
}

beforeEach(async () => {
  await ctl('/_fake/reset', {});
});

describe('anthropic: success paths', () => {
  for (const [label, mk] of [['version 2026-10-21 (SDK default)', client], ['version 2023-06-01', client2023]]) {
    test(`non-streaming create, ${label}`, async () => {
      const text = 'What is the capital of France?';
      const msg = await mk().messages.create(params(text, { system: 'Be terse.' }));
      assert.equal(msg.type, 'message');
      assert.equal(msg.role, 'assistant');
      assert.equal(msg.model, MODEL);
      assert.match(msg.id, /^msg_[A-Za-z0-9]{24}$/);
      assert.deepEqual(msg.content, [{ type: 'text', text: expectedReply(text) }]);
      assert.equal(msg.stop_reason, 'end_turn');
      assert.equal(msg.stop_sequence, null);
      assert.equal(msg.usage.input_tokens, tokensFor('Be terse.'.length + text.length));
      assert.equal(msg.usage.output_tokens, expectedReply(text).split(' ').length);
      assert.equal(msg.usage.cache_creation_input_tokens, 0);
      assert.equal(msg.usage.cache_read_input_tokens, 0);
      assert.match(msg._request_id, /^req_[A-Za-z0-9]{24}$/);
      const [r] = await requests();
      assert.equal(r.id, msg._request_id);
      assert.equal(r.outcome, 'completed');
      assert.equal(r.path, '/v1/messages');
      assert.equal(r.headers.authorization, 'Bearer sk-ant-test');
      assert.equal(r.headers['anthropic-version'], label.includes('2023') ? '2023-06-01' : '2026-10-21');
      assert.equal(r.body.messages[0].content, text);
      assert.ok(r.finished_at_ms >= r.received_at_ms);
    });
  }

  test('raw stream iteration: event order, one text_delta per word', async () => {
    const text = 'one two three';
    const stream = await client().messages.create(params(text, { stream: true }));
    const types = [];
    let assembled = '';
    const deltas = [];
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'content_block_delta') {
        assert.equal(ev.index, 0);
        assert.equal(ev.delta.type, 'text_delta');
        deltas.push(ev.delta.text);
        assembled += ev.delta.text;
      }
      if (ev.type === 'message_start') {
        assert.equal(ev.message.stop_reason, null);
        assert.deepEqual(ev.message.content, []);
        assert.equal(ev.message.usage.input_tokens, tokensFor(text.length));
      }
      if (ev.type === 'message_delta') {
        assert.equal(ev.delta.stop_reason, 'end_turn');
        assert.equal(ev.usage.output_tokens, 6);
      }
    }
    assert.deepEqual(deltas, ['Hello! ', 'You ', 'said: ', 'one ', 'two ', 'three']);
    assert.equal(assembled, expectedReply(text));
    assert.deepEqual(types, [
      'message_start', 'content_block_start',
      ...Array(6).fill('content_block_delta'),
      'content_block_stop', 'message_delta', 'message_stop',
    ]);
  });

  test('messages.stream().finalMessage() assembles message and usage (both versions)', async () => {
    for (const mk of [client, client2023]) {
      const text = 'stream me please';
      const s = mk().messages.stream(params(text));
      const msg = await s.finalMessage();
      assert.equal(msg.content[0].text, expectedReply(text));
      assert.equal(msg.stop_reason, 'end_turn');
      assert.equal(msg.usage.input_tokens, tokensFor(text.length));
      assert.equal(msg.usage.output_tokens, 6);
      assert.equal(await s.finalText(), expectedReply(text));
    }
  });

  test('wire shape: headers, event: lines match "type", LF, ping and padding knobs', async () => {
    await script({ default: { ping: true, pad_json: true, shape: '2026' } });
    const r = await rawPost('/v1/messages', params('hi there', { stream: true }));
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'text/event-stream; charset=utf-8');
    assert.match(r.headers['request-id'], /^req_[A-Za-z0-9]{24}$/);
    const text = r.body.toString('utf8');
    assert.ok(!text.includes('\r'));
    assert.ok(text.endsWith('\n\n'));
    const events = parseSse(text);
    for (const e of events) {
      assert.ok(e.event, 'every event has an event: line');
      assert.equal(JSON.parse(e.data).type, e.event);
      if (e.event !== 'ping') assert.match(e.data, / +\}$/, 'padded before the final brace');
    }
    assert.ok(events.filter((e) => e.event === 'ping').length >= 3);
    const start = JSON.parse(events[0].data);
    assert.deepEqual(start.message.usage.cache_creation, { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 });
    const md = JSON.parse(events.find((e) => e.event === 'message_delta').data);
    assert.equal(md.usage.input_tokens, tokensFor('hi there'.length));
    assert.equal(md.usage.output_tokens, 5);
    assert.equal(md.delta.stop_details, null);
    // The SDK filters pings and tolerates the padding.
    const msg = await client().messages.stream(params('hi there')).finalMessage();
    assert.equal(msg.content[0].text, expectedReply('hi there'));
  });

  test('non-streaming content-type is application/json', async () => {
    const r = await rawPost('/v1/messages', params('x'));
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(Number(r.headers['content-length']), r.body.length);
  });

  test('reply, reply_words, stop_reason, usage knobs', async () => {
    await script({ queue: [
      { reply: 'Custom  reply\nhere', stop_reason: 'max_tokens', usage: { cache_read_input_tokens: 42 } },
      { reply_words: 4 },
      { reply: '' },
    ] });
    const s = client().messages.stream(params('x'));
    const deltas = [];
    s.on('text', (t) => deltas.push(t));
    const m1 = await s.finalMessage();
    assert.deepEqual(deltas, ['Custom  ', 'reply\n', 'here']);
    assert.equal(m1.content[0].text, 'Custom  reply\nhere');
    assert.equal(m1.stop_reason, 'max_tokens');
    assert.equal(m1.usage.cache_read_input_tokens, 42);
    assert.equal(m1.usage.output_tokens, 3);
    const m2 = await client().messages.create(params('x'));
    assert.equal(m2.content[0].text, 'w1 w2 w3 w4');
    assert.equal(m2.usage.output_tokens, 4);
    const m3 = await client().messages.create(params('x'));
    assert.deepEqual(m3.content, []);
    assert.equal(m3.usage.output_tokens, 0);
  });

  test('multi-block content, code points, assistant turns count toward input_tokens', async () => {
    const msgs = [
      { role: 'user', content: [{ type: 'text', text: 'héllo 😀' }, { type: 'text', text: 'second' }] },
      { role: 'assistant', content: 'ok' },
      { role: 'user', content: 'last one' },
    ];
    const m = await client().messages.create({ model: MODEL, max_tokens: 50, messages: msgs });
    assert.equal(m.content[0].text, expectedReply('last one'));
    assert.equal(m.usage.input_tokens, tokensFor(7 + 6 + 2 + 8));
  });
});

describe('anthropic: faults as the SDK reports them (docs/PROTOCOLS.md D2)', () => {
  test('HTTP 529 -> OverloadedError with status and requestID', async () => {
    await script({ queue: [{ status: 529 }] });
    await assert.rejects(client().messages.create(params('x')), (e) => {
      assert.equal(e.constructor.name, 'OverloadedError');
      assert.ok(e instanceof Anthropic.InternalServerError);
      assert.equal(e.status, 529);
      assert.match(e.requestID, /^req_[A-Za-z0-9]{24}$/);
      assert.equal(e.type, 'overloaded_error');
      assert.equal(e.message, `529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"${e.requestID}"}`);
      assert.equal(e.headers.get('x-should-retry'), 'true');
      return true;
    });
    const [r] = await requests();
    assert.equal(r.outcome, 'error_status');
    assert.deepEqual(r.scenario, { status: 529 });
  });

  test('HTTP 429 -> RateLimitError with retry-after; streaming request gets a JSON error too', async () => {
    await script({ default: { status: 429, retry_after: '7' } });
    await assert.rejects(client().messages.create(params('x')), (e) => {
      assert.ok(e instanceof Anthropic.RateLimitError);
      assert.equal(e.status, 429);
      assert.equal(e.headers.get('retry-after'), '7');
      assert.equal(e.type, 'rate_limit_error');
      return true;
    });
    await assert.rejects(client().messages.stream(params('x')).finalMessage(), Anthropic.RateLimitError);
    const r = await rawPost('/v1/messages', params('x', { stream: true }));
    assert.equal(r.status, 429);
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(JSON.parse(r.body).error.type, 'rate_limit_error');
  });

  test('status table, error_type/error_message overrides', async () => {
    const cases = [
      [400, Anthropic.BadRequestError, 'invalid_request_error'], [401, Anthropic.AuthenticationError, 'authentication_error'],
      [403, Anthropic.PermissionDeniedError, 'permission_error'], [404, Anthropic.NotFoundError, 'not_found_error'],
      [413, Anthropic.ContentTooLargeError, 'request_too_large'], [500, Anthropic.InternalServerError, 'api_error'],
      [504, Anthropic.GatewayTimeoutError, 'timeout_error'],
    ];
    await script({ queue: cases.map(([status]) => ({ status })) });
    for (const [status, cls, type] of cases) {
      await assert.rejects(client().messages.create(params('x')), (e) => e instanceof cls && e.status === status && e.type === type);
    }
    await script({ queue: [{ status: 400, error_type: 'billing_error', error_message: 'custom text' }] });
    await assert.rejects(client().messages.create(params('x')), (e) => e.type === 'billing_error' && e.apiMessage === 'custom text');
  });

  test('non-JSON error bodies (proxy HTML 502, plain-text 400)', async () => {
    await script({ queue: [
      { status: 502, body: '<html><body>502 Bad Gateway</body></html>' },
      { status: 400, body: 'plain text oops', content_type: 'text/plain' },
    ] });
    await assert.rejects(client().messages.create(params('x')), (e) => {
      assert.ok(e instanceof Anthropic.InternalServerError);
      assert.equal(e.status, 502);
      assert.equal(e.message, '502 <html><body>502 Bad Gateway</body></html>');
      assert.equal(e.requestID, null);
      return true;
    });
    await assert.rejects(client().messages.create(params('x')), (e) => {
      assert.ok(e instanceof Anthropic.BadRequestError);
      assert.equal(e.message, '400 plain text oops');
      return true;
    });
  });

  test('midstream error -> APIError without status, raw and helper', async () => {
    await script({ default: { fault: 'midstream_error', after: 2 } });
    const stream = await client().messages.create(params('a b c d', { stream: true }));
    const seen = [];
    await assert.rejects((async () => {
      for await (const ev of stream) seen.push(ev.type);
    })(), (e) => {
      assert.ok(e instanceof Anthropic.APIError);
      assert.equal(e.status, undefined);
      assert.equal(e.type, 'overloaded_error');
      assert.equal(e.message, '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}');
      return true;
    });
    assert.deepEqual(seen, ['message_start', 'content_block_start', 'content_block_delta', 'content_block_delta']);
    await assert.rejects(client().messages.stream(params('x')).finalMessage(), (e) => e instanceof Anthropic.APIError && e.type === 'overloaded_error');
    const log = await requests();
    assert.deepEqual(log.map((r) => r.outcome), ['fault:midstream_error', 'fault:midstream_error']);
  });

  test('truncate -> raw iteration ends quietly, helper errors', async () => {
    await script({ default: { fault: 'truncate', after: 3 } });
    const stream = await client().messages.create(params('a b c d', { stream: true }));
    const seen = [];
    for await (const ev of stream) seen.push(ev.type);
    assert.deepEqual(seen, ['message_start', 'content_block_start', ...Array(3).fill('content_block_delta')]);
    await assert.rejects(client().messages.stream(params('x')).finalMessage(), (e) => {
      assert.ok(e instanceof Anthropic.AnthropicError);
      assert.equal(e.message, 'stream ended without producing a Message with role=assistant');
      return true;
    });
    // after >= number of deltas: the block is complete, only message_delta/message_stop are missing.
    await script({ default: { fault: 'truncate', after: 99 } });
    const seen2 = [];
    for await (const ev of await client().messages.create(params('x', { stream: true }))) seen2.push(ev.type);
    assert.deepEqual(seen2.slice(-2), ['content_block_delta', 'content_block_stop']);
    assert.equal((await requests()).at(-1).outcome, 'fault:truncate');
  });

  test('malformed JSON in one data: line -> SyntaxError raw, AnthropicError helper', async () => {
    await script({ default: { fault: 'malformed', after: 1 } });
    const stream = await client({ logLevel: 'off' }).messages.create(params('x', { stream: true }));
    await assert.rejects((async () => {
      for await (const ev of stream) void ev;
    })(), SyntaxError);
    await assert.rejects(client({ logLevel: 'off' }).messages.stream(params('x')).finalMessage(), (e) => e instanceof Anthropic.AnthropicError && /JSON/.test(e.message));
    // The rest of the stream is still sent after the bad line.
    const r = await rawPost('/v1/messages', params('x', { stream: true }));
    const events = parseSse(r.body.toString());
    assert.equal(events.at(-1).event, 'message_stop');
    assert.equal(events.filter((e) => { try { JSON.parse(e.data); return false; } catch { return true; } }).length, 1);
  });

  test('data_only -> empty iteration, helper "request ended without sending any chunks"', async () => {
    await script({ default: { fault: 'data_only' } });
    const seen = [];
    for await (const ev of await client().messages.create(params('x', { stream: true }))) seen.push(ev);
    assert.deepEqual(seen, []);
    await assert.rejects(client().messages.stream(params('x')).finalMessage(), (e) => {
      assert.equal(e.message, 'request ended without sending any chunks');
      return true;
    });
    const r = await rawPost('/v1/messages', params('x', { stream: true }));
    assert.ok(!r.body.toString().includes('event:'));
    assert.equal(parseSse(r.body.toString()).length, 9);
  });

  test('reset mid-stream -> connection error after the deltas already sent', async () => {
    await script({ default: { fault: 'reset', after: 2 } });
    const stream = await client().messages.create(params('a b c', { stream: true }));
    const seen = [];
    await assert.rejects((async () => {
      for await (const ev of stream) seen.push(ev.type);
    })());
    assert.deepEqual(seen, ['message_start', 'content_block_start', 'content_block_delta', 'content_block_delta']);
    assert.equal((await requests())[0].outcome, 'fault:reset');
  });

  test('non-streaming faults: reset, malformed, truncate, stall', async () => {
    await script({ queue: [{ fault: 'reset' }, { fault: 'malformed' }, { fault: 'truncate' }, { fault: 'stall' }] });
    await assert.rejects(client().messages.create(params('x')), Anthropic.APIConnectionError);
    await assert.rejects(client().messages.create(params('x')), SyntaxError);
    await assert.rejects(client().messages.create(params('x')));
    const t0 = Date.now();
    await assert.rejects(client({ timeout: 300 }).messages.create(params('x')), Anthropic.APIConnectionTimeoutError);
    assert.ok(Date.now() - t0 >= 290);
    const log = await waitFor(async () => {
      const l = await requests();
      return l[3].outcome ? l : null;
    }, 'stall outcome');
    assert.deepEqual(log.map((r) => r.outcome), ['fault:reset', 'fault:malformed', 'fault:truncate', 'client_closed']);
  });

  test('stall with stall_ms closes the stream after the delay', async () => {
    await script({ default: { fault: 'stall', after: 1, stall_ms: 150 } });
    const t0 = Date.now();
    const seen = [];
    await assert.rejects((async () => {
      for await (const ev of await client().messages.create(params('a b', { stream: true }))) seen.push(ev.type);
    })());
    assert.ok(Date.now() - t0 >= 140);
    assert.equal(seen.length, 3);
    assert.equal((await requests())[0].outcome, 'fault:stall');
  });

  test('timing knobs: header_delay_ms, ttft_ms, gap_ms', async () => {
    await script({ default: { header_delay_ms: 100, ttft_ms: 100, gap_ms: 50 } });
    const t0 = Date.now();
    const stream = await client().messages.create(params('a b', { stream: true }));
    const tHeaders = Date.now() - t0;
    const times = [];
    for await (const ev of stream) if (ev.type === 'content_block_delta') times.push(Date.now() - t0);
    assert.ok(tHeaders >= 95, `headers after ${tHeaders}ms`);
    assert.ok(times[0] >= 195, `first delta at ${times[0]}`);
    assert.equal(times.length, 5);
    assert.ok(times[4] - times[0] >= 190, `gaps ${times}`);
  });
});

describe('anthropic: retries', () => {
  test('two 529 then success with maxRetries 2: 3 attempts, retry counts 0,1,2', async () => {
    await script({ queue: [{ status: 529, retry_after_ms: 10 }, { status: 529, retry_after_ms: 10 }] });
    const msg = await client({ maxRetries: 2 }).messages.create(params('retry me'));
    assert.equal(msg.content[0].text, expectedReply('retry me'));
    const log = await requests();
    assert.equal(log.length, 3);
    assert.deepEqual(log.map((r) => r.headers['x-stainless-retry-count']), ['0', '1', '2']);
    assert.deepEqual(log.map((r) => r.outcome), ['error_status', 'error_status', 'completed']);
    assert.equal(msg._request_id, log[2].id);
  });

  test('x-should-retry false on 529 -> one attempt; true on 400 -> retried', async () => {
    await script({ queue: [{ status: 529, should_retry: false }] });
    await assert.rejects(client({ maxRetries: 2 }).messages.create(params('x')), Anthropic.OverloadedError);
    assert.equal((await stats()).requests, 1);
    await ctl('/_fake/reset', {});
    await script({ queue: [{ status: 400, should_retry: true, retry_after_ms: 5 }] });
    await client({ maxRetries: 2 }).messages.create(params('x'));
    assert.equal((await stats()).requests, 2);
  });
});

describe('anthropic: line endings and split writes', () => {
  const text = 'héllo wörld 😀 ünïcode ✓ done';
  for (const sc of [
    { line_ending: 'lf' }, { line_ending: 'crlf' }, { line_ending: 'cr' },
    { split: true }, { split: true, line_ending: 'crlf' }, { split: true, line_ending: 'cr', ping: true, split_delay_ms: 0 },
  ]) {
    test(`assembles the same message with ${JSON.stringify(sc)}`, async () => {
      await script({ default: sc });
      const msg = await client().messages.stream(params(text)).finalMessage();
      assert.equal(msg.content[0].text, expectedReply(text));
      assert.equal(msg.usage.output_tokens, expectedReply(text).split(' ').length);
      assert.equal(msg.usage.input_tokens, tokensFor([...text].length));
      assert.equal(msg.stop_reason, 'end_turn');
    });
  }

  test('line endings on the wire', async () => {
    for (const [le, re] of [['crlf', /\r\n\r\n/], ['cr', /\r\r/]]) {
      await script({ default: { line_ending: le } });
      const body = (await rawPost('/v1/messages', params('x', { stream: true }))).body.toString();
      assert.match(body, re);
      if (le === 'cr') assert.ok(!body.includes('\n'));
      else assert.ok(!/[^\r]\n/.test(body));
      assert.equal(parseSse(body).length, 9); // 5 framing events + 4 deltas ("Hello! You said: x")
    }
  });

  test('split writes arrive as separate reads, cut inside UTF-8 characters and CRLF', async () => {
    await script({ default: { split: true, line_ending: 'crlf' } });
    const r = await rawPost('/v1/messages', params(text, { stream: true }));
    const events = parseSse(r.body.toString('utf8'));
    assert.equal(events.length, 5 + expectedReply(text).split(' ').length);
    assert.ok(r.chunks.length > events.length * 3, `only ${r.chunks.length} reads`);
    const endsMidChar = r.chunks.some((c) => c[c.length - 1] >= 0xc0);
    const endsWithCr = r.chunks.some((c) => c[c.length - 1] === 0x0d);
    assert.ok(endsMidChar, 'a read ends inside a multi-byte character');
    assert.ok(endsWithCr, 'a read ends between CR and LF');
  });
});

describe('anthropic: validation (A3, A10)', () => {
  const bad = async (body, msg, mk = client) => {
    await assert.rejects(mk().messages.create(body), (e) => {
      assert.ok(e instanceof Anthropic.BadRequestError, `${e}`);
      assert.equal(e.status, 400);
      assert.equal(e.type, 'invalid_request_error');
      assert.equal(e.apiMessage, msg);
      assert.equal(e.headers.get('x-should-retry'), 'false');
      return true;
    });
  };

  test('request body rules', async () => {
    await bad({ model: MODEL, max_tokens: 10, messages: [] }, 'messages: at least one message is required');
    await bad({ model: MODEL, messages: [{ role: 'user', content: 'x' }] }, 'max_tokens: Field required');
    await bad({ model: MODEL, max_tokens: 0, messages: [{ role: 'user', content: 'x' }] }, 'max_tokens: Input should be greater than or equal to 1');
    await bad({ model: MODEL, max_tokens: 1.5, messages: [{ role: 'user', content: 'x' }] }, 'max_tokens: Input should be a valid integer');
    await bad({ max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }, 'model: Field required');
    await bad({ model: MODEL, max_tokens: 10, messages: [{ role: 'bot', content: 'x' }] }, "messages.0.role: Input should be 'user' or 'assistant'");
    await bad({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: '' }] },
      'messages.0: all messages must have non-empty content except for the optional final assistant message');
    await bad({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: [] }, { role: 'assistant', content: 'a' }] },
      'messages.0: all messages must have non-empty content except for the optional final assistant message');
    await bad({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: '' }] }] },
      'messages.0.content.1.text: text content blocks must be non-empty');
    await bad({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'prefill ' }] },
      'messages: final assistant content cannot end with trailing whitespace');
    const cc = { type: 'ephemeral' };
    await bad({
      model: MODEL, max_tokens: 10, system: [{ type: 'text', text: 's', cache_control: cc }],
      messages: [{ role: 'user', content: [1, 2, 3, 4].map((i) => ({ type: 'text', text: `b${i}`, cache_control: cc })) }],
    }, 'A maximum of 4 blocks with cache_control may be provided. Found 5.');
  });

  test('accepted edge cases: empty final assistant prefill, consecutive same roles, 4 breakpoints', async () => {
    const cc = { type: 'ephemeral' };
    await client().messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: '' }] });
    await client().messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: 'x' }, { role: 'user', content: 'y' }, { role: 'assistant', content: 'Sure:' }] });
    await client().messages.create({ model: MODEL, max_tokens: 10, messages: [{ role: 'user', content: [1, 2, 3, 4].map((i) => ({ type: 'text', text: `b${i}`, cache_control: cc })) }] });
  });

  test('temperature/top_p/top_k rejected with 2026-10-21 only', async () => {
    for (const k of ['temperature', 'top_p', 'top_k']) {
      await bad(params('x', { [k]: 1 }), `${k}: Extra inputs are not permitted`);
      const ok = await client2023().messages.create(params('x', { [k]: 1 }));
      assert.equal(ok.stop_reason, 'end_turn');
    }
  });

  test('headers: missing anthropic-version, missing key, bad JSON', async () => {
    let r = await rawPost('/v1/messages', params('x'), { 'anthropic-version': '' });
    assert.equal(r.status, 400);
    const j = JSON.parse(r.body);
    assert.deepEqual(Object.keys(j), ['type', 'error', 'request_id']);
    assert.equal(j.type, 'error');
    assert.equal(j.error.type, 'invalid_request_error');
    assert.equal(j.request_id, r.headers['request-id']);
    r = await rawPost('/v1/messages', params('x'), { 'x-api-key': '' });
    assert.equal(r.status, 401);
    assert.equal(JSON.parse(r.body).error.type, 'authentication_error');
    const res = await fetch(BASE + '/v1/messages', { method: 'POST', headers: { 'x-api-key': 'k', 'anthropic-version': '2023-06-01' }, body: '{nope' });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.type, 'invalid_request_error');
  });

  test('--api-key: exact key required via x-api-key or Bearer', async () => {
    const f = await startFake(['--api-key', 'sk-right']);
    try {
      const mk = (apiKey) => new Anthropic({ apiKey, baseURL: f.base, maxRetries: 0 });
      await assert.rejects(mk('sk-wrong').messages.create(params('x')), (e) => e instanceof Anthropic.AuthenticationError && e.type === 'authentication_error');
      const ok = await mk('sk-right').messages.create(params('x'));
      assert.equal(ok.content[0].text, expectedReply('x'));
      const body = JSON.stringify(params('x'));
      let res = await fetch(f.base + '/v1/messages', { method: 'POST', headers: { 'x-api-key': 'sk-right', 'anthropic-version': '2023-06-01' }, body });
      assert.equal(res.status, 200);
      res = await fetch(f.base + '/v1/messages', { method: 'POST', headers: { 'x-api-key': 'sk-wrong', 'anthropic-version': '2023-06-01' }, body });
      assert.equal(res.status, 401);
    } finally {
      await stopFake(f);
    }
  });
});

describe('control API and scenario selection', () => {
  test('directive beats queue beats default; directive stripped from the echo', async () => {
    await script({ default: { reply: 'from default' }, queue: [{ reply: 'from queue 1' }, { reply: 'from queue 2' }] });
    const a = await client().messages.create(params('say [[fake:{"reply":"from directive"}]]'));
    assert.equal(a.content[0].text, 'from directive');
    const b = await client().messages.create(params('x'));
    assert.equal(b.content[0].text, 'from queue 1');
    const c = await client().messages.create(params('hello [[fake:{"ttft_ms":1,"headers":{"x-a":"[[b]]"}}]] world'));
    assert.equal(c.content[0].text, expectedReply('hello  world'));
    const d = await client().messages.create(params('x'));
    assert.equal(d.content[0].text, 'from queue 2');
    const e = await client().messages.create(params('x'));
    assert.equal(e.content[0].text, 'from default');
    const log = await requests();
    assert.deepEqual(log.map((r) => r.scenario?.reply ?? null), ['from directive', 'from queue 1', null, 'from queue 2', 'from default']);
    // The directive only counts in the LAST user message.
    await script({ default: null });
    const f = await client().messages.create({ model: MODEL, max_tokens: 10, messages: [
      { role: 'user', content: 'old [[fake:{"status":500}]]' }, { role: 'assistant', content: 'ok' }, { role: 'user', content: 'new' },
    ] });
    assert.equal(f.content[0].text, expectedReply('new'));
  });

  test('bad scenarios are rejected loudly', async () => {
    const r = await fetch(BASE + '/_fake/script', { method: 'POST', body: JSON.stringify({ queue: [{ ttft: 5 }] }) });
    assert.equal(r.status, 400);
    assert.match((await r.json()).error, /unknown scenario field 'ttft'/);
    await assert.rejects(client().messages.create(params('x [[fake:{"fault":"nope"}]]')), (e) => e.status === 400 && /unknown fault/.test(e.apiMessage));
    await assert.rejects(client().messages.create(params('x [[fake:{bad json}]]')), (e) => e.status === 400 && /not valid JSON/.test(e.apiMessage));
  });

  test('requests log, stats, reset', async () => {
    await client().messages.create(params('one'));
    await client().messages.create(params('two'));
    let s = await stats();
    assert.equal(s.requests, 2);
    assert.equal(s.active, 0);
    assert.equal(s.client_closed, 0);
    const log = await requests();
    assert.equal(log.length, 2);
    for (const r of log) {
      for (const k of ['id', 'method', 'path', 'headers', 'body', 'received_at_ms', 'scenario', 'outcome', 'finished_at_ms']) assert.ok(k in r, k);
      assert.equal(r.method, 'POST');
      assert.equal(r.headers['content-type'], 'application/json');
    }
    assert.equal((await ctl('/_fake/requests?limit=1')).requests[0].body.messages[0].content, 'two');
    await ctl('/_fake/reset', {});
    s = await stats();
    assert.equal(s.requests, 0);
    assert.deepEqual(await requests(), []);
    // Raw (unparseable) bodies are logged as strings.
    await fetch(BASE + '/v1/messages', { method: 'POST', headers: { 'x-api-key': 'k', 'anthropic-version': '2023-06-01' }, body: 'not json' });
    assert.equal((await requests())[0].body, 'not json');
  });

  test('client_closed recorded with a timestamp when the SDK aborts a stream', async () => {
    await script({ default: { reply_words: 200, gap_ms: 20 } });
    const ac = new AbortController();
    const stream = client().messages.stream(params('x'), { signal: ac.signal });
    let abortedAt = 0;
    let n = 0;
    stream.on('text', () => {
      if (++n === 3) {
        abortedAt = performance.timeOrigin + performance.now();
        ac.abort();
      }
    });
    await assert.rejects(stream.finalMessage(), Anthropic.APIUserAbortError);
    const r = await waitFor(async () => (await requests()).find((x) => x.outcome === 'client_closed'), 'client_closed');
    // Both sides stamp performance.timeOrigin + performance.now(), but each
    // process took its timeOrigin from the wall clock at its own start: the two
    // clocks agree to a few milliseconds, not to a fraction of one.
    assert.ok(r.finished_at_ms >= abortedAt - 5, `closed ${abortedAt - r.finished_at_ms} ms before the abort`);
    assert.ok(r.finished_at_ms - abortedAt < 200, `cancellation seen after ${r.finished_at_ms - abortedAt} ms`);
    const s = await stats();
    assert.equal(s.client_closed, 1);
    assert.equal(s.active, 0);
  });

  test('count_tokens endpoint and unknown paths', async () => {
    const c = await client().messages.countTokens({ model: MODEL, system: 'abcd', messages: [{ role: 'user', content: 'abcdefgh' }] });
    assert.equal(c.input_tokens, 3);
    const r = await fetch(BASE + '/v1/nope', { method: 'POST', headers: { 'x-api-key': 'k' } });
    assert.equal(r.status, 404);
    assert.equal((await r.json()).error.type, 'not_found_error');
  });
});

describe('openai-compatible mode', () => {
  const oai = (opts = {}) => new OpenAI({ apiKey: 'sk-test', baseURL: BASE + '/v1', maxRetries: 0, timeout: 10_000, ...opts });
  const oparams = (text, extra = {}) => ({ model: 'gpt-fake', messages: [{ role: 'system', content: 'sys' }, { role: 'user', content: text }], ...extra });

  test('non-streaming B3 shape', async () => {
    const r = await oai().chat.completions.create(oparams('hello there')).withResponse();
    const c = r.data;
    assert.equal(c.object, 'chat.completion');
    assert.match(c.id, /^chatcmpl-/);
    assert.equal(c.model, 'gpt-fake');
    assert.equal(c.choices[0].message.role, 'assistant');
    assert.equal(c.choices[0].message.content, expectedReply('hello there'));
    assert.equal(c.choices[0].finish_reason, 'stop');
    assert.equal(c.usage.prompt_tokens, tokensFor(3 + 11));
    assert.equal(c.usage.completion_tokens, 5);
    assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + 5);
    assert.match(r.request_id, /^req_[A-Za-z0-9]{24}$/);
    assert.equal(r.response.headers.get('content-type'), 'application/json');
  });

  test('streaming chunks: role chunk, content, finish chunk, usage chunk, [DONE]', async () => {
    const stream = await oai().chat.completions.create(oparams('a b', { stream: true, stream_options: { include_usage: true } }));
    const chunks = [];
    for await (const ch of stream) chunks.push(ch);
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '', refusal: null });
    const content = chunks.slice(1, -2).map((c) => c.choices[0].delta.content);
    assert.deepEqual(content, ['Hello! ', 'You ', 'said: ', 'a ', 'b']);
    const fin = chunks.at(-2);
    assert.deepEqual(fin.choices[0].delta, {});
    assert.equal(fin.choices[0].finish_reason, 'stop');
    assert.deepEqual(chunks.at(-1).choices, []);
    assert.equal(chunks.at(-1).usage.completion_tokens, 5);
    for (const ch of chunks.slice(0, -1)) assert.equal(ch.usage, null);
    assert.ok(new Set(chunks.map((c) => c.id)).size === 1);
    const raw = await rawPost('/v1/chat/completions', oparams('a', { stream: true }), { authorization: 'Bearer x' });
    const text = raw.body.toString();
    assert.ok(text.endsWith('data: [DONE]\n\n'));
    assert.ok(!text.includes('event:'));
    assert.ok(!text.includes('"usage"'), 'no usage without include_usage');
    assert.match(raw.headers['x-request-id'], /^req_/);
    assert.equal(raw.headers['content-type'], 'text/event-stream; charset=utf-8');
  });

  test('helper finalChatCompletion with line endings and split writes', async () => {
    const text = 'héllo 😀 wörld';
    for (const sc of [{}, { line_ending: 'crlf' }, { line_ending: 'cr' }, { split: true, line_ending: 'crlf', ping: true }]) {
      await script({ default: sc });
      const s = oai().chat.completions.stream(oparams(text, { stream_options: { include_usage: true } }));
      const c = await s.finalChatCompletion();
      assert.equal(c.choices[0].message.content, expectedReply(text), JSON.stringify(sc));
      assert.equal(c.choices[0].finish_reason, 'stop');
      assert.equal(c.usage.completion_tokens, 6);
    }
  });

  test('errors: status, 429 with code, non-JSON, midstream, malformed, truncate', async () => {
    await script({ queue: [{ status: 429, retry_after: '3' }, { status: 502, body: '<html>bad gateway</html>' }] });
    await assert.rejects(oai().chat.completions.create(oparams('x')), (e) => {
      assert.ok(e instanceof OpenAI.RateLimitError);
      assert.equal(e.code, 'rate_limit_exceeded');
      assert.match(e.requestID, /^req_/);
      assert.match(e.message, /^429 /);
      return true;
    });
    await assert.rejects(oai().chat.completions.create(oparams('x')), (e) => e instanceof OpenAI.InternalServerError && e.status === 502);

    await script({ default: { fault: 'midstream_error', after: 1 } });
    await assert.rejects((async () => {
      for await (const ch of await oai().chat.completions.create(oparams('x', { stream: true }))) void ch;
    })(), (e) => e instanceof OpenAI.APIError && e.status === undefined && e.message === 'The server had an error while processing your request.');

    await script({ default: { fault: 'malformed', after: 1 } });
    await assert.rejects((async () => {
      for await (const ch of await oai({ logLevel: 'off' }).chat.completions.create(oparams('x', { stream: true }))) void ch;
    })(), SyntaxError);

    await script({ default: { fault: 'truncate', after: 1 } });
    const seen = [];
    for await (const ch of await oai().chat.completions.create(oparams('x', { stream: true }))) seen.push(ch);
    assert.equal(seen.length, 2);
    await assert.rejects(oai().chat.completions.stream(oparams('x')).finalChatCompletion(), /missing finish_reason/);
  });

  test('validation and auth', async () => {
    await assert.rejects(oai().chat.completions.create({ model: 'm', messages: [] }), (e) => e instanceof OpenAI.BadRequestError && e.code === 'empty_array' && e.param === 'messages');
    const r = await fetch(BASE + '/v1/chat/completions', { method: 'POST', body: JSON.stringify(oparams('x')) });
    assert.equal(r.status, 401);
    const j = await r.json();
    assert.deepEqual(Object.keys(j.error), ['message', 'type', 'param', 'code']);
  });

  test('variants: groq, vllm, ollama, llamacpp', async () => {
    // groq: usage in x_groq.usage of the finish chunk
    await script({ default: { variant: 'groq' } });
    const g = [];
    for await (const ch of await oai().chat.completions.create(oparams('a', { stream: true }))) g.push(ch);
    const fin = g.find((c) => c.choices[0]?.finish_reason);
    assert.equal(fin.x_groq.usage.completion_tokens, 4);
    assert.equal(fin.x_groq.usage.total_tokens, fin.x_groq.usage.prompt_tokens + 4);

    // vllm: integer error code, auth optional, midstream error then [DONE]
    await script({ queue: [{ variant: 'vllm', status: 400 }, { variant: 'vllm', fault: 'midstream_error', after: 0 }] });
    await assert.rejects(oai().chat.completions.create(oparams('x')), (e) => e.status === 400 && e.error.code === 400 && e.error.type === 'BadRequestError');
    const vr = await fetch(BASE + '/v1/chat/completions', { method: 'POST', body: JSON.stringify(oparams('x', { stream: true })) });
    const vt = await vr.text();
    assert.match(vt, /data: \{"error":\{"message":"[^"]+","type":"InternalServerError","param":null,"code":500\}\}\n\ndata: \[DONE\]\n\n$/);

    // ollama: fp_ollama, finish chunk delta {}, include_usage chunk with three fields
    await script({ default: { variant: 'ollama' } });
    const o = [];
    for await (const ch of await oai().chat.completions.create(oparams('a', { stream: true, stream_options: { include_usage: true } }))) o.push(ch);
    assert.equal(o[0].system_fingerprint, 'fp_ollama');
    assert.deepEqual(Object.keys(o.at(-1).usage), ['prompt_tokens', 'completion_tokens', 'total_tokens']);

    // llamacpp: error shape {"code":401,"message","type"}
    await script({ default: { variant: 'llamacpp', status: 503, error_message: 'Loading model' } });
    await assert.rejects(oai().chat.completions.create(oparams('x')), (e) => e.status === 503 && e.error.type === 'unavailable_error' && e.error.code === 503);
  });

  test('retry with openai SDK: 2x 503 then success', async () => {
    await script({ queue: [{ status: 503, retry_after_ms: 10 }, { status: 503, retry_after_ms: 10 }] });
    const c = await oai({ maxRetries: 2 }).chat.completions.create(oparams('x'));
    assert.equal(c.choices[0].message.content, expectedReply('x'));
    assert.deepEqual((await requests()).map((r) => r.headers['x-stainless-retry-count']), ['0', '1', '2']);
  });
});
