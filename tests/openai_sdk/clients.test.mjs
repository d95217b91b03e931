// The client libraries chat teams use, pointed at chatd's /v1/chat/completions
// (versions pinned in package.json / package-lock.json):
// - LangChain: @langchain/openai ChatOpenAI (bindTools(...).invoke, a tool
//   loop with ToolMessage, bindTools(...).stream, withStructuredOutput(zod)
//   by JSON schema and by a forced tool, an image, .stream);
// - the Vercel AI SDK: ai + @ai-sdk/openai-compatible (generateText with tools
//   and several steps, streamText with tools, an image, streamText,
//   generateObject).
// Each against both upstream kinds (an Anthropic model and an OpenAI-compatible
// one), both served by the fake provider; what went upstream is checked too.
//
// Run from the repo root: CHATD_BIN=build/chatd node --test tests/openai_sdk/clients.test.mjs

import { test, before, after, beforeEach, describe } from 'node:test';
import assert from 'node:assert/strict';
import { ChatOpenAI } from '@langchain/openai';
import { HumanMessage, ToolMessage } from '@langchain/core/messages';
import { tool as lcTool } from '@langchain/core/tools';
import { generateText, streamText, generateObject, tool, stepCountIs } from 'ai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { z } from 'zod';
import { startFake, startChatd } from './servers.mjs';

globalThis.AI_SDK_LOG_WARNINGS = false;

let fake;
let chatd;
before(async () => {
  fake = await startFake();
  chatd = await startChatd(fake);
});
after(async () => {
  const r = chatd ? await chatd.stop() : { code: 0 };
  if (fake) await fake.stop();
  assert.equal(r.code, 0, `chatd exit: ${JSON.stringify(r)}`);
});
beforeEach(async () => {
  await fake.reset();
});

const MODES = [
  { name: 'anthropic', model: 'claude-sonnet-4-6', path: '/v1/messages' },
  { name: 'openai-compatible', model: 'gpt-4o-mini', path: '/v1/chat/completions' },
];

const echo = (t) => `Hello! You said: ${t}`;
// A real 1x1 PNG.
const PNG_B64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';

/** The image the provider request carried in its last message, as base64. */
function sentImage(q, anthropic) {
  const parts = q.body.messages.at(-1).content;
  if (anthropic) return parts.find((b) => b.type === 'image')?.source?.data;
  const url = parts.find((b) => b.type === 'image_url')?.image_url?.url ?? '';
  return url.replace(/^data:image\/png;base64,/, '');
}
const weatherSchema = z.object({ city: z.string().describe('The city') });

/** The provider requests of the test (exactly n). */
async function upstream(n) {
  const reqs = await fake.requests();
  assert.equal(reqs.length, n, JSON.stringify(reqs.map((q) => q.path)));
  return reqs;
}

/** The names of the tools a provider request declared. */
function toolNames(q, anthropic) {
  return (q.body.tools ?? []).map((t) => (anthropic ? t.name : t.function.name));
}

for (const mode of MODES) {
  const anthropic = mode.name === 'anthropic';

  describe(`LangChain ChatOpenAI via ${mode.name}`, () => {
    const chat = (opts = {}) => new ChatOpenAI({ model: mode.model, apiKey: 'unused', maxRetries: 0, timeout: 15000,
      configuration: { baseURL: chatd.baseURL }, ...opts });
    const getWeather = lcTool(async ({ city }) => `sunny in ${city}`, {
      name: 'get_weather', description: 'The weather in a city', schema: weatherSchema,
    });

    test('bindTools(...).invoke returns the tool call', async () => {
      await fake.script({ queue: [{ tool_calls: [{ name: 'get_weather', input: { city: 'Paris' } }] }] });
      const msg = await chat().bindTools([getWeather]).invoke('Weather in Paris?');
      assert.equal(msg.tool_calls.length, 1);
      assert.equal(msg.tool_calls[0].name, 'get_weather');
      assert.deepEqual(msg.tool_calls[0].args, { city: 'Paris' });
      assert.ok(msg.tool_calls[0].id);
      assert.equal(msg.response_metadata.finish_reason, 'tool_calls');
      const [q] = await upstream(1);
      assert.equal(q.path, mode.path);
      assert.deepEqual(toolNames(q, anthropic), ['get_weather']);
    });

    test('a tool loop: the ToolMessage goes back, the final answer comes', async () => {
      await fake.script({ queue: [{ tool_calls: [{ name: 'get_weather', input: { city: 'Rome' } }] }] });
      const model = chat().bindTools([getWeather]);
      const history = [new HumanMessage('Weather in Rome?')];
      const ai = await model.invoke(history);
      history.push(ai);
      for (const call of ai.tool_calls) {
        const out = await getWeather.invoke(call.args);
        history.push(new ToolMessage({ content: out, tool_call_id: call.id }));
      }
      const final = await model.invoke(history);
      assert.equal(final.content, 'Tool results: sunny in Rome');
      assert.deepEqual(final.tool_calls, []);
      const reqs = await upstream(2);
      const sent = reqs[1].body.messages;
      if (anthropic) assert.equal(sent.at(-1).content[0].tool_use_id, ai.tool_calls[0].id);
      else assert.equal(sent.at(-1).tool_call_id, ai.tool_calls[0].id);
    });

    test('bindTools(...).stream accumulates the streamed tool call', async () => {
      await fake.script({ queue: [{ reply: 'One moment.', tool_calls: [{ name: 'get_weather', input: { city: 'Nice' } }] }] });
      let acc;
      for await (const chunk of await chat().bindTools([getWeather]).stream('Weather in Nice?'))
        acc = acc ? acc.concat(chunk) : chunk;
      assert.equal(acc.content, 'One moment.');
      assert.equal(acc.tool_calls.length, 1);
      assert.equal(acc.tool_calls[0].name, 'get_weather');
      assert.deepEqual(acc.tool_calls[0].args, { city: 'Nice' });
    });

    test('withStructuredOutput(zod schema) returns the parsed object', async () => {
      const schema = z.object({ city: z.string(), temperature: z.number() });
      const out = await chat().withStructuredOutput(schema).invoke('Weather in Paris as JSON');
      assert.deepEqual(out, { city: 'x', temperature: 1 });
      const [q] = await upstream(1);
      if (anthropic) assert.ok(q.body.output_config?.format || q.body.tool_choice, 'structured output asked for');
      else assert.equal(q.body.response_format.type, 'json_schema');
    });

    test('withStructuredOutput(zod schema, functionCalling): a forced named tool, parsed', async () => {
      const schema = z.object({ city: z.string(), rain: z.boolean() });
      const out = await chat().withStructuredOutput(schema, { method: 'functionCalling', name: 'report' })
        .invoke('Report as a tool call');
      assert.deepEqual(out, { city: 'x', rain: true });
      const [q] = await upstream(1);
      if (anthropic) assert.deepEqual(q.body.tool_choice, { type: 'tool', name: 'report' });
      else assert.deepEqual(q.body.tool_choice, { type: 'function', function: { name: 'report' } });
    });

    test('an image in a HumanMessage reaches the provider', async () => {
      const msg = new HumanMessage({ content: [{ type: 'text', text: 'Describe it' },
        { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG_B64}` } }] });
      const out = await chat().invoke([msg]);
      assert.equal(out.content, echo('Describe it'));
      const [q] = await upstream(1);
      assert.equal(sentImage(q, anthropic), PNG_B64);
    });

    test('.stream yields the text in pieces', async () => {
      const text = `LangChain streaming via ${mode.name}`;
      const pieces = [];
      for await (const chunk of await chat().stream(text)) pieces.push(chunk.content);
      assert.equal(pieces.join(''), echo(text));
      assert.ok(pieces.filter(Boolean).length > 1, 'more than one piece');
      const [q] = await upstream(1);
      assert.equal(q.body.stream, true);
    });
  });

  describe(`Vercel AI SDK (openai-compatible) via ${mode.name}`, () => {
    const provider = () => createOpenAICompatible({ name: 'chatd', baseURL: chatd.baseURL, apiKey: 'unused',
      includeUsage: true, supportsStructuredOutputs: true });
    const weather = () => tool({
      description: 'The weather in a city',
      inputSchema: weatherSchema,
      execute: async ({ city }) => `rain in ${city}`,
    });

    test('generateText with tools and several steps: call, result, final text', async () => {
      await fake.script({ queue: [{ tool_calls: [{ name: 'weather', input: { city: 'Bern' } }] }] });
      const r = await generateText({
        model: provider()(mode.model),
        tools: { weather: weather() },
        stopWhen: stepCountIs(3),
        prompt: 'Weather in Bern?',
        maxRetries: 0,
      });
      assert.equal(r.steps.length, 2);
      assert.equal(r.steps[0].finishReason, 'tool-calls');
      assert.deepEqual(r.steps[0].toolCalls.map((c) => [c.toolName, c.input]), [['weather', { city: 'Bern' }]]);
      assert.match(r.text, /^Tool results: .*rain in Bern/);
      assert.equal(r.finishReason, 'stop');
      assert.ok(r.totalUsage.inputTokens > 0);
      const reqs = await upstream(2);
      assert.deepEqual(toolNames(reqs[0], anthropic), ['weather']);
    });

    test('streamText with tools: the streamed call runs, then the final text streams', async () => {
      await fake.script({ queue: [{ reply: 'Looking.', tool_calls: [{ name: 'weather', input: { city: 'Graz' } }] }] });
      const r = streamText({
        model: provider()(mode.model),
        tools: { weather: weather() },
        stopWhen: stepCountIs(3),
        prompt: 'Weather in Graz?',
        maxRetries: 0,
      });
      let text = '';
      for await (const piece of r.textStream) text += piece;
      const steps = await r.steps;
      assert.equal(steps.length, 2);
      assert.deepEqual(steps[0].toolCalls.map((c) => [c.toolName, c.input]), [['weather', { city: 'Graz' }]]);
      assert.match(text, /^Looking\.Tool results: .*rain in Graz/);
      assert.equal(await r.finishReason, 'stop');
    });

    test('generateText with an image part', async () => {
      const r = await generateText({ model: provider()(mode.model), maxRetries: 0, messages: [{ role: 'user', content: [
        { type: 'text', text: 'What is this?' },
        { type: 'image', image: Buffer.from(PNG_B64, 'base64'), mediaType: 'image/png' }] }] });
      assert.equal(r.text, echo('What is this?'));
      const [q] = await upstream(1);
      assert.equal(sentImage(q, anthropic), PNG_B64);
    });

    test('streamText yields the text', async () => {
      const prompt = `Vercel streaming via ${mode.name}`;
      const r = streamText({ model: provider()(mode.model), prompt, maxRetries: 0 });
      const pieces = [];
      for await (const piece of r.textStream) pieces.push(piece);
      assert.equal(pieces.join(''), echo(prompt));
      assert.ok(pieces.length > 1);
      const usage = await r.usage;
      assert.ok(usage.outputTokens > 0);
    });

    test('generateObject returns the object of the schema', async () => {
      const schema = z.object({ name: z.string(), count: z.number().int(), tags: z.array(z.string()) });
      const r = await generateObject({ model: provider()(mode.model), schema, prompt: 'An object', maxRetries: 0 });
      assert.deepEqual(r.object, { name: 'x', count: 1, tags: [] });
      const [q] = await upstream(1);
      if (!anthropic) assert.equal(q.body.response_format.type, 'json_schema');
    });
  });
}
