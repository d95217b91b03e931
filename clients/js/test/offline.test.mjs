// What needs no server: the request the client builds (API key, headers, URL),
// error mapping for responses this chatd does not produce yet (401 from API
// keys, 429 from its own rate limiter, proxies' HTML pages), /v1/models
// normalization and cost arithmetic. Uses the custom fetch option.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatdError, describeError, costOf, costUsd, pricingOf, parseRetryAfter } from '../src/chatd.js';

function recorder(respond) {
  const calls = [];
  const f = async (url, init) => {
    calls.push({ url, init });
    return respond(url, init);
  };
  return { calls, fetch: f };
}

const json = (status, body, headers = {}) =>
  new Response(body == null ? null : JSON.stringify(body), {
    status,
    headers: { 'content-type': 'application/json', ...headers },
  });

test('apiKey is sent as Authorization: Bearer, with JSON headers and the base URL without trailing slash', async () => {
  const r = recorder(() => json(200, { ok: 1 }));
  const c = new ChatClient('http://h:1/', { apiKey: 'sk-test', fetch: r.fetch, headers: { 'X-Extra': 'e' } });
  await c.send('hi', { sessionId: 's 1', model: 'm', requestId: 'r1' });
  const { url, init } = r.calls[0];
  assert.equal(url, 'http://h:1/v1/chat');
  assert.equal(init.method, 'POST');
  assert.equal(init.headers.Authorization, 'Bearer sk-test');
  assert.equal(init.headers['Content-Type'], 'application/json');
  assert.equal(init.headers['X-Request-Id'], 'r1');
  assert.equal(init.headers['X-Extra'], 'e');
  assert.deepEqual(JSON.parse(init.body), { message: 'hi', session_id: 's 1', model: 'm' });
  await c.getSession('a/b');
  assert.equal(r.calls[1].url, 'http://h:1/v1/sessions/a%2Fb');
  await c.listSessions({ limit: 5, cursor: 'c=1' });
  assert.equal(r.calls[2].url, 'http://h:1/v1/sessions?limit=5&cursor=c%3D1');
  assert.equal(r.calls[2].init.body, undefined);
  // The key can be changed later (the playground's settings field).
  c.apiKey = null;
  await c.stats();
  assert.equal(r.calls[3].init.headers.Authorization, undefined);
});

test('401 with WWW-Authenticate: authentication_error, plain words', async () => {
  const c = new ChatClient('', {
    fetch: async () =>
      json(401, { error: { type: 'authentication_error', message: 'invalid API key', request_id: 'req_1' } }, {
        'www-authenticate': 'Bearer',
      }),
  });
  let err;
  try {
    await c.send('x');
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ChatdError);
  assert.equal(err.status, 401);
  assert.equal(err.type, 'authentication_error');
  assert.equal(err.requestId, 'req_1');
  assert.equal(describeError(err), 'Not authorised: check your API key (Settings).');
});

test('429 from a rate limiter: Retry-After and RateLimit-* headers', async () => {
  const c = new ChatClient('', {
    fetch: async () =>
      json(429, { error: { type: 'rate_limit_error', message: 'slow down', request_id: 'req_2' } }, {
        'retry-after': '12',
        'ratelimit-limit': '60',
        'ratelimit-remaining': '0',
        'ratelimit-reset': '12',
      }),
  });
  const err = await c.stream('x').result().catch((e) => e);
  assert.equal(err.status, 429);
  assert.equal(err.retryAfter, 12);
  assert.deepEqual(err.rateLimit, { limit: 60, remaining: 0, reset: 12 });
  assert.equal(describeError(err), 'Rate limited: try again in 12 s.');
});

test("a proxy's HTML error page and an empty body still give a readable ChatdError", async () => {
  const html = new ChatClient('', {
    fetch: async () => new Response('<html><body><h1>502 Bad Gateway</h1></body></html>', {
      status: 502, headers: { 'content-type': 'text/html' },
    }),
  });
  const e1 = await html.send('x').catch((e) => e);
  assert.equal(e1.status, 502);
  assert.equal(e1.message, '502 Bad Gateway');
  assert.match(describeError(e1), /bad gateway/);
  const empty = new ChatClient('', { fetch: async () => new Response(null, { status: 504 }) });
  const e2 = await empty.send('x').catch((e) => e);
  assert.equal(e2.type, 'provider_timeout');
  assert.equal(e2.message, 'HTTP 504');
  assert.match(describeError(e2), /took too long/);
});

test('describeError: every case a person meets', () => {
  const d = (status, type, extra = {}) => describeError(new ChatdError('m', { status, type, ...extra }));
  assert.equal(d(503, 'provider_not_configured').startsWith('The server has no provider API key configured'), true);
  assert.match(d(503, 'provider_overloaded', { retryAfter: 3 }), /overloaded.*try again in 3 s/);
  assert.match(d(502, 'provider_auth_error'), /rejected the server's own API key/);
  assert.match(d(504, 'provider_timeout'), /took too long/);
  assert.match(d(413, 'request_too_large'), /too large/);
  assert.match(d(500, 'internal_error', { requestId: 'req_9' }), /internal error \(request req_9\)/);
  assert.equal(d(400, 'invalid_request_error'), 'The server refused the request: m');
  assert.equal(d(418, undefined), 'Error 418: m');
  assert.equal(describeError(Object.assign(new Error('x'), { name: 'AbortError' })), 'Stopped.');
});

test('parseRetryAfter: seconds and HTTP dates', () => {
  assert.equal(parseRetryAfter('5'), 5);
  assert.equal(parseRetryAfter('1.2'), 2);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT')), 10);
  assert.equal(parseRetryAfter('soon'), null);
});

test('models(): normalized prices, default from the per-model flag; 404 means "no models endpoint" (null); estimateCosts in micro-dollars', async () => {
  const body = {
    data: [
      { id: 'claude-sonnet-4-6', provider: 'anthropic', available: true, default: true,
        pricing: { currency: 'USD', input_per_mtok: 3, output_per_mtok: 15, cache_write_per_mtok: 3.75, cache_read_per_mtok: 0.3 } },
      { id: 'llama-local', provider: 'openai', pricing: { input: 0, output: 0 } },
      { id: 'no-price' },
    ],
  };
  const c = new ChatClient('', { fetch: async () => json(200, body) });
  const m = await c.models();
  assert.equal(m.default, 'claude-sonnet-4-6');
  assert.deepEqual(m.data[0].pricing, { input: 3, output: 15, cache_write: 3.75, cache_read: 0.3 });
  assert.deepEqual(m.data[1].pricing, { input: 0, output: 0, cache_write: 0, cache_read: 0 });
  assert.equal(m.data[2].pricing, null);
  const usage = { input_tokens: 1000, output_tokens: 500, cache_creation_input_tokens: 2000, cache_read_input_tokens: 10000 };
  // 1000*3 + 500*15 + 2000*3.75 + 10000*0.3 = 3000 + 7500 + 7500 + 3000 = 21000 micro-dollars
  assert.deepEqual(costOf(usage, m.data[0].pricing), { microUsd: 21000, usd: 0.021 });
  const est = await c.estimateCosts(usage, { models: m });
  assert.deepEqual(est, [
    { model: 'claude-sonnet-4-6', microUsd: 21000, usd: 0.021 },
    { model: 'llama-local', microUsd: 0, usd: 0 },
  ]);
  assert.equal(pricingOf({ id: 'x', pricing: { input_per_mtok: 1 } }), null);
  assert.equal(costUsd({ micros: 171, usd: '0.000171' }), 0.000171);
  assert.equal(costUsd({ usd: '0.5' }), 0.5);
  assert.equal(costUsd(null), null);

  const old = new ChatClient('', {
    fetch: async () => json(404, { error: { type: 'not_found_error', message: 'no route', request_id: 'r' } }),
  });
  assert.equal(await old.models(), null);
  assert.equal(await old.estimateCosts(usage), null);
  const broken = new ChatClient('', { fetch: async () => json(500, { error: { type: 'internal_error', message: 'x' } }) });
  await assert.rejects(broken.models(), (e) => e.status === 500);
});

test('a stream cut before done is a stream_truncated error; unknown events are ignored', async () => {
  const body = 'event: start\ndata: {"session_id":"s"}\n\nevent: future\ndata: {}\n\nevent: delta\ndata: {"text":"a"}\n\n';
  const c = new ChatClient('', {
    fetch: async () => new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } }),
  });
  const s = c.stream('x');
  const kinds = [];
  const err = await (async () => {
    for await (const ev of s) kinds.push(ev.type);
  })().catch((e) => e);
  assert.deepEqual(kinds, ['start', 'delta']);
  assert.equal(err.type, 'stream_truncated');
  assert.match(describeError(err), /cut before the reply finished/);
});

test('a stream can be consumed once; generateSessionId has the template shape', async () => {
  const c = new ChatClient('', {
    fetch: async () => new Response('event: done\ndata: {"usage":{}}\n\n', {
      status: 200, headers: { 'content-type': 'text/event-stream' },
    }),
  });
  const s = c.stream('x');
  const r = await s.result();
  assert.equal(r.text, '');
  assert.throws(() => s[Symbol.asyncIterator](), /already consumed/);
  const ids = new Set(Array.from({ length: 100 }, () => c.generateSessionId()));
  assert.equal(ids.size, 100);
  for (const id of ids) assert.match(id, /^session-[0-9a-z]{9}$/);
});
