// The playground (/ui/) with images and tools, in Debian's Chromium (playwright-core)
// against the real chatd and the fake provider: attach an image and see it sent,
// stored and shown again; a reply that calls a tool shown readably, its result
// entered and sent back, the loop finished, and the history showing both.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startStack } from './servers.mjs';
import { launch, screenshot, skipReason, watchErrors } from './browser.mjs';

const SKIP = skipReason();
if (SKIP) console.log(`# SKIP browser tests: ${SKIP}`);

// A valid 1x1 PNG (the fake checks the magic bytes against the media type).
const PNG_1X1 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';
const TOOLS = [{
  name: 'get_weather',
  description: 'The weather of a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
}];

let stack;
let browser;
let page;
let errors;

const fake = (o) => `[[fake:${JSON.stringify(o)}]]`;
const uniq = (p) => `${p}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
// The last user message (the conversation alternates: it is the one before the last reply).
const LAST_USER = '#conversation li.msg.user:nth-last-child(2)';
const LAST_REPLY = '#conversation li.msg.assistant:last-child';

before(async () => {
  if (SKIP) return;
  stack = await startStack();
  browser = await launch();
  page = browser.context.pages()[0] || (await browser.context.newPage());
  errors = watchErrors(page);
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

async function waitStatus(prefix, timeout = 10000) {
  await page.waitForFunction((p) => document.getElementById('status').textContent.startsWith(p), prefix, { timeout });
}

async function openUi(hash = '') {
  await page.goto('about:blank');
  await page.goto(`${stack.url}/ui/${hash}`);
  await page.waitForSelector('#composer-input');
  await page.waitForFunction(() => !['Loading…', 'Loading the session…'].includes(document.getElementById('status').textContent));
}

const upstream = async () => (await stack.fake.requests()).filter((r) => r.path.startsWith('/v1/messages'));

test('attach an image: previewed, sent as a base64 image block, shown in the reply history after a reload', { skip: SKIP || false }, async () => {
  const sid = uniq('img');
  await openUi(`#session=${sid}`);
  await page.fill('#tools', '');
  await page.setInputFiles('#attach-input', { name: 'dot.png', mimeType: 'image/png', buffer: Buffer.from(PNG_1X1, 'base64') });
  await page.waitForSelector('#attachments li.attachment');
  assert.match(await page.textContent('#attachments'), /dot\.png/);
  assert.equal(await page.isVisible('#attachments'), true);
  await page.fill('#composer-input', 'What is in this picture?');
  await page.click('#send');
  await waitStatus('Done');
  // the attachment list is emptied, the message shows the picture (loaded: 1x1)
  assert.equal(await page.isVisible('#attachments'), false);
  await page.waitForFunction((sel) => {
    const img = document.querySelector(`${sel} img.thumb`);
    return img && img.complete && img.naturalWidth === 1;
  }, LAST_USER);
  assert.match(await page.getAttribute(`${LAST_USER} img.thumb`, 'src'), /^blob:/);
  assert.match(await page.textContent(`${LAST_USER} .content`), /What is in this picture\?/);
  assert.equal(await page.textContent(`${LAST_REPLY} .content`), 'Hello! You said: What is in this picture?');
  const sent = (await upstream()).at(-1).body.messages.at(-1).content;
  assert.deepEqual(sent.find((b) => b.type === 'image').source, { type: 'base64', media_type: 'image/png', data: PNG_1X1 });
  await screenshot(page, 'tools-image-sent');

  // An image alone (no text) is a message too.
  await page.setInputFiles('#attach-input', { name: 'again.png', mimeType: 'image/png', buffer: Buffer.from(PNG_1X1, 'base64') });
  await page.waitForSelector('#attachments li.attachment');
  await page.click('#send');
  await waitStatus('Done');

  await openUi(`#session=${sid}`); // the history, from the server
  assert.equal(await page.locator('#conversation li.msg.user').count(), 2);
  await page.waitForFunction(() => {
    const imgs = [...document.querySelectorAll('#conversation li.msg.user img.thumb')];
    return imgs.length === 2 && imgs.every((i) => i.complete && i.naturalWidth === 1);
  });
  assert.match(await page.textContent('#conversation li.msg.user >> nth=0'), /What is in this picture\?/);
});

test('a file that is not an image is refused in plain words', { skip: SKIP || false }, async () => {
  await page.setInputFiles('#attach-input', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('hello') });
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await page.textContent('#error-text'), /notes\.txt: only PNG, JPEG, GIF and WebP/);
  assert.equal(await page.isVisible('#attachments'), false);
  await page.click('#error-dismiss');
});

test('a reply that calls a tool: the call shown readably, its result entered and sent, the loop finished', { skip: SKIP || false }, async () => {
  const sid = uniq('tools');
  await openUi(`#session=${sid}`);
  await page.fill('#tools', JSON.stringify(TOOLS));
  await page.fill('#composer-input', `Weather in Paris? ${fake({ reply: 'Let me check.', tool_calls: [{ name: 'get_weather', input: { city: 'Paris' } }] })}`);
  await page.click('#send');
  await waitStatus('The model called 1 tool');
  const call = `${LAST_REPLY} .tool-call`;
  assert.equal(await page.textContent(`${call} .tool-name`), 'get_weather');
  assert.deepEqual(JSON.parse(await page.textContent(`${call} .tool-json`)), { city: 'Paris' });
  assert.match(await page.textContent(`${LAST_REPLY} .content`), /Let me check\./);
  // the tools were sent upstream
  assert.deepEqual((await upstream()).at(-1).body.tools.map((t) => t.name), ['get_weather']);
  // a result box per call
  assert.equal(await page.isVisible('#pending-tools'), true);
  assert.match(await page.textContent('#pending-tool-list'), /Result of get_weather/);
  await screenshot(page, 'tools-call-shown');
  await page.fill('#pending-tool-list textarea', '18 C and sunny');
  await page.click('#send');
  await waitStatus('Done');
  assert.equal(await page.isVisible('#pending-tools'), false);
  const res = `${LAST_USER} .tool-result`;
  assert.equal(await page.textContent(`${res} .tool-name`), 'get_weather');
  assert.equal(await page.textContent(`${res} .tool-json`), '18 C and sunny');
  assert.equal(await page.textContent(`${LAST_REPLY} .content`), 'Tool results: 18 C and sunny');
  const last = (await upstream()).at(-1).body.messages.at(-1).content;
  assert.equal(last[0].type, 'tool_result');
  await screenshot(page, 'tools-loop-done');

  // After a reload the history shows the call and the result the same way.
  await openUi(`#session=${sid}`);
  assert.equal(await page.textContent('#conversation .tool-call .tool-name'), 'get_weather');
  assert.equal(await page.textContent('#conversation .tool-result .tool-json'), '18 C and sunny');
  assert.equal(await page.textContent('#conversation .tool-result .tool-name'), 'get_weather');
  assert.equal(await page.isVisible('#pending-tools'), false);
});

test('a session left waiting for tool results asks for them again after a reload', { skip: SKIP || false }, async () => {
  const sid = uniq('pending');
  await openUi(`#session=${sid}`);
  await page.fill('#tools', JSON.stringify(TOOLS));
  await page.fill('#composer-input', `go ${fake({ tool_calls: [{ name: 'get_weather', input: { city: 'Oslo' } }] })}`);
  await page.click('#send');
  await waitStatus('The model called 1 tool');
  await openUi(`#session=${sid}`);
  assert.equal(await page.isVisible('#pending-tools'), true);
  await page.fill('#pending-tool-list textarea', 'no data');
  await page.check('#pending-tool-list .tool-is-error');
  await page.click('#send');
  await waitStatus('Done');
  assert.match(await page.getAttribute(`${LAST_USER} .tool-result`, 'class'), /error/);
  const last = (await upstream()).at(-1).body.messages.at(-1).content;
  assert.equal(last[0].is_error, true);
  await page.fill('#tools', '');
});

test('invalid tools JSON in Settings is refused before sending', { skip: SKIP || false }, async () => {
  await page.fill('#tools', '{not json');
  const before = (await upstream()).length;
  await page.fill('#composer-input', 'hello');
  await page.click('#send');
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await page.textContent('#error-text'), /Tools \(Settings\) is not valid JSON/);
  assert.equal((await upstream()).length, before);
  await page.fill('#tools', '');
  await page.click('#error-dismiss');
});

test('a reply that thinks first: the thinking is folded away above the answer', { skip: SKIP || false }, async () => {
  await openUi(`#session=${uniq('think')}`);
  await page.fill('#composer-input', `Hmm ${fake({ thinking: 'first this, then that', reply: 'The answer.' })}`);
  await page.click('#send');
  await waitStatus('Done');
  const th = `${LAST_REPLY} details.thinking`;
  assert.equal(await page.textContent(`${th} summary`), 'Thinking');
  assert.equal(await page.getAttribute(th, 'open'), null, 'folded');
  assert.equal(await page.textContent(`${th} .thinking-text`), 'first this, then that');
  assert.equal(await page.textContent(`${LAST_REPLY} .text-block`), 'The answer.');
});

test('no script errors on the page', { skip: SKIP || false }, () => {
  assert.deepEqual(errors.filter((e) => !e.includes('Failed to load resource')), []);
});
