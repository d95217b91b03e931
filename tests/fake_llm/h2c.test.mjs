// The fake provider over h2c (server.mjs --h2c): the same port speaks HTTP/1.1 and HTTP/2 with
// prior knowledge, and every scenario gives an HTTP/2 client the same bytes as an HTTP/1.1 one
// (ids and times aside). Faults that end a response touch only their own stream: a reset is an
// RST_STREAM, never the end of the connection the other streams share.
//
// Run from the repo root: node --test tests/fake_llm/

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import { startFake, stopFake } from './spawn.mjs';


let fake;
let session; // one HTTP/2 connection shared by the tests, as chatd shares one
before(async () => {
  fake = await startFake(['--h2c', '--h2-max-streams', '500']);
  session = http2.connect(fake.base);
  await new Promise((resolve, reject) => {
    session.once('remoteSettings', resolve);
    session.once('error', reject);
  });
});
after(async () => {
  session?.close();
  await stopFake(fake);
});

const HEADERS = { 'x-api-key': 'sk-ant-test', 'anthropic-version': '2023-06-01', 'content-type': 'application/json' };

// POST over HTTP/1.1 (a fresh connection). Resolves {status, headers, body, chunks, error}.
function postH1(p, body) {
  return new Promise((resolve) => {
    const req = http.request(fake.base + p, { method: 'POST', headers: HEADERS, agent: false });
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString(), chunks, error: null }));
      res.on('error', (e) => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString(), chunks, error: e }));
      res.on('aborted', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString(), chunks, error: new Error('aborted') }));
    });
    req.on('error', (e) => resolve({ status: 0, headers: {}, body: '', chunks: [], error: e }));
    req.end(JSON.stringify(body));
  });
}

// POST over the shared HTTP/2 session. Resolves {status, headers, body, chunks (with arrival times),
// error, rstCode}. onStream(stream) lets a test act on the stream (e.g. cancel it).
function postH2(p, body, onStream) {
  return new Promise((resolve) => {
    const stream = session.request({ ':method': 'POST', ':path': p, ...HEADERS });
    const chunks = [];
    let status = 0;
    let headers = {};
    let error = null;
    stream.on('response', (h) => {
      status = h[':status'];
      headers = h;
    });
    stream.on('data', (c) => chunks.push({ c, t: performance.now() }));
    stream.on('error', (e) => {
      error = e;
    });
    stream.on('close', () =>
      resolve({ status, headers, body: Buffer.concat(chunks.map((x) => x.c)).toString(), chunks, error, rstCode: stream.rstCode }),
    );
    if (onStream) onStream(stream);
    stream.end(JSON.stringify(body));
  });
}

// Ids and times differ between two requests; everything else must not.
function normalize(s) {
  return s
    .replace(/\b(req|msg|toolu|call|chatcmpl|sig)[_-][A-Za-z0-9]{8,}/g, '$1_ID')
    .replace(/"created":\d+/g, '"created":0')
    .replace(/"obfuscation":"[^"]*"/g, '"obfuscation":""')
    .replace(/"[a-z_]*time[a-z_]*":[0-9.e-]+/g, '"time":0');
}

const anth = (text, extra = {}) => ({ model: 'claude-fake-1', max_tokens: 256, messages: [{ role: 'user', content: text }], ...extra });
const oai = (text, extra = {}) => ({ model: 'gpt-fake', messages: [{ role: 'user', content: text }], ...extra });
const dir = (sc) => `hi [[fake:${JSON.stringify(sc)}]]`;

const CASES = [
  ['anthropic json', '/v1/messages', anth('hello over two protocols')],
  ['anthropic stream', '/v1/messages', anth('hello over two protocols', { stream: true })],
  ['anthropic stream, thinking and a tool call', '/v1/messages', anth(dir({ thinking: 'hmm', tool_calls: [{ name: 't', input: { a: 1 } }], reply: 'ok' }), { stream: true })],
  ['anthropic 429', '/v1/messages', anth(dir({ status: 429, retry_after: '2' }), { stream: true })],
  ['anthropic 529 with a connection header in the scenario', '/v1/messages', anth(dir({ status: 529, headers: { connection: 'close', 'x-extra': 'yes' } }))],
  ['anthropic midstream error', '/v1/messages', anth(dir({ fault: 'midstream_error', after: 2, reply_words: 5 }), { stream: true })],
  ['anthropic truncated stream', '/v1/messages', anth(dir({ fault: 'truncate', after: 1, reply_words: 3 }), { stream: true })],
  ['anthropic malformed, crlf', '/v1/messages', anth(dir({ fault: 'malformed', line_ending: 'crlf', reply_words: 3 }), { stream: true })],
  ['openai json', '/v1/chat/completions', oai('hello there')],
  ['openai stream with usage', '/v1/chat/completions', oai('hello there', { stream: true, stream_options: { include_usage: true } })],
  ['openai groq stream', '/v1/chat/completions', oai(dir({ variant: 'groq', reply_words: 4 }), { stream: true })],
  ['openai vllm midstream error', '/v1/chat/completions', oai(dir({ variant: 'vllm', fault: 'midstream_error', after: 1 }), { stream: true })],
  ['count_tokens', '/v1/messages/count_tokens', anth('count me')],
];

describe('h2c gives the same bytes as HTTP/1.1', () => {
  for (const [name, p, body] of CASES) {
    test(name, async () => {
      const [a, b] = await Promise.all([postH1(p, body), postH2(p, body)]);
      assert.equal(a.error, null);
      assert.equal(b.error, null);
      assert.equal(b.status, a.status);
      for (const h of ['content-type', 'x-should-retry', 'retry-after', 'x-extra', 'cache-control']) {
        assert.equal(b.headers[h], a.headers[h], h);
      }
      assert.equal(b.headers.connection, undefined);
      assert.ok(a.body.length > 0);
      assert.equal(normalize(b.body), normalize(a.body));
    });
  }
});

test('the server advertises --h2-max-streams', () => {
  assert.equal(session.remoteSettings.maxConcurrentStreams, 500);
});

test('SSE events are flushed one by one over h2c', async () => {
  const r = await postH2('/v1/messages', anth(dir({ reply_words: 4, gap_ms: 80 }), { stream: true }));
  assert.equal(r.status, 200);
  const firstDelta = r.chunks.find((x) => x.c.toString().includes('content_block_delta'));
  assert.ok(firstDelta, 'a delta arrived');
  const last = r.chunks[r.chunks.length - 1];
  // Three gaps of 80 ms separate the first delta from the end of the stream.
  assert.ok(last.t - firstDelta.t > 180, `first delta ${(last.t - firstDelta.t).toFixed(0)} ms before the end`);
  // The head events, then each delta on its own (the tail events may share one chunk).
  assert.ok(r.chunks.length >= 5, `${r.chunks.length} chunks`);
});

test('a reset fault resets its own stream only; the others on the connection finish whole', async () => {
  const slow = postH2('/v1/messages', anth(dir({ reply_words: 6, gap_ms: 40 }), { stream: true }));
  const reset = await postH2('/v1/messages', anth(dir({ fault: 'reset', after: 1, reply_words: 5 }), { stream: true }));
  assert.equal(reset.status, 200);
  assert.equal(reset.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);
  assert.ok(!reset.body.includes('message_stop'));
  const s = await slow;
  assert.equal(s.error, null);
  assert.ok(s.body.includes('event: message_stop'));
  assert.equal(session.closed || session.destroyed, false);
});

test('a stall with stall_ms resets its stream only', async () => {
  const r = await postH2('/v1/messages', anth(dir({ fault: 'stall', after: 1, stall_ms: 50 }), { stream: true }));
  assert.equal(r.rstCode, http2.constants.NGHTTP2_INTERNAL_ERROR);
  assert.equal(session.closed || session.destroyed, false);
});

test('a client that cancels its stream is recorded as client_closed; the others go on', async () => {
  await fetch(`${fake.base}/_fake/reset`, { method: 'POST', body: '{}' });
  const other = postH2('/v1/messages', anth(dir({ reply_words: 5, gap_ms: 30 }), { stream: true }));
  const cancelled = await postH2('/v1/messages', anth(dir({ reply_words: 50, gap_ms: 20 }), { stream: true }), (st) => {
    st.once('data', () => st.close(http2.constants.NGHTTP2_CANCEL));
  });
  assert.ok(!cancelled.body.includes('message_stop'));
  const o = await other;
  assert.ok(o.body.includes('event: message_stop'));
  let reqs;
  for (let i = 0; i < 100; i++) {
    reqs = (await (await fetch(`${fake.base}/_fake/requests`)).json()).requests;
    if (reqs.every((q) => q.outcome !== null)) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.deepEqual(reqs.map((q) => q.outcome).sort(), ['client_closed', 'completed']);
});

test('many concurrent streams share one connection; /_fake/stats counts connections and streams', async () => {
  await fetch(`${fake.base}/_fake/reset`, { method: 'POST', body: '{}' });
  const N = 200;
  const rs = await Promise.all(Array.from({ length: N }, (_, i) => postH2('/v1/messages', anth(`stream ${i} ${dir({ gap_ms: 5 })}`, { stream: true }))));
  for (const [i, r] of rs.entries()) {
    assert.equal(r.status, 200);
    assert.ok(r.body.includes(`"text":"${i} "`) && r.body.includes('event: message_stop'), `stream ${i}`);
  }
  const st = await (await fetch(`${fake.base}/_fake/stats`)).json();
  assert.equal(st.h2_streams_total, N);
  assert.equal(st.h2_connections_total, 0); // the shared session was opened before the reset
  assert.equal(st.h2_connections, 1);
  assert.ok(st.connections >= 1, JSON.stringify(st)); // the session, and fetch's own keep-alive ones
});
