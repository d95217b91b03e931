// The client's tools, images and options against the real chatd binary and the
// fake provider: runTools (a whole tool loop), streamed tool calls, images sent
// as blocks and read back from the history, options reaching the provider.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChatClient, ChatdError, imageBlock, imageUrlBlock, textBlock, toolResult, toBase64,
} from '../src/chatd.js';
import { startStack } from '../../../tests/e2e/servers.mjs';

// A valid 1x1 PNG (the fake checks the magic bytes against the media type).
const PNG_1X1 = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';
const WEATHER = {
  name: 'get_weather',
  description: 'The weather of a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

const uniq = (p) => `${p}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
const fake = (o) => `[[fake:${JSON.stringify(o)}]]`;
const lastUpstream = async () => {
  const reqs = (await stack.fake.requests()).filter((r) => r.path.startsWith('/v1/messages'));
  return reqs[reqs.length - 1].body;
};

test('helpers build the canonical blocks', () => {
  assert.deepEqual(textBlock('hi'), { type: 'text', text: 'hi' });
  const bytes = Buffer.from(PNG_1X1, 'base64');
  assert.equal(toBase64(new Uint8Array(bytes)), PNG_1X1);
  assert.deepEqual(imageBlock(new Uint8Array(bytes), 'image/png'),
    { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG_1X1 } });
  assert.deepEqual(imageUrlBlock('https://x/y.png'), { type: 'image', source: { type: 'url', url: 'https://x/y.png' } });
  assert.throws(() => imageBlock(PNG_1X1, 'image/bmp'), TypeError);
  assert.deepEqual(toolResult('c1', { t: 1 }), { tool_call_id: 'c1', content: '{"t":1}' });
  assert.deepEqual(toolResult('c1', 'boom', { isError: true }), { tool_call_id: 'c1', content: 'boom', is_error: true });
});

test('send() returns tool_calls; runTools runs the handlers and sends the results back', async () => {
  const c = new ChatClient(stack.url, { sessionId: uniq('js-tools') });
  const first = await c.send(`Weather? ${fake({ tool_calls: [{ name: 'get_weather', input: { city: 'Paris' } }] })}`,
    { tools: [WEATHER] });
  assert.equal(first.stop_reason, 'tool_use');
  assert.equal(first.tool_calls.length, 1);
  assert.equal(first.tool_calls[0].name, 'get_weather');
  assert.deepEqual(first.tool_calls[0].input, { city: 'Paris' });
  assert.equal(first.content.find((b) => b.type === 'tool_use').id, first.tool_calls[0].id);
  // answer it by hand
  const second = await c.send(null, { tools: [WEATHER], toolResults: [toolResult(first.tool_calls[0].id, '18 C')] });
  assert.equal(second.response, 'Tool results: 18 C');
  assert.deepEqual(second.tool_calls, []);

  // the same loop in one call
  const seen = [];
  const d = new ChatClient(stack.url, { sessionId: uniq('js-run') });
  const final = await d.runTools(`Weather? ${fake({ tool_calls: [{ name: 'get_weather', input: { city: 'Oslo' } }] })}`, {
    tools: [WEATHER],
    handlers: { get_weather: async ({ city }) => ({ city, temp: -3 }) },
    onToolCall: (call) => seen.push(call.name),
  });
  assert.equal(final.response, 'Tool results: {"city":"Oslo","temp":-3}');
  assert.equal(final.rounds, 2);
  assert.deepEqual(seen, ['get_weather']);
  const hist = (await d.listMessages()).data;
  assert.deepEqual(hist.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
  assert.equal(hist[1].blocks[0].type, 'tool_use');
  assert.equal(hist[2].blocks[0].type, 'tool_result');
  assert.equal(hist[2].blocks[0].tool_use_id, hist[1].blocks[0].id);
});

test('runTools sends a missing handler back as an error result', async () => {
  const c = new ChatClient(stack.url, { sessionId: uniq('js-nohandler') });
  const final = await c.runTools(`x ${fake({ tool_calls: [{ name: 'get_weather', input: { city: 'Rome' } }] })}`, {
    tools: [WEATHER], handlers: {},
  });
  assert.match(final.response, /no handler for tool get_weather/);
  const sent = await lastUpstream();
  const tr = sent.messages[sent.messages.length - 1].content.find((b) => b.type === 'tool_result');
  assert.equal(tr.is_error, true);
});

test('stream(): tool_call_delta pieces, then a complete tool_call, then done with tool_calls', async () => {
  const c = new ChatClient(stack.url, { sessionId: uniq('js-stream-tools') });
  const calls = [];
  const turn = c.stream(`go ${fake({ reply: 'Checking.', tool_calls: [{ name: 'get_weather', input: { city: 'Lima', days: 3 } }] })}`, {
    tools: [WEATHER], onToolCall: (call) => calls.push(call),
  });
  const types = [];
  let args = '';
  for await (const ev of turn) {
    types.push(ev.type);
    if (ev.type === 'tool_call_delta') args += ev.data.arguments_delta;
  }
  assert.equal(types[0], 'start');
  assert.equal(types[types.length - 1], 'done');
  const firstTool = types.indexOf('tool_call_delta');
  assert.ok(firstTool > types.lastIndexOf('delta'), types.join(','));
  assert.ok(types.indexOf('tool_call') > types.lastIndexOf('tool_call_delta'), types.join(','));
  assert.deepEqual(JSON.parse(args), { city: 'Lima', days: 3 });
  assert.equal(turn.text, 'Checking.');
  assert.deepEqual(turn.toolCalls.map((x) => x.input), [{ city: 'Lima', days: 3 }]);
  assert.deepEqual(calls, turn.toolCalls);
  assert.equal(turn.doneData.stop_reason, 'tool_use');
  assert.deepEqual(turn.doneData.tool_calls, turn.toolCalls);
});

test('an image sent as content reaches the provider and is in the history', async () => {
  const c = new ChatClient(stack.url, { sessionId: uniq('js-image') });
  const r = await c.send([textBlock('What is this?'), imageBlock(PNG_1X1)]);
  assert.equal(r.response, 'Hello! You said: What is this?');
  const sent = await lastUpstream();
  const img = sent.messages[0].content.find((b) => b.type === 'image');
  assert.equal(img.source.data, PNG_1X1);
  const [user] = (await c.listMessages()).data;
  assert.equal(user.content, 'What is this?');
  assert.deepEqual(user.blocks[1], imageBlock(PNG_1X1));
});

test('options reach the provider; a bad one is a 400 naming the field', async () => {
  const c = new ChatClient(stack.url, { sessionId: uniq('js-opts') });
  await c.send('Hi', { temperature: 0.3, topK: 5, stop: ['QQQ'], user: 'u-1' });
  const sent = await lastUpstream();
  assert.equal(sent.temperature, 0.3);
  assert.equal(sent.top_k, 5);
  assert.deepEqual(sent.stop_sequences, ['QQQ']);
  let err;
  try {
    await c.send('Hi', { topP: 7 });
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof ChatdError);
  assert.equal(err.status, 400);
  assert.match(err.message, /top_p/);
  try {
    await c.send('Hi', { presencePenalty: 1 });
    assert.fail('expected unsupported_parameter');
  } catch (e) {
    assert.equal(e.type, 'unsupported_parameter');
  }
});
