// The client against the real chatd binary and the fake provider: every
// method, streaming order, cancellation seen by the server, error mapping.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatdError, ChatStream, describeError, isAbortError, costOf, costUsd } from '../src/chatd.js';
import { startStack, startChatd } from '../../../tests/e2e/servers.mjs';

let stack;
let noKey; // a chatd started without ANTHROPIC_API_KEY
let url;

before(async () => {
  // A short first-byte deadline so that a provider timeout (504) is quick to provoke.
  stack = await startStack({ env: { PROVIDER_FIRST_BYTE_TIMEOUT: '1s' } });
  url = stack.url;
  noKey = await startChatd({ fakeUrl: stack.fake.url, apiKey: null });
});

after(async () => {
  await noKey?.stop();
  await stack?.stop();
});

const uniq = (p) => `${p}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
const fake = (o) => `[[fake:${JSON.stringify(o)}]]`;

async function rejects(promise, check) {
  let err;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, 'expected a rejection');
  check(err);
  return err;
}

describe('seed-compatible methods', () => {
  test('chat, getHistory, reset, clearHistory', async () => {
    const c = new ChatClient(url);
    assert.match(c.sessionId, /^session-[0-9a-z]{9}$/);
    const r = await c.chat('Hello! What can you do?');
    assert.equal(r.response, 'Hello! You said: Hello! What can you do?');
    assert.equal(r.session_id, c.sessionId);
    assert.equal(r.turn_count, 1);
    assert.match(r.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/);
    const h = await c.getHistory();
    assert.deepEqual(h.messages, [
      { role: 'user', content: 'Hello! What can you do?' },
      { role: 'assistant', content: 'Hello! You said: Hello! What can you do?' },
    ]);
    assert.equal(h.turn_count, 1);
    assert.deepEqual(await c.reset(), { status: 'reset', session_id: c.sessionId, previous_turns: 1 });
    assert.equal((await c.getHistory()).messages.length, 0);
    assert.deepEqual(await c.clearHistory(), { status: 'cleared', session_id: c.sessionId });
    assert.deepEqual(await c.clearHistory(), { status: 'not_found', session_id: c.sessionId });
    await rejects(c.getHistory(), (e) => {
      assert.ok(e instanceof ChatdError);
      assert.equal(e.status, 404);
      assert.equal(e.type, 'not_found_error');
      assert.equal(e.message, 'Session not found');
      assert.match(e.requestId, /^req_/);
    });
  });

  test('chat with a system prompt; chatStream streams chunks that add up to the reply', async () => {
    const c = new ChatClient(url);
    await c.chat('first', { systemPrompt: 'Be brief.' });
    const req = (await stack.fake.requests()).find((r) => JSON.stringify(r.body).includes('first'));
    assert.equal(req.body.system, 'Be brief.');
    const chunks = [];
    const full = await c.chatStream(`count ${fake({ reply_words: 8, gap_ms: 20 })}`, (ch) => chunks.push(ch));
    assert.equal(full, 'w1 w2 w3 w4 w5 w6 w7 w8');
    assert.equal(chunks.join(''), full);
    assert.ok(chunks.length >= 4, `expected several chunks, got ${chunks.length}`);
    assert.equal((await c.getHistory()).turn_count, 2);
  });

  test('seed validation error (422) comes back typed, with the field named', async () => {
    const c = new ChatClient(url);
    await rejects(c.chat(123), (e) => {
      assert.equal(e.status, 422);
      assert.equal(e.type, 'invalid_request_error');
      assert.equal(e.message, 'message: Input should be a valid string');
      assert.ok(Array.isArray(e.body.detail));
    });
  });
});

describe('/v1 turns', () => {
  test('send() returns the reply with usage', async () => {
    const c = new ChatClient(url);
    const r = await c.send('hi there', { systemPrompt: 'S', maxTokens: 50 });
    assert.equal(r.response, 'Hello! You said: hi there');
    assert.equal(r.session_id, c.sessionId);
    assert.equal(r.stop_reason, 'end_turn');
    assert.equal(r.turn_count, 1);
    assert.equal(r.usage.output_tokens, 5); // "Hello! You said: hi there": one delta per word
    assert.ok(r.usage.input_tokens > 0);
    assert.match(r.request_id, /^req_/);
    const req = (await stack.fake.requests()).find((x) => x.body?.messages?.at(-1)?.content === 'hi there');
    assert.equal(req.body.max_tokens, 50);
    assert.equal(req.body.system, 'S');
  });

  test('send() with sessionId null lets the server name the session; requestId is passed through', async () => {
    const c = new ChatClient(url);
    const r = await c.send('anonymous', { sessionId: null, requestId: 'my-req-1' });
    assert.match(r.session_id, /^s_[0-9a-f]{24}$/);
    assert.equal(r.request_id, 'my-req-1');
  });

  test('stream() as an async iterator: start first, deltas in order, done last', async () => {
    const c = new ChatClient(url);
    const s = c.stream(`tell ${fake({ reply_words: 12, gap_ms: 10 })}`);
    assert.ok(s instanceof ChatStream);
    const kinds = [];
    let text = '';
    let done;
    for await (const ev of s) {
      kinds.push(ev.type);
      if (ev.type === 'delta') text += ev.text;
      if (ev.type === 'done') done = ev.data;
    }
    assert.equal(kinds[0], 'start');
    assert.equal(kinds.at(-1), 'done');
    assert.equal(kinds.filter((k) => k === 'delta').length, 12);
    assert.deepEqual(new Set(kinds.slice(1, -1)), new Set(['delta']));
    assert.equal(text, Array.from({ length: 12 }, (_, i) => `w${i + 1}`).join(' '));
    assert.equal(s.text, text);
    assert.equal(done.text, text);
    assert.equal(done.usage.output_tokens, 12);
    assert.equal(done.session_id, c.sessionId);
    assert.equal(done.turn_count, 1);
    assert.match(done.request_id, /^req_/);
    // The stored reply is what was streamed.
    const msgs = (await c.listMessages()).data;
    assert.equal(msgs.at(-1).content, text);
  });

  test('stream().result() with callbacks', async () => {
    const c = new ChatClient(url);
    const seen = [];
    const r = await c
      .stream('callbacks please', {
        onStart: (d) => seen.push(['start', d.session_id]),
        onDelta: (t, full) => seen.push(['delta', t, full]),
        onDone: (d) => seen.push(['done', d.stop_reason]),
        onError: (e) => seen.push(['error', e]),
      })
      .result();
    assert.equal(r.text, 'Hello! You said: callbacks please');
    assert.deepEqual(seen[0], ['start', c.sessionId]);
    assert.deepEqual(seen.at(-1), ['done', 'end_turn']);
    assert.equal(seen.at(-2)[2], r.text);
    assert.equal(seen.filter((x) => x[0] === 'error').length, 0);
  });

  test('abort() mid-stream: the iterator rejects with AbortError and the provider sees the client close', async () => {
    const c = new ChatClient(url);
    const marker = uniq('abort');
    const s = c.stream(`${marker} ${fake({ reply_words: 60, gap_ms: 50 })}`);
    let deltas = 0;
    await rejects(
      (async () => {
        for await (const ev of s) {
          if (ev.type === 'delta' && ++deltas === 3) s.abort();
        }
      })(),
      (e) => assert.ok(isAbortError(e), `not an abort: ${e}`),
    );
    assert.equal(deltas, 3);
    await rejects(s.result(), (e) => assert.equal(e.name, 'AbortError'));
    const rec = await stack.fake.waitForOutcome(marker, 'client_closed');
    assert.ok(rec.finished_at_ms);
    // The session lock was released: a new turn on the same session goes through.
    const r = await c.send('after abort');
    assert.equal(r.response, 'Hello! You said: after abort');
  });

  test('an AbortSignal passed as option cancels; leaving the loop early cancels too', async () => {
    const c = new ChatClient(url);
    const m1 = uniq('signal');
    const ac = new AbortController();
    const s = c.stream(`${m1} ${fake({ reply_words: 60, gap_ms: 50 })}`, { signal: ac.signal });
    await rejects(
      (async () => {
        for await (const ev of s) if (ev.type === 'delta') ac.abort();
      })(),
      (e) => assert.equal(e.name, 'AbortError'),
    );
    await stack.fake.waitForOutcome(m1, 'client_closed');

    const c2 = new ChatClient(url);
    const m2 = uniq('break');
    const s2 = c2.stream(`${m2} ${fake({ reply_words: 60, gap_ms: 50 })}`);
    for await (const ev of s2) if (ev.type === 'delta') break;
    await rejects(s2.result(), (e) => assert.equal(e.name, 'AbortError'));
    await stack.fake.waitForOutcome(m2, 'client_closed');
  });

  test('a signal aborted before the request starts rejects at once', async () => {
    const c = new ChatClient(url);
    await rejects(c.send('never', { signal: AbortSignal.abort() }), (e) => assert.equal(e.name, 'AbortError'));
    await rejects(c.stream('never', { signal: AbortSignal.abort() }).result(), (e) => assert.equal(e.name, 'AbortError'));
  });
});

describe('sessions, messages, stats', () => {
  test('cursor pagination over every session; get, messages, reset, delete', async () => {
    const c = new ChatClient(url);
    const ids = [];
    for (let i = 0; i < 5; i++) {
      const id = uniq(`page${i}`);
      ids.push(id);
      await c.send(`msg ${i}`, { sessionId: id });
    }
    const first = await c.listSessions({ limit: 2 });
    assert.equal(first.data.length, 2);
    assert.equal(typeof first.next_cursor, 'string');
    const second = await c.listSessions({ limit: 2, cursor: first.next_cursor });
    assert.notDeepEqual(second.data.map((s) => s.id), first.data.map((s) => s.id));

    const all = [];
    for await (const s of c.sessions({ limit: 2 })) all.push(s.id);
    assert.equal(new Set(all).size, all.length, 'no session twice');
    for (const id of ids) assert.ok(all.includes(id), `${id} listed`);
    // Newest first.
    assert.ok(all.indexOf(ids[4]) < all.indexOf(ids[0]));

    const id = ids[0];
    await c.send('second turn', { sessionId: id });
    const s = await c.getSession(id);
    assert.equal(s.id, id);
    assert.equal(s.turn_count, 2);
    assert.equal(s.message_count, 4);

    const page = await c.listMessages(id, { limit: 1 });
    assert.equal(page.data.length, 1);
    assert.equal(page.has_more, true);
    const msgs = [];
    for await (const m of c.messages(id, { limit: 1 })) msgs.push(m);
    assert.deepEqual(msgs.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
    assert.deepEqual(msgs.map((m) => m.seq), [...msgs.map((m) => m.seq)].sort((a, b) => a - b));
    assert.equal(msgs[3].usage.output_tokens, 5);

    assert.deepEqual(await c.resetSession(id), { session_id: id, previous_turns: 2 });
    assert.equal((await c.listMessages(id)).data.length, 0);

    assert.equal(await c.deleteSession(id), true);
    await rejects(c.getSession(id), (e) => {
      assert.equal(e.status, 404);
      assert.equal(e.type, 'not_found_error');
    });
    await rejects(c.deleteSession(id), (e) => assert.equal(e.status, 404));
  });

  test('stats, health', async () => {
    const c = new ChatClient(url);
    await c.send('for stats');
    const st = await c.stats();
    assert.ok(st.sessions >= 1);
    assert.ok(st.messages >= 2);
    assert.ok(st.turns >= 1);
    assert.equal(typeof st.usage, 'object');
    assert.deepEqual(await c.health(), { status: 'ok' });
  });

  test('models, estimate and per-turn cost agree with the client-side arithmetic', async () => {
    const c = new ChatClient(url);
    const models = await c.models();
    assert.ok(models && models.data.length > 0, 'GET /v1/models lists models');
    assert.equal(models.default, 'claude-sonnet-4-6');
    for (const m of models.data) {
      assert.equal(typeof m.id, 'string');
      assert.ok(m.pricing && m.pricing.input >= 0 && m.pricing.output >= 0, `${m.id} has prices`);
    }
    const r = await c.send('what does this cost? '.repeat(20));
    const pricing = models.data.find((m) => m.id === r.model).pricing;
    assert.equal(r.cost.micros, costOf(r.usage, pricing).microUsd);
    assert.equal(costUsd(r.cost), r.cost.micros / 1e6);

    const usage = { input_tokens: 12345, output_tokens: 678, cache_creation_input_tokens: 900, cache_read_input_tokens: 40000 };
    const est = await c.estimate(usage);
    const local = await c.estimateCosts(usage, { models });
    assert.equal(est.data.length, local.length);
    for (const row of est.data) {
      assert.equal(row.cost.micros, local.find((l) => l.model === row.model).microUsd, row.model);
    }
    const only = await c.estimate(usage, { models: ['claude-haiku-4-5'] });
    assert.deepEqual(only.data.map((d) => d.model), ['claude-haiku-4-5']);

    const done = await c.stream('and streamed').result();
    assert.equal(done.cost.micros, costOf(done.usage, models.data.find((m) => m.id === done.model).pricing).microUsd);
    const session = await c.getSession();
    assert.equal(session.cost.micros, r.cost.micros + done.cost.micros);
  });

  test('bad limit is a 400 invalid_request_error', async () => {
    const c = new ChatClient(url);
    await rejects(c.listSessions({ limit: 0 }), (e) => {
      assert.equal(e.status, 400);
      assert.equal(e.type, 'invalid_request_error');
    });
  });
});

describe('error mapping against the server', () => {
  test('400 for an empty message (send and stream)', async () => {
    const c = new ChatClient(url);
    for (const call of [() => c.send(''), () => c.stream('').result()]) {
      await rejects(call(), (e) => {
        assert.ok(e instanceof ChatdError);
        assert.equal(e.status, 400);
        assert.equal(e.type, 'invalid_request_error');
        assert.equal(e.message, 'message must not be empty');
        assert.match(e.requestId, /^req_/);
        assert.equal(e.inStream, false);
      });
    }
  });

  test('409 session_busy while another turn streams on the same session', async () => {
    const c = new ChatClient(url);
    const s = c.stream(`slow ${fake({ reply_words: 40, gap_ms: 50 })}`);
    const it = s[Symbol.asyncIterator]();
    assert.equal((await it.next()).value.type, 'start');
    await rejects(c.send('me too'), (e) => {
      assert.equal(e.status, 409);
      assert.equal(e.type, 'session_busy');
      assert.match(describeError(e), /still answering/);
    });
    await rejects(c.stream('me too').result(), (e) => assert.equal(e.status, 409));
    s.abort();
    await rejects(it.next(), (e) => assert.ok(isAbortError(e)));
  });

  test('503 provider_not_configured from a chatd without an API key', async () => {
    const c = new ChatClient(noKey.url);
    for (const call of [() => c.send('hello'), () => c.stream('hello').result(), () => c.chat('hello')]) {
      await rejects(call(), (e) => {
        assert.equal(e.status, 503);
        assert.match(e.message, /ANTHROPIC_API_KEY/);
        assert.match(describeError(e), /no provider API key configured|service is unavailable/);
      });
    }
    await rejects(c.send('typed'), (e) => assert.equal(e.type, 'provider_not_configured'));
  });

  test('provider failures: 502 provider_error, 503 overloaded, 429 with Retry-After, 502 auth, 504 timeout', async () => {
    const c = new ChatClient(url);
    const cases = [
      [{ status: 500 }, 502, 'provider_error'],
      [{ status: 529 }, 503, 'provider_overloaded'],
      [{ status: 401 }, 502, 'provider_auth_error'],
      [{ status: 429, retry_after: '7' }, 429, 'rate_limit_error'],
      [{ header_delay_ms: 3000 }, 504, 'provider_timeout'],
    ];
    for (const [directive, status, type] of cases) {
      await rejects(c.send(`x ${fake(directive)}`), (e) => {
        assert.equal(e.status, status, JSON.stringify(directive));
        assert.equal(e.type, type);
        if (status === 429) {
          assert.equal(e.retryAfter, 7);
          assert.equal(describeError(e), 'Rate limited: try again in 7 s.');
        }
      });
      // Streaming: the same error, as a JSON error before the stream starts or as an `error` event after `start`.
      await rejects(c.stream(`y ${fake(directive)}`).result(), (e) => {
        assert.equal(e.status, status);
        assert.equal(e.type, type);
        if (status === 429 && !e.inStream) assert.equal(e.retryAfter, 7);
      });
    }
  });

  test('an error event mid-stream is thrown as ChatdError after the deltas already seen', async () => {
    const c = new ChatClient(url);
    const s = c.stream(`z ${fake({ fault: 'midstream_error', after: 2 })}`);
    const kinds = [];
    const err = await rejects(
      (async () => {
        for await (const ev of s) kinds.push(ev.type);
      })(),
      (e) => {
        assert.ok(e instanceof ChatdError);
        assert.equal(e.inStream, true);
        assert.equal(e.type, 'provider_overloaded');
        assert.equal(e.status, 503);
        assert.match(e.requestId, /^req_/);
      },
    );
    assert.deepEqual(kinds, ['start', 'delta', 'delta']);
    assert.equal(s.text, 'Hello! You ');
    assert.match(describeError(err), /overloaded/);
    // Nothing of the failed turn was kept.
    await rejects(c.getSession(), (e) => assert.equal(e.status, 404));
  });

  test('network failure is a ChatdError with status 0', async () => {
    const c = new ChatClient('http://127.0.0.1:1');
    await rejects(c.send('x'), (e) => {
      assert.ok(e instanceof ChatdError);
      assert.equal(e.status, 0);
      assert.equal(e.type, 'network_error');
      assert.match(describeError(e), /Cannot reach/);
    });
  });
});

test('replaying a real chatd stream through an injected fetch, cut every way and with CR/CRLF, gives the same events', async () => {
  const res = await fetch(`${url}/v1/chat/stream`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ message: 'héllo wörld 世界 🎉 again', session_id: uniq('replay') }),
  });
  const raw = new Uint8Array(await res.arrayBuffer());
  const text = new TextDecoder().decode(raw);
  const reference = [];
  for await (const ev of new ChatClient('', { fetch: replay(raw, raw.length) }).stream('x')) reference.push(ev);
  assert.equal(reference.at(-1).data.text, 'Hello! You said: héllo wörld 世界 🎉 again');
  for (const eol of ['\n', '\r\n', '\r']) {
    const bytes = new TextEncoder().encode(text.replace(/\n/g, eol));
    for (const size of [1, 2, 3, 7, 64]) {
      const evs = [];
      for await (const ev of new ChatClient('', { fetch: replay(bytes, size) }).stream('x')) evs.push(ev);
      assert.deepEqual(evs.map((e) => e.data), reference.map((e) => e.data), `eol ${JSON.stringify(eol)} size ${size}`);
    }
  }
});

function replay(bytes, size) {
  return async () => {
    let i = 0;
    const body = new ReadableStream({
      pull(ctrl) {
        if (i >= bytes.length) return ctrl.close();
        ctrl.enqueue(bytes.slice(i, i + size));
        i += size;
      },
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream', 'x-request-id': 'req_replay' } });
  };
}
