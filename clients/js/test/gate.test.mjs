// The client against chatd's own gate: API-key auth (401 + WWW-Authenticate)
// and the rate limiter (429 + Retry-After + RateLimit-*). Skipped, with the
// reason, only when this chatd binary does not have the setting at all.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ChatClient, ChatdError, describeError } from '../src/chatd.js';
import { startStack, chatdSupports } from '../../../tests/e2e/servers.mjs';

const SKIP = !chatdSupports('AUTH_MODE') || !chatdSupports('RATE_LIMIT')
  ? 'this chatd has no AUTH_MODE/RATE_LIMIT settings (chatd --help)' : false;
const TOKEN = 'test-token-0123456789';
let stack;

before(async () => {
  if (SKIP) return;
  stack = await startStack({ env: { AUTH_MODE: 'token', API_TOKEN: TOKEN, RATE_LIMIT: '3/minute' } });
});
after(async () => {
  await stack?.stop();
});

test('without or with a wrong API key: 401 authentication_error, in plain words', { skip: SKIP }, async () => {
  for (const apiKey of [null, 'wrong-key']) {
    const c = new ChatClient(stack.url, { apiKey });
    let err;
    try {
      await c.listSessions();
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof ChatdError, String(err));
    assert.equal(err.status, 401);
    assert.equal(err.type, 'authentication_error');
    assert.match(err.requestId, /^req_/);
    assert.equal(describeError(err), 'Not authorised: check your API key (Settings).');
  }
});

test('with the key: turns go through until the rate limit, then 429 with Retry-After and RateLimit-*', { skip: SKIP }, async () => {
  const c = new ChatClient(stack.url, { apiKey: TOKEN });
  assert.ok(Array.isArray((await c.listSessions()).data));
  let limited = null;
  let ok = 0;
  for (let i = 0; i < 6 && !limited; i++) {
    try {
      if (i % 2) await c.send(`turn ${i}`);
      else await c.stream(`turn ${i}`).result();
      ok++;
    } catch (e) {
      limited = e;
    }
  }
  assert.equal(ok, 3, 'the limit is 3 chat requests a minute');
  assert.ok(limited instanceof ChatdError, String(limited));
  assert.equal(limited.status, 429);
  assert.ok(limited.retryAfter > 0 && limited.retryAfter <= 60, `Retry-After ${limited.retryAfter}`);
  assert.equal(limited.rateLimit.limit, 3);
  assert.equal(limited.rateLimit.remaining, 0);
  assert.equal(describeError(limited), `Rate limited: try again in ${limited.retryAfter} s.`);
});
