// The playground (/ui/) in a real browser: Debian's Chromium driven by
// playwright-core, against the real chatd and the fake provider. Screenshots
// are saved to tests/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack, startChatd, chatdSupports } from './servers.mjs';
import { launch, screenshot, skipReason, watchErrors } from './browser.mjs';

const SKIP = skipReason();
if (SKIP) console.log(`# SKIP browser tests: ${SKIP}`);

let stack;
let browser;
let page;
let errors;

const fake = (o) => `[[fake:${JSON.stringify(o)}]]`;
const uniq = (p) => `${p}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
const LAST_REPLY = '#conversation li.msg.assistant:last-child .content';

before(async () => {
  if (SKIP) return;
  stack = await startStack();
  browser = await launch();
  page = browser.context.pages()[0] || (await browser.context.newPage());
  errors = watchErrors(page);
  page.on('dialog', (d) => d.accept());
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function waitStatus(prefix, timeout = 10000) {
  await page.waitForFunction((p) => document.getElementById('status').textContent.startsWith(p), prefix, { timeout });
}

async function openUi(hash = '') {
  await page.goto('about:blank'); // a full load, not a same-document hash change
  await page.goto(`${stack.url}/ui/${hash}`);
  await page.waitForSelector('#composer-input');
  await page.waitForFunction(() => !['Loading…', 'Loading the session…'].includes(document.getElementById('status').textContent));
}

async function send(text) {
  await page.fill('#composer-input', text);
  await page.click('#send');
}

/** Page errors other than the browser's own "Failed to load resource" lines for expected 4xx/5xx answers. */
function unexpectedErrors() {
  return errors.filter((e) => !e.includes('Failed to load resource'));
}

const sessionA = uniq('session-a');
const sessionB = uniq('session-b');

test('send a message: the reply streams in token by token, with usage and the cost table', { skip: SKIP || false }, async () => {
  await openUi(`#session=${sessionA}`);
  assert.match(await page.textContent('#session-title'), new RegExp(`${sessionA} · new`));
  await page.fill('#system-prompt', 'You are a test assistant.');
  // Record every length the reply goes through, in the page, as it changes.
  await page.evaluate(() => {
    window.__lengths = [];
    const conv = document.getElementById('conversation');
    new MutationObserver(() => {
      const el = conv.querySelector('li.msg.assistant:last-child .content');
      if (el) window.__lengths.push([performance.now(), el.textContent.length]);
    }).observe(conv, { childList: true, subtree: true, characterData: true });
  });
  await page.focus('#composer-input');
  await page.keyboard.type(`Stream please ${fake({ reply_words: 30, gap_ms: 60 })}`);
  await page.keyboard.press('Enter'); // Enter sends
  await page.waitForFunction((sel) => (document.querySelector(sel)?.textContent.length ?? 0) > 20, LAST_REPLY);
  assert.equal(await page.isDisabled('#stop'), false, 'Stop is enabled while streaming');
  assert.equal(await page.getAttribute('#conversation', 'aria-busy'), 'true');
  await screenshot(page, 'desktop-streaming');
  await waitStatus('Done');

  const expected = Array.from({ length: 30 }, (_, i) => `w${i + 1}`).join(' ');
  assert.equal(await page.textContent(LAST_REPLY), expected);
  const lengths = await page.evaluate(() => window.__lengths);
  const distinct = [...new Set(lengths.map(([, n]) => n))];
  assert.ok(distinct.length >= 8, `the reply grew in steps, saw ${distinct.length}: ${distinct}`);
  for (let i = 1; i < distinct.length; i++) assert.ok(distinct[i] > distinct[i - 1], 'it only grows');
  const growing = lengths.filter(([, n]) => n > 0 && n < expected.length);
  assert.ok(growing.at(-1)[0] - growing[0][0] > 500, 'partial text was on screen for a while');

  assert.match(await page.textContent('#conversation li.msg.assistant:last-child .usage'), /in · 30 out tokens · claude-sonnet-4-6 · \$0\.000/);
  assert.equal(await page.getAttribute('#conversation', 'aria-busy'), 'false');
  assert.equal(await page.isDisabled('#stop'), true);
  assert.match(await page.textContent('#session-title'), /· 1 turn$/);
  // The system prompt is now the session's and cannot be edited.
  assert.equal(await page.inputValue('#system-prompt'), 'You are a test assistant.');
  assert.equal(await page.getAttribute('#system-prompt', 'readonly'), '');
  // Usage and the per-model cost table (from GET /v1/models prices).
  assert.match(await page.textContent('#usage-summary'), /Last turn: \d+ input \+ 30 output tokens on claude-sonnet-4-6/);
  assert.equal(await page.isVisible('#cost-table'), true);
  const rows = await page.$$eval('#cost-rows tr', (trs) => trs.map((tr) => [...tr.children].map((c) => c.textContent)));
  assert.ok(rows.length >= 3, 'several models priced');
  assert.ok(rows.some((r) => r[0].startsWith('claude-sonnet-4-6')));
  for (const r of rows) assert.match(r[1], /^\$\d/);
  await screenshot(page, 'desktop-done');
  const req = (await stack.fake.requests()).find((r) => JSON.stringify(r.body).includes('Stream please'));
  assert.equal(req.body.system, 'You are a test assistant.');
});

test('Stop cancels the turn mid-stream and the provider sees the client close', { skip: SKIP || false }, async () => {
  const marker = uniq('stopme');
  await send(`${marker} ${fake({ reply_words: 100, gap_ms: 60 })}`);
  await page.waitForFunction((sel) => (document.querySelector(sel)?.textContent.length ?? 0) > 10, LAST_REPLY);
  await page.click('#stop');
  await waitStatus('Stopped');
  const rec = await stack.fake.waitForOutcome(marker, 'client_closed');
  assert.ok(rec);
  const text = await page.textContent(LAST_REPLY);
  assert.ok(text.length > 0 && !text.includes('w100'), `partial reply kept on screen: ${text}`);
  assert.match(await page.textContent('#conversation li.msg.assistant:last-child .note'), /^Stopped\./);
  assert.equal(await page.isDisabled('#stop'), true);
  assert.equal(await page.isDisabled('#send'), false);
  await screenshot(page, 'desktop-stopped');
});

test('reload shows the history of the session, incomplete reply marked', { skip: SKIP || false }, async () => {
  await page.reload();
  await waitStatus('Loaded');
  assert.equal(new URL(page.url()).hash, `#session=${sessionA}`);
  const msgs = await page.$$eval('#conversation li.msg', (lis) =>
    lis.map((li) => [li.classList.contains('user') ? 'user' : 'assistant', li.querySelector('.content').textContent,
      li.querySelector('.note').hidden ? '' : li.querySelector('.note').textContent]));
  assert.equal(msgs.length, 4);
  assert.deepEqual(msgs.map((m) => m[0]), ['user', 'assistant', 'user', 'assistant']);
  assert.match(msgs[0][1], /^Stream please/);
  assert.equal(msgs[1][1], Array.from({ length: 30 }, (_, i) => `w${i + 1}`).join(' '));
  assert.match(msgs[3][2], /incomplete/);
  assert.match(await page.textContent('#session-title'), new RegExp(sessionA));
  await screenshot(page, 'desktop-reloaded');
});

test('switch sessions through the sidebar', { skip: SKIP || false }, async () => {
  await page.click('#new-session');
  await waitStatus('New session');
  assert.equal(await page.$$eval('#conversation li', (l) => l.length), 0);
  assert.equal(await page.getAttribute('#system-prompt', 'readonly'), null, 'a new session has an editable prompt');
  // Name the second session ourselves for the test (the page accepts any id in the address).
  await page.evaluate((id) => { window.location.hash = `#session=${id}`; }, sessionB);
  await waitStatus('New session');
  await send('hello from the second session');
  await waitStatus('Done');
  await page.waitForSelector(`#session-list button[data-id="${sessionB}"]`);
  await page.waitForSelector(`#session-list button[data-id="${sessionA}"]`);
  assert.equal(await page.getAttribute(`#session-list button[data-id="${sessionB}"]`, 'aria-current'), 'true');

  await page.click(`#session-list button[data-id="${sessionA}"]`);
  await waitStatus('Loaded 4 messages');
  assert.equal(new URL(page.url()).hash, `#session=${sessionA}`);
  assert.match(await page.textContent('#conversation'), /Stream please/);
  assert.doesNotMatch(await page.textContent('#conversation'), /second session/);
  assert.equal(await page.getAttribute(`#session-list button[data-id="${sessionA}"]`, 'aria-current'), 'true');

  await page.click(`#session-list button[data-id="${sessionB}"]`);
  await waitStatus('Loaded 2 messages');
  assert.match(await page.textContent(LAST_REPLY), /Hello! You said: hello from the second session/);
  await screenshot(page, 'desktop-switched');
});

test('reset and delete', { skip: SKIP || false }, async () => {
  await page.click('#reset-session'); // the confirm() dialog is accepted
  await waitStatus('Reset: 1 turn removed');
  assert.equal(await page.$$eval('#conversation li', (l) => l.length), 0);
  assert.match(await page.textContent('#session-title'), /· 0 turns/);
  await page.click('#delete-session');
  await waitStatus(`Deleted session ${sessionB}`);
  await page.waitForFunction((id) => !document.querySelector(`#session-list button[data-id="${id}"]`), sessionB);
  assert.notEqual(new URL(page.url()).hash, `#session=${sessionB}`);
});

test('provider errors are shown in plain words, and nothing is kept', { skip: SKIP || false }, async () => {
  await openUi(`#session=${uniq('errors')}`);
  await send(`overload ${fake({ status: 529 })}`);
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await page.textContent('#error-text'), /^The model provider is overloaded right now/);
  assert.match(await page.textContent('#error-detail'), /HTTP 503 · provider_overloaded · request req_/);
  assert.match(await page.textContent('#conversation li.msg.user:last-child .note'), /Not saved/);
  assert.equal(await page.$$eval('#conversation li.msg.assistant', (l) => l.length), 0);
  assert.match(await page.inputValue('#composer-input'), /^overload/, 'the message is back in the box, ready to retry');
  await screenshot(page, 'desktop-error-overloaded');

  await send(`limit ${fake({ status: 429, retry_after: '7' })}`);
  await page.waitForFunction(() => document.getElementById('error-text').textContent.startsWith('Rate limited'));
  // "7 s" when the server passes the provider's Retry-After on (a JSON 429, or retry_after in the SSE error event).
  assert.match(await page.textContent('#error-text'), /^Rate limited: try again in (7 s|a moment)\.$/);

  await send(`midway ${fake({ fault: 'midstream_error', after: 3 })}`);
  await page.waitForFunction(() => document.getElementById('error-text').textContent.includes('overloaded'));
  assert.match(await page.textContent('#conversation li.msg.assistant:last-child .note'), /failed midway and was not saved/);
  await page.click('#error-dismiss');
  assert.equal(await page.isHidden('#error'), true);
});

test('a chatd without a provider key says so in plain words', { skip: SKIP || false }, async () => {
  const noKey = await startChatd({ fakeUrl: stack.fake.url, apiKey: null });
  try {
    const p2 = await browser.context.newPage();
    await p2.goto(`${noKey.url}/ui/#session=${uniq('nokey')}`);
    await p2.waitForSelector('#composer-input');
    await p2.fill('#composer-input', 'hello?');
    await p2.click('#send');
    await p2.waitForSelector('#error:not([hidden])');
    assert.match(await p2.textContent('#error-text'), /^The server has no provider API key configured/);
    await screenshot(p2, 'desktop-error-no-key');
    await p2.close();
  } finally {
    await noKey.stop();
  }
});

const GATE_SKIP = SKIP || (!chatdSupports('AUTH_MODE') || !chatdSupports('RATE_LIMIT')
  ? 'this chatd has no AUTH_MODE/RATE_LIMIT settings (chatd --help)' : false);

test('API key typed once in Settings and kept; 401 and 429 in plain words', { skip: GATE_SKIP }, async () => {
  const token = 'e2e-token-0123456789';
  const gated = await startChatd({ fakeUrl: stack.fake.url, env: { AUTH_MODE: 'token', API_TOKEN: token, RATE_LIMIT: '2/minute' } });
  const p = await browser.context.newPage();
  try {
    const status = (prefix) => p.waitForFunction((x) => document.getElementById('status').textContent.startsWith(x), prefix);
    await p.goto(`${gated.url}/ui/#session=${uniq('gated')}`);
    await p.waitForFunction(() => document.getElementById('sessions-note').textContent.includes('Not authorised'));
    await p.fill('#composer-input', 'first try');
    await p.click('#send');
    await p.waitForSelector('#error:not([hidden])');
    assert.equal(await p.textContent('#error-text'), 'Not authorised: check your API key (Settings).');
    assert.match(await p.textContent('#error-detail'), /HTTP 401 · authentication_error/);
    await screenshot(p, 'desktop-error-unauthorised');
    await p.click('#error-settings');
    assert.equal(await p.evaluate(() => document.activeElement.id), 'api-key');
    await p.keyboard.type(token);
    await p.keyboard.press('Tab'); // the change event saves it
    await status('API key saved');
    await p.waitForFunction(() => document.getElementById('sessions-note').textContent === 'No saved sessions yet.');
    assert.equal(await p.inputValue('#composer-input'), 'first try', 'the message waited in the box');
    await p.click('#send');
    await status('Done');

    await p.reload(); // the key is remembered by this browser
    await status('Loaded 2 messages');
    assert.equal(await p.inputValue('#api-key'), token);
    await p.fill('#composer-input', 'second');
    await p.click('#send');
    await status('Done');
    await p.fill('#composer-input', 'third');
    await p.click('#send');
    await p.waitForSelector('#error:not([hidden])');
    assert.match(await p.textContent('#error-text'), /^Rate limited: try again in \d+ s\.$/);
    await screenshot(p, 'desktop-error-rate-limited');
  } finally {
    await p.close();
    await gated.stop();
  }
});

test('HTML in a reply (and in the stored history) is shown as text, never run', { skip: SKIP || false }, async () => {
  const id = uniq('xss');
  await openUi(`#session=${id}`);
  const evil = '<script>window.__xss=1</script> <img src=x onerror="window.__xss=2"> ' +
    '[click](javascript:window.__xss=3) **bold** <b onmouseover="window.__xss=4">b</b>';
  await send(evil);
  await waitStatus('Done');
  const check = async () => {
    const r = await page.evaluate((sel) => {
      const el = document.querySelector(sel);
      const conv = document.getElementById('conversation');
      return {
        flag: window.__xss,
        text: el.textContent,
        tags: [...conv.querySelectorAll('.content *')].map((n) => n.tagName.toLowerCase()),
        handlers: [...conv.querySelectorAll('*')].flatMap((n) => [...n.attributes].map((a) => a.name)).filter((n) => n.startsWith('on')),
        hrefs: [...conv.querySelectorAll('a')].map((a) => a.getAttribute('href')),
      };
    }, LAST_REPLY);
    assert.equal(r.flag, undefined, 'no script ran');
    assert.ok(r.text.includes('<script>window.__xss=1</script>'), r.text);
    assert.ok(r.text.includes('<img src=x onerror="window.__xss=2">'));
    assert.ok(r.text.includes('[click](javascript:window.__xss=3)'));
    assert.deepEqual([...new Set(r.tags)].sort(), ['p', 'strong']);
    assert.deepEqual(r.handlers, []);
    assert.deepEqual(r.hrefs, []);
  };
  await check();
  // Hovering the would-be element does nothing either.
  await page.hover(LAST_REPLY);
  await screenshot(page, 'desktop-xss-as-text');
  await page.reload();
  await waitStatus('Loaded 2 messages');
  await check();
});

test('phone-sized screen: sessions in a drawer; keyboard: skip link, Shift+Enter, Escape', { skip: SKIP || false }, async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await openUi(`#session=${sessionA}`);
  // Keyboard alone: the first Tab reaches the skip link, which leads to the message box.
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.className), 'skip-link');
  assert.equal(await page.isVisible('.skip-link'), true);
  await page.keyboard.press('Enter');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'composer-input');
  assert.equal(new URL(page.url()).hash, `#session=${sessionA}`, 'the skip link does not change the address');
  assert.equal(await page.getAttribute('#sidebar-toggle', 'aria-expanded'), 'false');
  assert.equal(await page.isVisible('#sidebar'), false, 'the drawer starts closed');
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `no horizontal scrolling (${width}px)`);
  await screenshot(page, 'phone-conversation');

  await page.click('#sidebar-toggle');
  await page.waitForFunction(() => document.getElementById('sidebar').getBoundingClientRect().left >= 0);
  assert.equal(await page.getAttribute('#sidebar-toggle', 'aria-expanded'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'new-session', 'focus moves into the drawer');
  await screenshot(page, 'phone-sessions');
  await page.keyboard.press('Escape');
  assert.equal(await page.getAttribute('#sidebar-toggle', 'aria-expanded'), 'false');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'sidebar-toggle');

  await page.focus('#composer-input');
  await page.keyboard.type('line one');
  await page.keyboard.press('Shift+Enter');
  await page.keyboard.type(`line two ${fake({ reply_words: 40, gap_ms: 60 })}`);
  assert.match(await page.inputValue('#composer-input'), /^line one\nline two/);
  await page.keyboard.press('Enter');
  await page.waitForFunction((sel) => (document.querySelector(sel)?.textContent.length ?? 0) > 5, LAST_REPLY);
  await page.keyboard.press('Escape'); // stops the reply
  await waitStatus('Stopped');
  await screenshot(page, 'phone-after-stop');
  await page.setViewportSize({ width: 1280, height: 820 });
});

test('no script errors on the page', { skip: SKIP || false }, () => {
  assert.deepEqual(unexpectedErrors(), []);
});
