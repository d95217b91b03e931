// Tool use, images, structured output, thinking and stop sequences of the fake LLM provider
// (tests/fake_llm/server.mjs; README "Rich replies"), proven with the official SDKs
// (@anthropic-ai/sdk, openai) as independent clients: plain and streamed, the SDK stream
// helpers reassembling what the fake streams, and every validation 400.
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
after(() => stopFake(fake));

async function ctl(p, body) {
  const r = await fetch(BASE + p, body === undefined ? {} : { method: 'POST', body: JSON.stringify(body) });
  const j = await r.json();
  if (r.status !== 200) throw new Error(`${p}: ${r.status} ${JSON.stringify(j)}`);
  return j;
}
const script = (s) => ctl('/_fake/script', s);
const requests = async () => (await ctl('/_fake/requests')).requests;

beforeEach(async () => {
  await ctl('/_fake/reset', {});
});

const MODEL = 'claude-fake-1';
const ant = (opts = {}) => new Anthropic({ apiKey: 'sk-ant-test', baseURL: BASE, maxRetries: 0, timeout: 10_000, ...opts });
const oai = (opts = {}) => new OpenAI({ apiKey: 'sk-test', baseURL: BASE + '/v1', maxRetries: 0, timeout: 10_000, ...opts });
const directive = (sc) => `[[fake:${JSON.stringify(sc)}]]`;
const words = (s) => (s === '' ? 0 : s.match(/\S+\s*/g).length);

// Raw POST returning the parsed SSE events (data JSON) of a stream, or the JSON body.
function rawPost(p, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body));
    const req = http.request(BASE + p, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': 'k', authorization: 'Bearer k', 'anthropic-version': '2023-06-01', 'content-length': data.length, ...headers },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(data);
  });
}
const sseData = (text) => text.split('\n').filter((l) => l.startsWith('data: ') && l !== 'data: [DONE]').map((l) => JSON.parse(l.slice(6)));

// 1x1 PNG, and the magic bytes of the other formats (the fake checks only the header).
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';
const JPEG = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 0x4a, 0x46, 0x49, 0x46, 0, 1]).toString('base64');
const GIF = Buffer.from('GIF89a\x01\x00\x01\x00\x00\x00\x00;', 'latin1').toString('base64');
const WEBP = Buffer.concat([Buffer.from('RIFF'), Buffer.from([0x1a, 0, 0, 0]), Buffer.from('WEBPVP8L')]).toString('base64');

const WEATHER = {
  name: 'get_weather',
  description: 'Current weather',
  input_schema: {
    type: 'object',
    properties: {
      city: { type: 'string' },
      unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      days: { type: 'integer' },
      detail: { $ref: '#/$defs/detail' },
      tags: { type: 'array', items: { type: 'string' } },
      optional: { type: 'string' },
    },
    required: ['city', 'unit', 'days', 'detail', 'tags'],
    $defs: { detail: { type: 'object', properties: { hourly: { type: 'boolean' }, ratio: { type: 'number' }, note: { type: ['null', 'string'] } }, required: ['hourly', 'ratio', 'note'] } },
  },
};
const WEATHER_MIN = { city: 'x', unit: 'celsius', days: 1, detail: { hourly: true, ratio: 1, note: null }, tags: [] };
const TIME = { name: 'get_time', description: 'Time', input_schema: { type: 'object', properties: { tz: { type: 'string' } }, required: ['tz'] } };
const oaTool = (t) => ({ type: 'function', function: { name: t.name, description: t.description, parameters: t.input_schema } });

async function rejects400(p) {
  let err = null;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err, 'expected a 400');
  assert.equal(err.status, 400, String(err));
  return err;
}
// Anthropic error message of a 400 (invalid_request_error).
async function antMsg(p) {
  const e = await rejects400(p);
  assert.equal(e.error.error.type, 'invalid_request_error');
  return e.error.error.message;
}

// ---------------------------------------------------------------------------
describe('anthropic: tool use', () => {
  const twoCalls = { reply: 'Let me check both.', tool_calls: [{ name: 'get_weather', input: { city: 'Paris', unit: 'celsius' } }, { name: 'get_time', input: { tz: 'Europe/Paris' }, id: 'toolu_given' }] };

  test('scripted calls after text, non-streaming', async () => {
    const msg = await ant().messages.create({ model: MODEL, max_tokens: 512, tools: [WEATHER, TIME], messages: [{ role: 'user', content: 'Weather and time? ' + directive(twoCalls) }] });
    assert.equal(msg.stop_reason, 'tool_use');
    assert.equal(msg.stop_sequence, null);
    assert.equal(msg.content.length, 3);
    assert.deepEqual(msg.content[0], { type: 'text', text: 'Let me check both.' });
    assert.equal(msg.content[1].type, 'tool_use');
    assert.match(msg.content[1].id, /^toolu_[A-Za-z0-9]{24}$/);
    assert.equal(msg.content[1].name, 'get_weather');
    assert.deepEqual(msg.content[1].input, { city: 'Paris', unit: 'celsius' });
    assert.deepEqual(msg.content[2], { type: 'tool_use', id: 'toolu_given', name: 'get_time', input: { tz: 'Europe/Paris' } });
    const jsonTokens = Math.ceil(JSON.stringify({ city: 'Paris', unit: 'celsius' }).length / 4) + Math.ceil(JSON.stringify({ tz: 'Europe/Paris' }).length / 4);
    assert.equal(msg.usage.output_tokens, 4 + jsonTokens);
  });

  test('shape 2026 adds the caller to tool_use blocks', async () => {
    const msg = await ant().messages.create({ model: MODEL, max_tokens: 512, tools: [TIME], messages: [{ role: 'user', content: directive({ shape: '2026', tool_calls: [{ name: 'get_time', input: { tz: 'UTC' } }] }) }] });
    assert.deepEqual(msg.content[0].caller, { type: 'direct' });
  });

  test('streamed calls reassembled by messages.stream (inputJson events, finalMessage)', async () => {
    const stream = ant().messages.stream({ model: MODEL, max_tokens: 512, tools: [WEATHER, TIME], messages: [{ role: 'user', content: 'Weather and time? ' + directive(twoCalls) }] });
    const pieces = [];
    let text = '';
    stream.on('inputJson', (partial) => pieces.push(partial));
    stream.on('text', (t) => { text += t; });
    const msg = await stream.finalMessage();
    assert.equal(text, 'Let me check both.');
    assert.equal(msg.stop_reason, 'tool_use');
    assert.deepEqual(msg.content.map((b) => b.type), ['text', 'tool_use', 'tool_use']);
    assert.deepEqual(msg.content[1].input, { city: 'Paris', unit: 'celsius' });
    assert.deepEqual(msg.content[2], { type: 'tool_use', id: 'toolu_given', name: 'get_time', input: { tz: 'Europe/Paris' } });
    assert.equal(pieces.join(''), JSON.stringify({ city: 'Paris', unit: 'celsius' }) + JSON.stringify({ tz: 'Europe/Paris' }));
    assert.ok(pieces.length >= 6, `pieces: ${pieces.length}`);
  });

  test('faults and pings count every delta of a rich stream', async () => {
    const sc = { thinking: 'a b', reply: 'x y', tool_calls: [{ name: 'get_time', input: { tz: 'UTC' } }], fault: 'midstream_error', after: 4, ping: true };
    const r = await rawPost('/v1/messages', { model: MODEL, max_tokens: 512, stream: true, messages: [{ role: 'user', content: directive(sc) }] });
    const ev = sseData(r.text);
    const deltas = ev.filter((e) => e.type === 'content_block_delta').map((e) => e.delta.type);
    assert.deepEqual(deltas, ['thinking_delta', 'thinking_delta', 'signature_delta', 'text_delta']);
    assert.equal(ev.at(-1).type, 'error');
    assert.ok(ev.filter((e) => e.type === 'ping').length >= 5);
    const s = ant().messages.stream({ model: MODEL, max_tokens: 512, messages: [{ role: 'user', content: directive(sc) }] });
    await assert.rejects(s.finalMessage(), (e) => e instanceof Anthropic.APIError && e.type === 'overloaded_error');
    const late = await ant().messages.stream({ model: MODEL, max_tokens: 512, messages: [{ role: 'user', content: directive({ ...sc, fault: 'truncate', after: 99 }) }] }).finalMessage().catch((e) => e);
    assert.ok(late instanceof Error);
    assert.equal((await requests()).at(-1).outcome, 'fault:truncate');
  });

  test('wire shape of a streamed tool_use block', async () => {
    const r = await rawPost('/v1/messages', { model: MODEL, max_tokens: 512, stream: true, messages: [{ role: 'user', content: directive({ tool_calls: [{ name: 'get_time', input: { tz: 'Europe/Paris' } }] }) }] });
    assert.equal(r.status, 200);
    const ev = sseData(r.text);
    assert.deepEqual(ev.map((e) => e.type), ['message_start', 'content_block_start', 'content_block_delta', 'content_block_delta', 'content_block_delta', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop']);
    const start = ev[1];
    assert.equal(start.index, 0);
    assert.deepEqual(Object.keys(start.content_block), ['type', 'id', 'name', 'input']);
    assert.deepEqual(start.content_block.input, {});
    assert.deepEqual(ev[2].delta, { type: 'input_json_delta', partial_json: '' });
    assert.equal(ev.slice(3, 6).map((e) => e.delta.partial_json).join(''), '{"tz":"Europe/Paris"}');
    assert.deepEqual(ev[7].delta, { stop_reason: 'tool_use', stop_sequence: null });
  });

  test('full tool loop: forced tool with a generated input, then the tool result echoed back', async () => {
    const c = ant();
    const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
    const first = await c.messages.create({ model: MODEL, max_tokens: 512, tools: [WEATHER, TIME], tool_choice: { type: 'tool', name: 'get_weather' }, messages });
    assert.equal(first.stop_reason, 'tool_use');
    assert.equal(first.content.length, 1);
    assert.equal(first.content[0].name, 'get_weather');
    assert.deepEqual(first.content[0].input, WEATHER_MIN);
    messages.push({ role: 'assistant', content: first.content });
    messages.push({ role: 'user', content: [{ type: 'tool_result', tool_use_id: first.content[0].id, content: '18C, sunny' }] });
    const second = await c.messages.create({ model: MODEL, max_tokens: 512, tools: [WEATHER, TIME], messages });
    assert.equal(second.stop_reason, 'end_turn');
    assert.deepEqual(second.content, [{ type: 'text', text: 'Tool results: 18C, sunny' }]);
    // Two calls and a block-array result: joined with "; ", text blocks with "\n".
    const two = await c.messages.create({ model: MODEL, max_tokens: 512, tools: [WEATHER, TIME], messages: [
      { role: 'user', content: 'go' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_a', name: 'get_weather', input: {} }, { type: 'tool_use', id: 'toolu_b', name: 'get_time', input: {} }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_a', content: [{ type: 'text', text: 'rain' }, { type: 'text', text: '12C' }] }, { type: 'tool_result', tool_use_id: 'toolu_b', content: '09:00', is_error: false }] },
    ] });
    assert.equal(two.content[0].text, 'Tool results: rain\n12C; 09:00');
    // The request log holds the whole bodies chatd would have sent.
    const log = await requests();
    assert.equal(log.length, 3);
    assert.deepEqual(log[0].body.tool_choice, { type: 'tool', name: 'get_weather' });
    assert.deepEqual(log[0].body.tools, [WEATHER, TIME]);
    assert.equal(log[1].body.messages[2].content[0].type, 'tool_result');
    assert.equal(log[1].body.messages[2].content[0].tool_use_id, first.content[0].id);
  });

  test('disable_parallel_tool_use keeps only the first call', async () => {
    const msg = await ant().messages.create({ model: MODEL, max_tokens: 512, tools: [WEATHER, TIME], tool_choice: { type: 'auto', disable_parallel_tool_use: true }, messages: [{ role: 'user', content: directive(twoCalls) }] });
    assert.deepEqual(msg.content.map((b) => b.type), ['text', 'tool_use']);
    assert.equal(msg.content[1].name, 'get_weather');
  });

  test('tool_choice any picks the first tool; streamed forced call', async () => {
    const msg = await ant().messages.stream({ model: MODEL, max_tokens: 512, tools: [TIME, WEATHER], tool_choice: { type: 'any' }, messages: [{ role: 'user', content: 'hi' }] }).finalMessage();
    assert.equal(msg.content.length, 1);
    assert.equal(msg.content[0].name, 'get_time');
    assert.deepEqual(msg.content[0].input, { tz: 'x' });
    assert.equal(msg.stop_reason, 'tool_use');
  });

  test('tool definitions, tool_use inputs and results count toward input_tokens', async () => {
    const text = 'What is the weather?';
    const msg = await ant().messages.create({ model: MODEL, max_tokens: 512, tools: [WEATHER], messages: [{ role: 'user', content: text }] });
    assert.equal(msg.usage.input_tokens, Math.ceil((text.length + JSON.stringify([WEATHER]).length) / 4));
    const ct = await ant().messages.countTokens({ model: MODEL, tools: [WEATHER], messages: [{ role: 'user', content: text }] });
    assert.equal(ct.input_tokens, msg.usage.input_tokens);
    const loop = await ant().messages.create({ model: MODEL, max_tokens: 512, messages: [
      { role: 'user', content: 'go' },
      { role: 'assistant', content: [{ type: 'text', text: 'ok' }, { type: 'tool_use', id: 'toolu_a', name: 'f', input: { a: 1 } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_a', content: 'done' }] },
    ] });
    assert.equal(loop.usage.input_tokens, Math.ceil(('go'.length + 'ok'.length + '{"a":1}'.length + 'done'.length) / 4));
  });
});

// ---------------------------------------------------------------------------
describe('anthropic: structured output, thinking, stop sequences', () => {
  const SCHEMA = { type: 'object', properties: { answer: { type: 'integer' }, label: { type: 'string', enum: ['a', 'b'] }, extra: { type: 'string' } }, required: ['answer', 'label'], additionalProperties: false };

  test('output_config json_schema: the reply is a minimal valid instance (plain and streamed)', async () => {
    const p = { model: MODEL, max_tokens: 512, output_config: { format: { type: 'json_schema', schema: SCHEMA } }, messages: [{ role: 'user', content: '2+2?' }] };
    const msg = await ant().messages.create(p);
    assert.equal(msg.content.length, 1);
    assert.deepEqual(JSON.parse(msg.content[0].text), { answer: 1, label: 'a' });
    const streamed = await ant().messages.stream(p).finalMessage();
    assert.equal(streamed.content[0].text, msg.content[0].text);
    // A scripted json wins.
    const scripted = await ant().messages.create({ ...p, messages: [{ role: 'user', content: '2+2? ' + directive({ json: { answer: 4, label: 'b' } }) }] });
    assert.equal(scripted.content[0].text, '{"answer":4,"label":"b"}');
  });

  test('structured output via a forced tool: scenario json becomes the tool input', async () => {
    const tool = { name: 'emit', description: 'Emit the answer', input_schema: SCHEMA };
    const msg = await ant().messages.create({ model: MODEL, max_tokens: 512, tools: [tool], tool_choice: { type: 'tool', name: 'emit' }, messages: [{ role: 'user', content: '2+2? ' + directive({ json: { answer: 4, label: 'b' } }) }] });
    assert.equal(msg.stop_reason, 'tool_use');
    assert.deepEqual(msg.content.map((b) => [b.type, b.name, b.input]), [['tool_use', 'emit', { answer: 4, label: 'b' }]]);
    const dflt = await ant().messages.create({ model: MODEL, max_tokens: 512, tools: [tool], tool_choice: { type: 'tool', name: 'emit' }, messages: [{ role: 'user', content: '2+2?' }] });
    assert.deepEqual(dflt.content[0].input, { answer: 1, label: 'a' });
  });

  test('thinking enabled: a thinking block with a signature first, reassembled by the stream helper', async () => {
    const p = { model: MODEL, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [{ role: 'user', content: 'Why is the sky blue?' }] };
    const plain = await ant().messages.create(p);
    assert.equal(plain.content.length, 2);
    assert.equal(plain.content[0].type, 'thinking');
    assert.equal(plain.content[0].thinking, 'Thinking about: Why is the sky blue?');
    assert.equal(plain.content[0].signature, 'sig_' + Buffer.from('Thinking about: Why is the sky blue?').toString('base64'));
    assert.deepEqual(plain.content[1], { type: 'text', text: 'Hello! You said: Why is the sky blue?' });
    assert.equal(plain.usage.output_tokens, 8 + 7); // text words + thinking words
    assert.deepEqual(plain.usage.output_tokens_details, { thinking_tokens: 7 });
    const stream = ant().messages.stream(p);
    let thinking = '';
    let signature = null;
    stream.on('thinking', (d) => { thinking += d; });
    stream.on('signature', (s) => { signature = s; });
    const msg = await stream.finalMessage();
    assert.deepEqual(msg.content, plain.content);
    assert.equal(thinking, plain.content[0].thinking);
    assert.equal(signature, plain.content[0].signature);
    assert.deepEqual(msg.usage.output_tokens_details, { thinking_tokens: 7 });
  });

  test('scripted thinking + signature + text + tool call, streamed; thinking sent back is accepted', async () => {
    const sc = { thinking: 'I should call the clock.', thinking_signature: 'EqQBCkYIARgCKkBsig', reply: 'Checking.', tool_calls: [{ name: 'get_time', input: { tz: 'UTC' } }] };
    const p = { model: MODEL, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, tools: [TIME], messages: [{ role: 'user', content: 'time? ' + directive(sc) }] };
    const msg = await ant().messages.stream(p).finalMessage();
    assert.deepEqual(msg.content.map((b) => b.type), ['thinking', 'text', 'tool_use']);
    assert.deepEqual(msg.content[0], { type: 'thinking', thinking: 'I should call the clock.', signature: 'EqQBCkYIARgCKkBsig' });
    assert.equal(msg.content[1].text, 'Checking.');
    assert.deepEqual(msg.content[2].input, { tz: 'UTC' });
    const r = await rawPost('/v1/messages', { ...p, stream: true });
    const ev = sseData(r.text);
    const th = ev.filter((e) => e.type === 'content_block_delta' && e.index === 0).map((e) => e.delta.type);
    assert.deepEqual(th, ['thinking_delta', 'thinking_delta', 'thinking_delta', 'thinking_delta', 'thinking_delta', 'signature_delta']);
    assert.deepEqual(ev[1].content_block, { type: 'thinking', thinking: '', signature: '' });
    const back = await ant().messages.create({ ...p, messages: [
      p.messages[0],
      { role: 'assistant', content: msg.content },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: msg.content[2].id, content: '12:00' }] },
    ] });
    assert.equal(back.content.at(-1).text, 'Tool results: 12:00');
  });

  test('thinking tool loop: the answered assistant message must start with a thinking block', async () => {
    const p = (assistant) => ({ model: MODEL, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, tools: [TIME], messages: [
      { role: 'user', content: 'time?' },
      { role: 'assistant', content: assistant },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_t', content: '12:00' }] },
    ] });
    const use = { type: 'tool_use', id: 'toolu_t', name: 'get_time', input: {} };
    const m = await antMsg(ant().messages.create(p([{ type: 'text', text: 'Checking.' }, use])));
    assert.match(m, /^messages\.1\.content\.0\.type: Expected `thinking` or `redacted_thinking`, but found `text`\. When `thinking` is enabled/);
    assert.match(await antMsg(ant().messages.create(p([use]))), /but found `tool_use`/);
    assert.equal(await antMsg(ant().messages.create(p([{ type: 'thinking', thinking: 'hm' }, use]))), 'messages.1.content.0.signature: Field required');
    const ok = await ant().messages.create(p([{ type: 'redacted_thinking', data: 'EmwKAhgB' }, use]));
    assert.equal(ok.content.at(-1).text, 'Tool results: 12:00');
    // Without thinking the same history is fine.
    const { thinking, ...noThinking } = p([use]);
    assert.equal((await ant().messages.create(noThinking)).content[0].text, 'Tool results: 12:00');
  });

  test('scripted redacted_thinking block (plain and streamed)', async () => {
    const sc = { thinking: 'a b', redacted_thinking: 'EmwKAhgBEgy3va', reply: 'done' };
    const p = { model: MODEL, max_tokens: 2048, messages: [{ role: 'user', content: directive(sc) }] };
    const plain = await ant().messages.create(p);
    assert.deepEqual(plain.content.map((b) => b.type), ['thinking', 'redacted_thinking', 'text']);
    assert.deepEqual(plain.content[1], { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va' });
    const streamed = await ant().messages.stream(p).finalMessage();
    assert.deepEqual(streamed.content, plain.content);
    const ev = sseData((await rawPost('/v1/messages', { ...p, stream: true })).text);
    const i = ev.findIndex((e) => e.type === 'content_block_start' && e.index === 1);
    assert.deepEqual(ev[i].content_block, { type: 'redacted_thinking', data: 'EmwKAhgBEgy3va' });
    assert.deepEqual(ev[i + 1], { type: 'content_block_stop', index: 1 });
  });

  test('stop_sequences cut the reply (plain and streamed), tool calls dropped', async () => {
    const p = { model: MODEL, max_tokens: 512, stop_sequences: ['STOP', 'said'], messages: [{ role: 'user', content: 'hi' }] };
    const msg = await ant().messages.create(p);
    assert.deepEqual(msg.content, [{ type: 'text', text: 'Hello! You ' }]);
    assert.equal(msg.stop_reason, 'stop_sequence');
    assert.equal(msg.stop_sequence, 'said');
    const s = await ant().messages.stream(p).finalMessage();
    assert.deepEqual(s.content, msg.content);
    assert.equal(s.stop_reason, 'stop_sequence');
    assert.equal(s.stop_sequence, 'said');
    const tools = await ant().messages.create({ ...p, tools: [TIME], messages: [{ role: 'user', content: directive({ reply: 'a STOP b', tool_calls: [{ name: 'get_time', input: {} }] }) }] });
    assert.deepEqual(tools.content, [{ type: 'text', text: 'a ' }]);
    assert.equal(tools.stop_sequence, 'STOP');
    const none = await ant().messages.create({ ...p, stop_sequences: ['zzz'] });
    assert.equal(none.stop_reason, 'end_turn');
    assert.equal(none.stop_sequence, null);
  });
});

// ---------------------------------------------------------------------------
describe('anthropic: images', () => {
  const img = (source) => ({ model: MODEL, max_tokens: 256, messages: [{ role: 'user', content: [{ type: 'image', source }, { type: 'text', text: 'What is this?' }] }] });

  test('accepted: base64 png/jpeg/gif/webp, https url, an image in a tool_result; 1600 tokens each', async () => {
    for (const [mt, data] of [['image/png', PNG], ['image/jpeg', JPEG], ['image/gif', GIF], ['image/webp', WEBP]]) {
      const msg = await ant().messages.create(img({ type: 'base64', media_type: mt, data }));
      assert.equal(msg.content[0].text, 'Hello! You said: What is this?');
      assert.equal(msg.usage.input_tokens, 1600 + Math.ceil('What is this?'.length / 4), mt);
    }
    const url = await ant().messages.create(img({ type: 'url', url: 'https://example.com/cat.png' }));
    assert.equal(url.usage.input_tokens, 1600 + 4);
    const inResult = await ant().messages.create({ model: MODEL, max_tokens: 256, messages: [
      { role: 'user', content: 'shoot' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_s', name: 'screenshot', input: {} }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_s', content: [{ type: 'text', text: 'here' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG } }] }] },
    ] });
    assert.equal(inResult.content[0].text, 'Tool results: here');
    assert.equal(inResult.usage.input_tokens, 1600 + Math.ceil('shoot{}here'.length / 4));
  });

  test('refused: media type, base64, magic bytes, plain http, unknown source', async () => {
    assert.match(await antMsg(ant().messages.create(img({ type: 'base64', media_type: 'image/bmp', data: PNG }))), /^messages\.0\.content\.0\.source\.base64\.media_type: Input should be 'image\/jpeg', 'image\/png', 'image\/gif' or 'image\/webp'$/);
    assert.equal(await antMsg(ant().messages.create(img({ type: 'base64', media_type: 'image/png', data: 'not base64!' }))), 'messages.0.content.0.source.base64.data: Invalid base64 data');
    assert.equal(await antMsg(ant().messages.create(img({ type: 'base64', media_type: 'image/png', data: JPEG }))), 'messages.0.content.0.source.base64.data: Image does not match the provided media type image/png');
    assert.equal(await antMsg(ant().messages.create(img({ type: 'url', url: 'http://example.com/cat.png' }))), 'messages.0.content.0.source.url: Only HTTPS URLs are supported');
    assert.match(await antMsg(ant().messages.create(img({ type: 'path', path: '/etc/passwd' }))), /^messages\.0\.content\.0\.source: Input tag 'path'/);
    assert.equal(await antMsg(ant().messages.create({ model: MODEL, max_tokens: 256, messages: [
      { role: 'user', content: 'x' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_s', name: 's', input: {} }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_s', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/gif', data: PNG } }] }] },
    ] })), 'messages.2.content.0.content.0.source.base64.data: Image does not match the provided media type image/gif');
  });
});

// ---------------------------------------------------------------------------
describe('anthropic: validation 400s', () => {
  const base = (extra) => ant().messages.create({ model: MODEL, max_tokens: 2048, messages: [{ role: 'user', content: 'hi' }], ...extra });

  test('tools', async () => {
    assert.equal(await antMsg(base({ tools: [{ name: 'bad name', input_schema: { type: 'object' } }] })), "tools.0.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'");
    assert.equal(await antMsg(base({ tools: [{ name: 'a'.repeat(65), input_schema: { type: 'object' } }] })), "tools.0.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'");
    assert.equal(await antMsg(base({ tools: [TIME, { name: 'nameless' }] })), 'tools.1.input_schema: Field required');
    assert.equal(await antMsg(base({ tools: [{ name: 'f', input_schema: { type: 'string' } }] })), "tools.0.input_schema.type: Input should be 'object'");
    assert.equal(await antMsg(base({ tools: [TIME, TIME] })), 'tools: Tool names must be unique.');
    // A server tool needs no input_schema.
    const ok = await base({ tools: [TIME, { type: 'web_search_20250305', name: 'web_search' }] });
    assert.equal(ok.stop_reason, 'end_turn');
  });

  test('tool_choice', async () => {
    assert.equal(await antMsg(base({ tools: [TIME], tool_choice: { type: 'tool', name: 'nope' } })), "tool_choice.name: Tool 'nope' not found in tools");
    assert.equal(await antMsg(base({ tool_choice: { type: 'any' } })), 'tool_choice may only be specified while providing tools.');
    assert.match(await antMsg(base({ tools: [TIME], tool_choice: { type: 'sometimes' } })), /^tool_choice: Input tag 'sometimes'/);
    const auto = await base({ tools: [TIME], tool_choice: { type: 'auto' } });
    assert.equal(auto.stop_reason, 'end_turn');
  });

  test('tool_use / tool_result pairing', async () => {
    const use = { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'get_time', input: {} }, { type: 'tool_use', id: 'toolu_2', name: 'get_time', input: {} }] };
    const m1 = await antMsg(base({ messages: [{ role: 'user', content: 'x' }, use, { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'a' }] }] }));
    assert.equal(m1, 'messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_2. Each `tool_use` block must have a corresponding `tool_result` block in the next message.');
    const m2 = await antMsg(base({ messages: [{ role: 'user', content: 'x' }, use, { role: 'user', content: 'no results' }] }));
    assert.match(m2, /toolu_1, toolu_2\. Each/);
    const m3 = await antMsg(base({ messages: [{ role: 'user', content: 'x' }, use, { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'a' }, { type: 'tool_result', tool_use_id: 'toolu_2', content: 'b' }, { type: 'tool_result', tool_use_id: 'toolu_9', content: 'c' }] }] }));
    assert.equal(m3, 'messages.2.content.2: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9. Each `tool_result` block must have a corresponding `tool_use` block in the previous message.');
    const m4 = await antMsg(base({ messages: [{ role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'a' }] }] }));
    assert.match(m4, /^messages\.0\.content\.0: unexpected `tool_use_id`/);
    // A final assistant message with a tool_use (prefill) is not checked.
    const pre = await base({ messages: [{ role: 'user', content: 'x' }, use] });
    assert.equal(pre.stop_reason, 'end_turn');
  });

  test('thinking, output_config, stop_sequences', async () => {
    assert.equal(await antMsg(base({ thinking: { type: 'enabled', budget_tokens: 1023 } })), 'thinking.enabled.budget_tokens: Input should be greater than or equal to 1024');
    assert.match(await antMsg(base({ max_tokens: 1024, thinking: { type: 'enabled', budget_tokens: 1024 } })), /^`max_tokens` must be greater than `thinking.budget_tokens`/);
    assert.equal(await antMsg(base({ thinking: { type: 'enabled' } })), 'thinking.enabled.budget_tokens: Field required');
    assert.equal(await antMsg(base({ thinking: { type: 'enabled', budget_tokens: 1024 }, tools: [TIME], tool_choice: { type: 'any' } })), 'Thinking may not be enabled when tool_choice forces tool use.');
    assert.match(await antMsg(ant({ defaultHeaders: { 'anthropic-version': '2023-06-01' } }).messages.create({ model: MODEL, max_tokens: 2048, temperature: 0.5, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [{ role: 'user', content: 'x' }] })), /^`temperature` may only be set to 1 when thinking is enabled/);
    assert.equal(await antMsg(base({ output_config: { format: { type: 'json_object' } } })), "output_config.format.type: Input should be 'json_schema'");
    assert.equal(await antMsg(base({ output_config: { format: { type: 'json_schema' } } })), 'output_config.format.schema: Field required');
    assert.equal(await antMsg(base({ stop_sequences: ['ok', ' \n'] })), 'stop_sequences: each stop sequence must contain non-whitespace');
    const disabled = await base({ thinking: { type: 'disabled' } });
    assert.equal(disabled.content.length, 1);
  });

  test('bad scenario tool_calls fail loudly', async () => {
    assert.equal(await antMsg(base({ messages: [{ role: 'user', content: directive({ tool_calls: [{ name: 'f', input: 'x' }] }) }] })), "fake: 'tool_calls[0].input' must be an object");
    assert.equal(await antMsg(base({ messages: [{ role: 'user', content: directive({ tool_calls: [] }) }] })), "fake: 'tool_calls' must be a non-empty array");
    await assert.rejects(script({ default: { thinking: 3 } }), /'thinking' must be a string/);
  });
});

// ---------------------------------------------------------------------------
describe('openai: tool calls', () => {
  const twoCalls = { reply: 'Let me check both.', tool_calls: [{ name: 'get_weather', input: { city: 'Paris', unit: 'celsius' } }, { name: 'get_time', input: { tz: 'Europe/Paris' }, id: 'call_given' }] };
  const tools = [oaTool(WEATHER), oaTool(TIME)];

  test('scripted calls after text, non-streaming', async () => {
    const r = await oai().chat.completions.create({ model: 'gpt-fake', tools, messages: [{ role: 'user', content: 'Weather and time? ' + directive(twoCalls) }] });
    const m = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(m.content, 'Let me check both.');
    assert.equal(m.tool_calls.length, 2);
    assert.match(m.tool_calls[0].id, /^call_[A-Za-z0-9]{24}$/);
    assert.deepEqual(m.tool_calls[0].function, { name: 'get_weather', arguments: '{"city":"Paris","unit":"celsius"}' });
    assert.deepEqual(m.tool_calls[1], { id: 'call_given', type: 'function', function: { name: 'get_time', arguments: '{"tz":"Europe/Paris"}' } });
    const toolsOnly = await oai().chat.completions.create({ model: 'gpt-fake', tools, messages: [{ role: 'user', content: directive({ tool_calls: twoCalls.tool_calls }) }] });
    assert.equal(toolsOnly.choices[0].message.content, null);
  });

  test('streamed calls reassembled by chat.completions.stream, several indices', async () => {
    const stream = oai().chat.completions.stream({ model: 'gpt-fake', tools, messages: [{ role: 'user', content: 'Weather and time? ' + directive(twoCalls) }] });
    const argDeltas = [];
    stream.on('tool_calls.function.arguments.delta', (e) => argDeltas.push(e.index));
    const done = [];
    stream.on('tool_calls.function.arguments.done', (e) => done.push([e.name, e.arguments]));
    const final = await stream.finalChatCompletion();
    const m = final.choices[0].message;
    assert.equal(final.choices[0].finish_reason, 'tool_calls');
    assert.equal(m.content, 'Let me check both.');
    assert.deepEqual(m.tool_calls.map((t) => [t.id.startsWith('call_'), t.type, t.function.name, JSON.parse(t.function.arguments)]), [
      [true, 'function', 'get_weather', { city: 'Paris', unit: 'celsius' }],
      [true, 'function', 'get_time', { tz: 'Europe/Paris' }],
    ]);
    assert.equal(m.tool_calls[1].id, 'call_given');
    assert.deepEqual(done, [['get_weather', '{"city":"Paris","unit":"celsius"}'], ['get_time', '{"tz":"Europe/Paris"}']]);
    assert.ok(argDeltas.includes(0) && argDeltas.includes(1));
  });

  test('wire shape of streamed tool calls (first chunk of a tools-only reply, later chunks)', async () => {
    const r = await rawPost('/v1/chat/completions', { model: 'gpt-fake', stream: true, tools, messages: [{ role: 'user', content: directive({ tool_calls: twoCalls.tool_calls }) }] });
    const ch = sseData(r.text);
    const d = ch.map((c) => c.choices[0]?.delta);
    assert.deepEqual(d[0], { role: 'assistant', content: null, tool_calls: [{ index: 0, id: d[0].tool_calls[0].id, type: 'function', function: { name: 'get_weather', arguments: '' } }], refusal: null });
    assert.deepEqual(Object.keys(d[1]), ['tool_calls']);
    assert.deepEqual(Object.keys(d[1].tool_calls[0]), ['index', 'function']);
    assert.deepEqual(Object.keys(d[1].tool_calls[0].function), ['arguments']);
    const hdr = d.findIndex((x) => x && x.tool_calls && x.tool_calls[0].id === 'call_given');
    assert.deepEqual(d[hdr].tool_calls[0], { index: 1, id: 'call_given', type: 'function', function: { name: 'get_time', arguments: '' } });
    assert.equal(ch.at(-1).choices[0].finish_reason, 'tool_calls');
    // With text first, the first chunk is the usual role chunk.
    const r2 = await rawPost('/v1/chat/completions', { model: 'gpt-fake', stream: true, tools, messages: [{ role: 'user', content: directive(twoCalls) }] });
    assert.deepEqual(sseData(r2.text)[0].choices[0].delta, { role: 'assistant', content: '', refusal: null });
  });

  test('interleaved argument pieces of several calls are reassembled by the stream helper', async () => {
    const sc = { tool_calls: twoCalls.tool_calls, interleave_tools: true };
    const r = await rawPost('/v1/chat/completions', { model: 'gpt-fake', stream: true, tools, messages: [{ role: 'user', content: directive(sc) }] });
    const idx = sseData(r.text).map((c) => c.choices[0]?.delta?.tool_calls?.[0]?.index).filter((i) => i !== undefined);
    assert.deepEqual(idx, [0, 1, 0, 1, 0, 1, 0, 1]);
    const fin = await oai().chat.completions.stream({ model: 'gpt-fake', tools, messages: [{ role: 'user', content: directive(sc) }] }).finalChatCompletion();
    assert.deepEqual(fin.choices[0].message.tool_calls.map((t) => JSON.parse(t.function.arguments)), [{ city: 'Paris', unit: 'celsius' }, { tz: 'Europe/Paris' }]);
  });

  test('ollama sends whole calls; id null omits the id', async () => {
    const sc = { variant: 'ollama', reply: 'ok', tool_calls: [{ name: 'get_time', input: { tz: 'UTC' }, id: null }, { name: 'get_weather', input: { city: 'Oslo' } }] };
    const r = await rawPost('/v1/chat/completions', { model: 'gpt-fake', stream: true, tools, messages: [{ role: 'user', content: directive(sc) }] });
    const calls = sseData(r.text).map((c) => c.choices[0]?.delta?.tool_calls?.[0]).filter(Boolean);
    assert.deepEqual(calls[0], { index: 0, type: 'function', function: { name: 'get_time', arguments: '{"tz":"UTC"}' } });
    assert.match(calls[1].id, /^call_/);
    assert.equal(calls[1].function.arguments, '{"city":"Oslo"}');
    assert.equal(calls.length, 2);
    const j = await oai().chat.completions.create({ model: 'gpt-fake', tools, messages: [{ role: 'user', content: directive(sc) }] });
    assert.equal('id' in j.choices[0].message.tool_calls[0], false);
    const a = await ant().messages.create({ model: MODEL, max_tokens: 100, messages: [{ role: 'user', content: directive({ tool_calls: [{ name: 'f', input: {}, id: null }] }) }] });
    assert.match(a.content[0].id, /^toolu_/);
  });

  test('parallel_tool_calls false keeps only the first call', async () => {
    const r = await oai().chat.completions.create({ model: 'gpt-fake', tools, parallel_tool_calls: false, messages: [{ role: 'user', content: directive(twoCalls) }] });
    assert.equal(r.choices[0].message.tool_calls.length, 1);
    assert.equal(r.choices[0].message.tool_calls[0].function.name, 'get_weather');
  });

  test('a midstream error inside the tool-call chunks', async () => {
    const sc = { tool_calls: twoCalls.tool_calls, fault: 'midstream_error', after: 3 };
    const r = await rawPost('/v1/chat/completions', { model: 'gpt-fake', stream: true, tools, messages: [{ role: 'user', content: directive(sc) }] });
    const ch = sseData(r.text);
    assert.equal(ch.length, 5); // first chunk (header 0), 3 argument pieces, the error
    assert.ok(ch.at(-1).error);
    await assert.rejects(oai().chat.completions.stream({ model: 'gpt-fake', tools, messages: [{ role: 'user', content: directive(sc) }] }).finalChatCompletion());
  });

  test('full tool loop with runTools: the SDK runs the function and sends the result back', async () => {
    await script({ queue: [{ tool_calls: [{ name: 'get_weather', input: { city: 'Paris' } }] }] });
    const seen = [];
    const runner = oai().chat.completions.runTools({
      model: 'gpt-fake',
      messages: [{ role: 'user', content: 'Weather in Paris?' }],
      tools: [{ type: 'function', function: { name: 'get_weather', parameters: WEATHER.input_schema, function: (args) => { seen.push(args); return '18C, sunny'; }, parse: JSON.parse } }],
    });
    const content = await runner.finalContent();
    assert.deepEqual(seen, [{ city: 'Paris' }]);
    assert.equal(content, 'Tool results: 18C, sunny');
    const log = await requests();
    assert.equal(log.length, 2);
    const sent = log[1].body.messages;
    assert.equal(sent[1].role, 'assistant');
    assert.equal(sent[1].tool_calls[0].function.name, 'get_weather');
    assert.equal(sent[2].role, 'tool');
    assert.equal(sent[2].tool_call_id, sent[1].tool_calls[0].id);
  });

  test('streaming runTools loop with two calls in one reply', async () => {
    await script({ queue: [{ reply: 'Checking.', tool_calls: [{ name: 'get_weather', input: { city: 'Paris' } }, { name: 'get_time', input: { tz: 'CET' } }] }] });
    const fn = (name) => ({ type: 'function', function: { name, parameters: { type: 'object', properties: {} }, function: (a) => `${name}:${JSON.stringify(a)}`, parse: JSON.parse } });
    const runner = oai().chat.completions.runTools({ model: 'gpt-fake', stream: true, messages: [{ role: 'user', content: 'both?' }], tools: [fn('get_weather'), fn('get_time')] });
    const content = await runner.finalContent();
    assert.equal(content, 'Tool results: get_weather:{"city":"Paris"}; get_time:{"tz":"CET"}');
    const log = await requests();
    assert.equal(log.length, 2);
    assert.equal(log[1].body.messages[1].content, 'Checking.');
    assert.deepEqual(log[1].body.messages.slice(2).map((m) => m.role), ['tool', 'tool']);
  });

  test('structured output via a forced function: scenario json becomes the arguments', async () => {
    const r = await oai().chat.completions.create({ model: 'gpt-fake', tools: [{ type: 'function', function: { name: 'json_output', parameters: { type: 'object' } } }], tool_choice: { type: 'function', function: { name: 'json_output' } }, messages: [{ role: 'user', content: directive({ json: { answer: 4 } }) }] });
    assert.equal(r.choices[0].message.tool_calls[0].function.arguments, '{"answer":4}');
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
  });

  test('forced tool: required and named function, input generated from parameters', async () => {
    const req = await oai().chat.completions.create({ model: 'gpt-fake', tools, tool_choice: 'required', messages: [{ role: 'user', content: 'hi' }] });
    assert.deepEqual(JSON.parse(req.choices[0].message.tool_calls[0].function.arguments), WEATHER_MIN);
    const named = await oai().chat.completions.stream({ model: 'gpt-fake', tools, tool_choice: { type: 'function', function: { name: 'get_time' } }, messages: [{ role: 'user', content: 'hi' }] }).finalChatCompletion();
    assert.equal(named.choices[0].message.tool_calls[0].function.name, 'get_time');
    assert.deepEqual(JSON.parse(named.choices[0].message.tool_calls[0].function.arguments), { tz: 'x' });
    const noParams = await oai().chat.completions.create({ model: 'gpt-fake', tools: [{ type: 'function', function: { name: 'ping' } }], tool_choice: 'required', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(noParams.choices[0].message.tool_calls[0].function.arguments, '{}');
  });

  test('a directive of an earlier user message is not applied again after tool results', async () => {
    const c = oai();
    const messages = [{ role: 'user', content: 'time? ' + directive({ tool_calls: [{ name: 'get_time', input: { tz: 'UTC' } }] }) }];
    const first = await c.chat.completions.create({ model: 'gpt-fake', tools, messages });
    const call = first.choices[0].message.tool_calls[0];
    messages.push(first.choices[0].message, { role: 'tool', tool_call_id: call.id, content: '12:00' });
    const second = await c.chat.completions.create({ model: 'gpt-fake', tools, messages });
    assert.equal(second.choices[0].finish_reason, 'stop');
    assert.equal(second.choices[0].message.content, 'Tool results: 12:00');
    assert.equal((await requests())[1].scenario, null);
  });

  test('tools and tool-call arguments count toward prompt_tokens; tool results echoed', async () => {
    const r = await oai().chat.completions.create({ model: 'gpt-fake', tools, messages: [
      { role: 'user', content: 'go' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_a', type: 'function', function: { name: 'get_time', arguments: '{"tz":"UTC"}' } }, { id: 'call_b', type: 'function', function: { name: 'get_weather', arguments: '{}' } }] },
      { role: 'tool', tool_call_id: 'call_a', content: '12:00' },
      { role: 'tool', tool_call_id: 'call_b', content: [{ type: 'text', text: 'rain' }] },
    ] });
    assert.equal(r.choices[0].message.content, 'Tool results: 12:00; rain');
    assert.equal(r.usage.prompt_tokens, Math.ceil(('go' + '{"tz":"UTC"}' + '{}' + '12:00' + 'rain' + JSON.stringify(tools)).length / 4));
  });
});

// ---------------------------------------------------------------------------
describe('openai: structured output, reasoning, stop, images', () => {
  const SCHEMA = { type: 'object', properties: { answer: { type: 'integer' }, label: { type: 'string', enum: ['a', 'b'] } }, required: ['answer', 'label'], additionalProperties: false };

  test('response_format json_schema and json_object (create, parse, stream)', async () => {
    const rf = { type: 'json_schema', json_schema: { name: 'answer', schema: SCHEMA, strict: true } };
    const r = await oai().chat.completions.create({ model: 'gpt-fake', response_format: rf, messages: [{ role: 'user', content: '2+2?' }] });
    assert.deepEqual(JSON.parse(r.choices[0].message.content), { answer: 1, label: 'a' });
    const parsed = await oai().chat.completions.parse({ model: 'gpt-fake', response_format: rf, messages: [{ role: 'user', content: '2+2? ' + directive({ json: { answer: 4, label: 'b' } }) }] });
    assert.deepEqual(parsed.choices[0].message.parsed, { answer: 4, label: 'b' });
    const streamed = await oai().chat.completions.stream({ model: 'gpt-fake', response_format: rf, messages: [{ role: 'user', content: '2+2?' }] }).finalChatCompletion();
    assert.deepEqual(streamed.choices[0].message.parsed, { answer: 1, label: 'a' });
    const jo = await oai().chat.completions.create({ model: 'gpt-fake', response_format: { type: 'json_object' }, messages: [{ role: 'user', content: 'json please' }] });
    assert.equal(jo.choices[0].message.content, '{}');
  });

  test('reasoning: scripted reasoning_content (plain and streamed) and reasoning_effort usage', async () => {
    const sc = { thinking: 'Two plus two is four.', reply: '4' };
    const r = await oai().chat.completions.create({ model: 'gpt-fake', messages: [{ role: 'user', content: '2+2? ' + directive(sc) }] });
    assert.equal(r.choices[0].message.reasoning_content, 'Two plus two is four.');
    assert.equal(r.choices[0].message.content, '4');
    assert.equal(r.usage.completion_tokens_details.reasoning_tokens, 5);
    assert.equal(r.usage.completion_tokens, 6);
    const raw = await rawPost('/v1/chat/completions', { model: 'gpt-fake', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: directive({ ...sc, variant: 'vllm' }) }] });
    const ch = sseData(raw.text);
    const reasoning = ch.map((c) => c.choices[0]?.delta?.reasoning_content ?? '').join('');
    const content = ch.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.equal(reasoning, 'Two plus two is four.');
    assert.equal(content, '4');
    assert.equal(ch.at(-1).usage.completion_tokens_details.reasoning_tokens, 5);
    // The SDK stream helper carries the deltas through (it does not concatenate unknown fields).
    const chunks = [];
    const s = oai().chat.completions.stream({ model: 'gpt-fake', messages: [{ role: 'user', content: directive(sc) }] });
    s.on('chunk', (c) => chunks.push(c.choices[0]?.delta?.reasoning_content ?? ''));
    const fin = await s.finalChatCompletion();
    assert.equal(chunks.join(''), 'Two plus two is four.');
    assert.equal(fin.choices[0].message.content, '4');
    const oll = await rawPost('/v1/chat/completions', { model: 'gpt-fake', stream: true, messages: [{ role: 'user', content: directive({ ...sc, variant: 'ollama' }) }] });
    assert.equal(sseData(oll.text).map((c) => c.choices[0]?.delta?.reasoning ?? '').join(''), 'Two plus two is four.');
    const ollJson = await oai().chat.completions.create({ model: 'gpt-fake', messages: [{ role: 'user', content: directive({ ...sc, variant: 'ollama' }) }] });
    assert.equal(ollJson.choices[0].message.reasoning, 'Two plus two is four.');
    const eff = await oai().chat.completions.create({ model: 'gpt-fake', reasoning_effort: 'low', messages: [{ role: 'user', content: 'hi there' }] });
    assert.equal(eff.choices[0].message.reasoning_content, undefined);
    assert.equal(eff.usage.completion_tokens_details.reasoning_tokens, 4);
    assert.equal(eff.usage.completion_tokens, 5 + 4);
  });

  test('stop cuts the reply (string and array; plain and streamed)', async () => {
    const r = await oai().chat.completions.create({ model: 'gpt-fake', stop: 'said', messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(r.choices[0].message.content, 'Hello! You ');
    assert.equal(r.choices[0].finish_reason, 'stop');
    const s = await oai().chat.completions.stream({ model: 'gpt-fake', stop: ['zz', '!'], messages: [{ role: 'user', content: 'hi' }] }).finalChatCompletion();
    assert.equal(s.choices[0].message.content, 'Hello');
    assert.equal(s.choices[0].finish_reason, 'stop');
    const t = await oai().chat.completions.create({ model: 'gpt-fake', stop: ['STOP'], tools: [oaTool(TIME)], messages: [{ role: 'user', content: directive({ reply: 'a STOP b', tool_calls: [{ name: 'get_time', input: {} }] }) }] });
    assert.equal(t.choices[0].message.content, 'a ');
    assert.equal(t.choices[0].message.tool_calls, undefined);
    assert.equal(t.choices[0].finish_reason, 'stop');
  });

  test('images: data URLs and https accepted (1600 tokens each), bad ones refused', async () => {
    const withImage = (url) => ({ model: 'gpt-fake', messages: [{ role: 'user', content: [{ type: 'text', text: 'What is this?' }, { type: 'image_url', image_url: { url, detail: 'low' } }] }] });
    for (const [mt, data] of [['png', PNG], ['jpeg', JPEG], ['gif', GIF], ['webp', WEBP]]) {
      const r = await oai().chat.completions.create(withImage(`data:image/${mt};base64,${data}`));
      assert.equal(r.choices[0].message.content, 'Hello! You said: What is this?');
      assert.equal(r.usage.prompt_tokens, 1600 + 4);
    }
    await oai().chat.completions.create(withImage('https://example.com/a.png'));
    const bad = async (url, code) => {
      const e = await rejects400(oai().chat.completions.create(withImage(url)));
      assert.equal(e.code, code, `${url}: ${e.message}`);
      assert.equal(e.param, 'messages[0].content[1].image_url.url');
    };
    await bad('http://example.com/a.png', 'invalid_image_url');
    await bad('file:///etc/passwd', 'invalid_image_url');
    await bad(`data:image/png;base64,${JPEG}`, 'invalid_image_format');
    await bad(`data:image/bmp;base64,${PNG}`, 'invalid_image_format');
    await bad('data:image/png;base64,%%%', 'invalid_base64');
  });
});

// ---------------------------------------------------------------------------
describe('openai: validation 400s', () => {
  const base = (extra) => oai().chat.completions.create({ model: 'gpt-fake', messages: [{ role: 'user', content: 'hi' }], ...extra });
  const err = async (p) => {
    const e = await rejects400(p);
    assert.equal(e.type, 'invalid_request_error');
    return { message: e.message.replace(/^400 /, ''), code: e.code, param: e.param };
  };

  test('tools', async () => {
    assert.deepEqual(await err(base({ tools: [{ type: 'function', function: { name: 'a'.repeat(65) } }] })), {
      message: "Invalid 'tools[0].function.name': string too long. Expected a string with maximum length 64, but got a string with length 65 instead.", code: 'string_above_max_length', param: 'tools[0].function.name',
    });
    assert.equal((await err(base({ tools: [{ type: 'function', function: { name: '' } }] }))).code, 'empty_string');
    assert.equal((await err(base({ tools: [{ type: 'function', function: { description: 'x' } }] }))).code, 'missing_required_parameter');
    assert.deepEqual(await err(base({ tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'string' } } }] })), {
      message: `Invalid schema for function 'f': schema must be a JSON Schema of 'type: "object"', got 'type: "string"'.`, code: 'invalid_function_parameters', param: 'tools[0].function.parameters',
    });
    assert.equal((await err(base({ tools: [{ type: 'retrieval' }] }))).param, 'tools[0].type');
  });

  test('tool_choice', async () => {
    assert.equal((await err(base({ tool_choice: 'required' }))).message, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.");
    assert.match((await err(base({ tools: [oaTool(TIME)], tool_choice: { type: 'function', function: { name: 'nope' } } }))).message, /function 'nope' is not one of the functions in 'tools'/);
    assert.equal((await err(base({ tools: [oaTool(TIME)], tool_choice: 'always' }))).code, 'invalid_value');
  });

  test('tool_calls pairing', async () => {
    const call = (id) => ({ id, type: 'function', function: { name: 'get_time', arguments: '{}' } });
    const e1 = await err(base({ tools: [oaTool(TIME)], messages: [
      { role: 'user', content: 'x' },
      { role: 'assistant', content: null, tool_calls: [call('call_1'), call('call_2')] },
      { role: 'tool', tool_call_id: 'call_1', content: 'a' },
      { role: 'user', content: 'y' },
    ] }));
    assert.deepEqual(e1, { message: "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: call_2", code: null, param: 'messages.[1].role' });
    const e2 = await err(base({ messages: [{ role: 'user', content: 'x' }, { role: 'tool', tool_call_id: 'call_9', content: 'a' }] }));
    assert.deepEqual(e2, { message: "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.", code: null, param: 'messages.[1].role' });
    const e3 = await err(base({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [call('call_1')] }, { role: 'tool', tool_call_id: 'call_7', content: 'a' }] }));
    assert.equal(e3.param, 'messages.[2].role');
    const e4 = await err(base({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [call('call_1')] }, { role: 'tool', content: 'a' }] }));
    assert.equal(e4.param, 'messages[2].tool_call_id');
    const e5 = await err(base({ messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'a', tool_calls: [] }, { role: 'user', content: 'y' }] }));
    assert.equal(e5.code, 'empty_array');
  });

  test('response_format, stop, content parts', async () => {
    assert.equal((await err(base({ response_format: { type: 'xml' } }))).param, 'response_format.type');
    assert.equal((await err(base({ response_format: { type: 'json_schema' } }))).param, 'response_format.json_schema');
    assert.equal((await err(base({ response_format: { type: 'json_schema', json_schema: { schema: {} } } }))).param, 'response_format.json_schema.name');
    assert.equal((await err(base({ stop: ['a', 'b', 'c', 'd', 'e'] }))).code, 'array_above_max_length');
    assert.equal((await err(base({ parallel_tool_calls: false }))).param, 'parallel_tool_calls');
    assert.equal((await err(base({ messages: [{ role: 'user', content: [{ type: 'video', video: {} }] }] }))).param, 'messages[0].content[0].type');
  });
});
