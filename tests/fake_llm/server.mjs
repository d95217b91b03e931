#!/usr/bin/env node
// Fake LLM provider for chatd tests and benchmarks.
//
// Speaks the Anthropic Messages API wire format (POST /v1/messages, streaming and
// not) and an OpenAI-compatible Chat Completions format (POST /v1/chat/completions)
// exactly enough that the official SDKs accept it (see tests/fake_llm/fidelity.test.mjs),
// and can inject every fault chatd must survive (error statuses, mid-stream errors,
// resets, stalls, truncation, malformed JSON, odd line endings, split TCP writes).
// Reference: docs/PROTOCOLS.md sections A, B and C. Knobs: README.md here.
//
// Plain Node `http`, no dependencies: it must never be the bottleneck of a benchmark.
// With --h2c the same port also speaks HTTP/2 with prior knowledge (h2c, node's
// http2 compatibility API, the same request handler): a connection whose first
// bytes are the HTTP/2 preface goes to the http2 server, any other to the http one.

import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { randomFillSync } from 'node:crypto';
import { performance } from 'node:perf_hooks';

// ---------------------------------------------------------------------------
// CLI

function parseArgs(argv) {
  const opts = { port: 0, host: '127.0.0.1', apiKey: null, logMax: 10000, strictAlternation: false, h2c: false, h2MaxStreams: 1000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`missing value for ${a}`);
      return argv[++i];
    };
    if (a === '--port') opts.port = Number(next());
    else if (a === '--host') opts.host = next();
    else if (a === '--api-key') opts.apiKey = next();
    else if (a === '--log-max') opts.logMax = Number(next());
    else if (a === '--strict-alternation') opts.strictAlternation = true;
    else if (a === '--h2c') opts.h2c = true;
    else if (a === '--h2-max-streams') opts.h2MaxStreams = Number(next());
    else if (a === '-h' || a === '--help') usage(null);
    else usage(`unknown argument ${a}`);
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) usage('bad --port');
  if (!Number.isInteger(opts.logMax) || opts.logMax < 1) usage('bad --log-max');
  if (!Number.isInteger(opts.h2MaxStreams) || opts.h2MaxStreams < 1 || opts.h2MaxStreams > 2 ** 31 - 1) usage('bad --h2-max-streams');
  return opts;
}

function usage(err) {
  const text =
    'usage: node tests/fake_llm/server.mjs [--port N] [--host 127.0.0.1] [--api-key K]\n' +
    '                                     [--log-max N] [--strict-alternation] [--h2c] [--h2-max-streams N]\n';
  if (err) {
    process.stderr.write(`fake_llm: ${err}\n${text}`);
    process.exit(2);
  }
  process.stdout.write(text);
  process.exit(0);
}

const OPTS = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------------------
// Small helpers

const B62 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const randPool = Buffer.alloc(4096);
let randPos = randPool.length;

// prefix + 24 base62 characters, e.g. req_018EeWyXxfu5pfWkrYcMdjWG.
function randomId(prefix) {
  if (randPos + 24 > randPool.length) {
    randomFillSync(randPool);
    randPos = 0;
  }
  let s = prefix;
  for (let i = 0; i < 24; i++) s += B62[randPool[randPos++] % 62];
  return s;
}

function nowMs() {
  return performance.timeOrigin + performance.now();
}

// Unicode code points, not UTF-16 units, so a C test can compute the same count.
function codePoints(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xdc00 && c <= 0xdfff && i > 0) {
      const p = s.charCodeAt(i - 1);
      if (p >= 0xd800 && p <= 0xdbff) n--;
    }
  }
  return n;
}

const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

// The 2026 real shape pads JSON with spaces before the closing brace.
function padJson(s) {
  return s.slice(0, -1) + ' '.repeat(1 + (s.length % 15)) + '}';
}

// ---------------------------------------------------------------------------
// Scenarios

const SCENARIO_FIELDS = new Set([
  'reply', 'reply_words', 'stop_reason', 'finish_reason', 'usage', 'shape', 'headers',
  'header_delay_ms', 'ttft_ms', 'gap_ms',
  'status', 'error_type', 'error_message', 'retry_after', 'retry_after_ms', 'should_retry', 'body', 'content_type',
  'fault', 'after', 'stall_ms',
  'line_ending', 'split', 'split_delay_ms', 'pad_json', 'ping',
  'variant',
  'tool_calls', 'thinking', 'thinking_signature', 'redacted_thinking', 'json', 'interleave_tools',
]);
const FAULTS = new Set(['midstream_error', 'reset', 'stall', 'truncate', 'malformed', 'data_only']);
const VARIANTS = new Set(['openai', 'groq', 'vllm', 'ollama', 'llamacpp']);

// Returns an error string for an invalid scenario, or null. Strict so that a typo in a
// test's scenario fails loudly instead of silently running the default behaviour.
function checkScenario(sc) {
  if (!isObj(sc)) return 'scenario must be a JSON object';
  for (const k of Object.keys(sc)) if (!SCENARIO_FIELDS.has(k)) return `unknown scenario field '${k}'`;
  const nonNegNum = ['reply_words', 'header_delay_ms', 'ttft_ms', 'gap_ms', 'after', 'stall_ms', 'retry_after_ms', 'split_delay_ms'];
  for (const k of nonNegNum) {
    if (k in sc && !(typeof sc[k] === 'number' && Number.isFinite(sc[k]) && sc[k] >= 0)) return `'${k}' must be a number >= 0`;
  }
  if ('reply' in sc && typeof sc.reply !== 'string') return "'reply' must be a string";
  if ('status' in sc && !(Number.isInteger(sc.status) && sc.status >= 100 && sc.status <= 599)) return "'status' must be an HTTP status";
  if ('fault' in sc && !FAULTS.has(sc.fault)) return `unknown fault '${sc.fault}'`;
  if ('line_ending' in sc && !['lf', 'crlf', 'cr'].includes(sc.line_ending)) return "'line_ending' must be lf, crlf or cr";
  if ('variant' in sc && !VARIANTS.has(sc.variant)) return `unknown variant '${sc.variant}'`;
  if ('shape' in sc && !['classic', '2026'].includes(sc.shape)) return "'shape' must be classic or 2026";
  if ('usage' in sc && !isObj(sc.usage)) return "'usage' must be an object";
  if ('headers' in sc && !isObj(sc.headers)) return "'headers' must be an object";
  if ('ping' in sc && !(typeof sc.ping === 'boolean' || (Number.isInteger(sc.ping) && sc.ping >= 1))) return "'ping' must be a boolean or an integer >= 1";
  if ('tool_calls' in sc) {
    if (!Array.isArray(sc.tool_calls) || sc.tool_calls.length === 0) return "'tool_calls' must be a non-empty array";
    for (let i = 0; i < sc.tool_calls.length; i++) {
      const t = sc.tool_calls[i];
      if (!isObj(t)) return `'tool_calls[${i}]' must be an object`;
      for (const k of Object.keys(t)) if (k !== 'name' && k !== 'input' && k !== 'id') return `unknown field 'tool_calls[${i}].${k}'`;
      if (typeof t.name !== 'string' || t.name === '') return `'tool_calls[${i}].name' must be a non-empty string`;
      if (!isObj(t.input)) return `'tool_calls[${i}].input' must be an object`;
      if ('id' in t && t.id !== null && (typeof t.id !== 'string' || t.id === '')) return `'tool_calls[${i}].id' must be a non-empty string or null`;
    }
  }
  if ('json' in sc && sc.json === undefined) return "'json' must be a JSON value";
  if ('interleave_tools' in sc && typeof sc.interleave_tools !== 'boolean') return "'interleave_tools' must be a boolean";
  for (const k of ['retry_after', 'body', 'content_type', 'error_type', 'error_message', 'stop_reason', 'finish_reason', 'thinking', 'thinking_signature', 'redacted_thinking']) {
    if (k in sc && typeof sc[k] !== 'string') return `'${k}' must be a string`;
  }
  return null;
}

const DIRECTIVE_OPEN = '[[fake:';

// Finds a [[fake:{json}]] directive. The JSON may itself contain "]]", so try each
// closing "]]" in turn until the text between parses.
function findDirective(text) {
  const start = text.indexOf(DIRECTIVE_OPEN);
  if (start < 0) return null;
  let close = text.indexOf(']]', start + DIRECTIVE_OPEN.length);
  while (close >= 0) {
    const json = text.slice(start + DIRECTIVE_OPEN.length, close);
    try {
      const scenario = JSON.parse(json);
      return { scenario, stripped: (text.slice(0, start) + text.slice(close + 2)).trim(), error: null };
    } catch {
      close = text.indexOf(']]', close + 1);
    }
  }
  return { scenario: null, stripped: text, error: '[[fake:...]] directive is not valid JSON' };
}

// ---------------------------------------------------------------------------
// Control state: script, request log, counters

const state = {
  script: { default: null, queue: [] },
  log: new Array(OPTS.logMax),
  logStart: 0,
  logLen: 0,
  total: 0,
  clientClosed: 0,
  active: 0,
};

function logPush(entry) {
  const max = state.log.length;
  if (state.logLen < max) {
    state.log[(state.logStart + state.logLen) % max] = entry;
    state.logLen++;
  } else {
    state.log[state.logStart] = entry;
    state.logStart = (state.logStart + 1) % max;
  }
}

function logList(limit) {
  const n = Math.min(state.logLen, limit);
  const out = new Array(n);
  const max = state.log.length;
  for (let i = 0; i < n; i++) out[i] = state.log[(state.logStart + state.logLen - n + i) % max];
  return out;
}

// Picks the scenario: in-band directive, else head of queue, else default, else normal.
// Returns {scenario, fromQueue}; the caller pops the queue only once it commits to it.
function pickScenario(directive) {
  if (directive && directive.scenario) return { scenario: directive.scenario, fromQueue: false };
  if (state.script.queue.length > 0) return { scenario: state.script.queue[0], fromQueue: true };
  if (state.script.default) return { scenario: state.script.default, fromQueue: false };
  return { scenario: null, fromQueue: false };
}

// ---------------------------------------------------------------------------
// Per-request context: timing, cancellation, outcome

class Ctx {
  constructor(req, res, entry) {
    this.req = req;
    this.res = res;
    this.entry = entry;
    this.closed = false; // the connection is gone (client closed, or we destroyed it)
    this.done = false; // outcome recorded
    this.wakers = new Set();
    this.eol = '\n';
    this.split = false;
    this.splitDelay = 1;
    state.active++;
    res.on('close', () => {
      this.closed = true;
      for (const w of this.wakers) w();
      this.wakers.clear();
      if (!this.done) this.finish('client_closed');
    });
  }

  finish(outcome) {
    if (this.done) return;
    this.done = true;
    state.active--;
    if (outcome === 'client_closed') state.clientClosed++;
    this.entry.outcome = outcome;
    this.entry.finished_at_ms = nowMs();
  }

  // Resolves after ms, or early if the connection closes. Returns true if still open.
  sleep(ms) {
    if (this.closed) return Promise.resolve(false);
    if (!ms) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waker = () => {
        clearTimeout(t);
        resolve(false);
      };
      const t = setTimeout(() => {
        this.wakers.delete(waker);
        resolve(!this.closed);
      }, ms);
      this.wakers.add(waker);
    });
  }

  // Writes one SSE event (already rendered with LF endings).
  async write(text) {
    if (this.closed) return false;
    if (this.eol !== '\n') text = text.replaceAll('\n', this.eol);
    if (!this.split) {
      this.res.write(text);
      return true;
    }
    const buf = Buffer.from(text, 'utf8');
    for (const piece of splitBuffer(buf)) {
      if (this.closed) return false;
      this.res.write(piece);
      if (this.splitDelay > 0) {
        if (!(await this.sleep(this.splitDelay))) return false;
      } else {
        await new Promise((r) => setImmediate(r));
      }
    }
    return !this.closed;
  }

  // Abrupt close: TCP RST where supported. Waits for pending writes to reach the
  // kernel first so "after N deltas" is deterministic for the client.
  // With graceful=true the socket is closed with a FIN instead (a body cut short).
  reset(outcome, graceful = false) {
    this.finish(outcome);
    const stream = this.res.stream;
    if (stream) {
      // HTTP/2: only this stream, never the connection the others share:
      // RST_STREAM INTERNAL_ERROR, or END_STREAM for a body cut short.
      const kill = () => {
        if (stream.destroyed || stream.closed) return;
        if (graceful) stream.end();
        else stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
      };
      setTimeout(kill, this.res.writableLength > 0 ? 20 : 5);
      return;
    }
    const sock = this.res.socket;
    if (!sock) return;
    const kill = () => {
      if (graceful) sock.end();
      else if (typeof sock.resetAndDestroy === 'function') sock.resetAndDestroy();
      else sock.destroy();
    };
    if (sock.writableLength > 0 || this.res.writableLength > 0) setTimeout(kill, 20);
    else setTimeout(kill, 5);
  }

  // Stall: send nothing more; close after stall_ms if the client has not closed first.
  async stall(ms, outcome) {
    if (ms > 0) {
      const open = await this.sleep(ms);
      if (open) {
        this.finish(outcome);
        if (this.res.stream) this.res.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
        else this.res.socket?.destroy();
      }
    } else {
      // Until the client closes (recorded as client_closed) or the server stops.
      await new Promise((resolve) => this.wakers.add(resolve));
    }
  }
}

// Cuts an event into pieces: after every CR (so CR and LF arrive apart), after the
// first byte of every multi-byte UTF-8 character, inside the field name and in the middle.
function splitBuffer(buf) {
  const cuts = new Set([Math.min(3, buf.length), buf.length >> 1]);
  for (let i = 0; i < buf.length; i++) {
    const b = buf[i];
    if (b === 0x0d || b >= 0xc0) cuts.add(i + 1);
  }
  const sorted = [...cuts].filter((c) => c > 0 && c < buf.length).sort((a, b) => a - b);
  const pieces = [];
  let prev = 0;
  for (const c of sorted) {
    pieces.push(buf.subarray(prev, c));
    prev = c;
  }
  pieces.push(buf.subarray(prev));
  return pieces;
}

// ---------------------------------------------------------------------------
// Reply planning shared by both APIs

// Splits the reply into deltas: each word with the whitespace after it; leading
// whitespace stays with the first word. Concatenating the deltas gives the reply.
function toDeltas(reply) {
  if (reply === '') return [];
  const words = reply.match(/\S+\s*/g);
  if (!words) return [reply];
  const lead = reply.length - reply.trimStart().length;
  if (lead > 0) words[0] = reply.slice(0, lead) + words[0];
  return words;
}

function replyText(sc, echoed) {
  if (sc && typeof sc.reply === 'string') return sc.reply;
  if (sc && typeof sc.reply_words === 'number') {
    const n = Math.floor(sc.reply_words);
    const w = new Array(n);
    for (let i = 0; i < n; i++) w[i] = `w${i + 1}`;
    return w.join(' ');
  }
  return 'Hello! You said: ' + echoed;
}

// ---------------------------------------------------------------------------
// Rich replies: tool calls, thinking, structured output (README "Rich replies")

// A minimal valid instance of a JSON schema: object -> its required properties; string
// "x" (enum[0] / const first); number and integer 1; boolean true; array []; null null;
// anyOf/oneOf/allOf and type lists -> the first; local $ref followed.
function schemaInstance(schema, root, depth = 0) {
  if (!isObj(schema) || depth > 64) return null;
  if (typeof schema.$ref === 'string') {
    const m = schema.$ref.match(/^#\/(\$defs|definitions)\/(.+)$/);
    const target = m && isObj(root) && isObj(root[m[1]]) ? root[m[1]][m[2]] : undefined;
    return schemaInstance(target, root, depth + 1);
  }
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length > 0) return schema.enum[0];
  for (const k of ['anyOf', 'oneOf', 'allOf']) {
    if (Array.isArray(schema[k]) && schema[k].length > 0 && schema.type === undefined) return schemaInstance(schema[k][0], root, depth + 1);
  }
  let type = schema.type;
  if (Array.isArray(type)) type = type[0];
  if (type === undefined && isObj(schema.properties)) type = 'object';
  switch (type) {
    case 'object': {
      const o = {};
      const props = isObj(schema.properties) ? schema.properties : {};
      if (Array.isArray(schema.required)) {
        for (const name of schema.required) if (typeof name === 'string') o[name] = schemaInstance(props[name], root, depth + 1);
      }
      return o;
    }
    case 'string': return 'x';
    case 'number': case 'integer': return 1;
    case 'boolean': return true;
    case 'array': return [];
    default: return null;
  }
}

// The tool a request forces ({name, schema}), or null. api: 'anthropic' | 'openai'.
function forcedTool(api, body) {
  const tc = body.tool_choice;
  const tools = Array.isArray(body.tools) ? body.tools : [];
  if (api === 'anthropic') {
    if (!isObj(tc) || (tc.type !== 'any' && tc.type !== 'tool')) return null;
    const t = tc.type === 'tool' ? tools.find((x) => isObj(x) && x.name === tc.name) : tools.find((x) => isObj(x) && typeof x.name === 'string');
    return t ? { name: t.name, schema: t.input_schema } : null;
  }
  let t;
  if (tc === 'required') t = tools.find((x) => isObj(x) && isObj(x.function));
  else if (isObj(tc) && isObj(tc.function)) t = tools.find((x) => isObj(x) && isObj(x.function) && x.function.name === tc.function.name);
  else return null;
  return t ? { name: t.function.name, schema: t.function.parameters ?? { type: 'object' } } : null;
}

// The structured-output instance the request asks for, or undefined.
function structuredOutput(api, body) {
  if (api === 'anthropic') {
    const f = isObj(body.output_config) ? body.output_config.format : undefined;
    return isObj(f) && f.type === 'json_schema' ? schemaInstance(f.schema, f.schema) : undefined;
  }
  const rf = body.response_format;
  if (!isObj(rf)) return undefined;
  if (rf.type === 'json_object') return {};
  if (rf.type === 'json_schema') {
    const sch = isObj(rf.json_schema) ? rf.json_schema.schema : undefined;
    return isObj(sch) ? schemaInstance(sch, sch) : {};
  }
  return undefined;
}

// Contents of the tool results of the last user turn, or null if it holds none.
function toolResultTexts(api, messages) {
  const out = [];
  if (api === 'anthropic') {
    const m = messages[messages.length - 1];
    if (!isObj(m) || m.role !== 'user' || !Array.isArray(m.content)) return null;
    for (const b of m.content) if (isObj(b) && b.type === 'tool_result') out.push(contentText(b.content ?? ''));
  } else {
    let i = messages.length - 1;
    while (i >= 0 && isObj(messages[i]) && messages[i].role === 'tool') i--;
    for (let j = i + 1; j < messages.length; j++) out.push(contentText(messages[j].content));
  }
  return out.length > 0 ? out : null;
}

// Earliest stop sequence in text: {index, seq} or null.
function findStop(text, seqs) {
  let best = null;
  for (const q of seqs) {
    if (typeof q !== 'string' || q === '') continue;
    const at = text.indexOf(q);
    if (at >= 0 && (best === null || at < best.index)) best = { index: at, seq: q };
  }
  return best;
}

// Splits s into up to n pieces of about equal length (never inside a surrogate pair).
function splitPieces(s, n) {
  const cps = Array.from(s);
  if (cps.length === 0) return [];
  const k = Math.min(n, cps.length);
  const out = [];
  for (let i = 0; i < k; i++) out.push(cps.slice(Math.floor((i * cps.length) / k), Math.floor(((i + 1) * cps.length) / k)).join(''));
  return out;
}

const REPLY_FIELDS = ['reply', 'reply_words', 'json', 'tool_calls'];

// Decides the reply content for both APIs: {thinking (string|null), signature, hiddenReasoning
// (word count, OpenAI reasoning_effort), text, calls [{id, name, input, json}], stopSeq}.
function planContent(api, body, sc, echoed) {
  const shaping = REPLY_FIELDS.some((k) => sc[k] !== undefined);
  const forced = body.tool_choice !== undefined ? forcedTool(api, body) : null;
  let text = '';
  let calls = [];
  const explicitText = () => (sc.json !== undefined ? JSON.stringify(sc.json) : replyText(sc, echoed));
  if (sc.tool_calls) {
    if (sc.json !== undefined || sc.reply !== undefined || sc.reply_words !== undefined) text = explicitText();
    // id null: OpenAI omits the id (as some local servers do); Anthropic generates one.
    calls = sc.tool_calls.map((t) => ({ id: t.id === null && api === 'openai' ? null : t.id, name: t.name, input: t.input }));
  } else if (sc.json !== undefined && forced) {
    calls = [{ name: forced.name, input: sc.json }];
  } else if (shaping) {
    text = explicitText();
  } else if (forced) {
    calls = [{ name: forced.name, input: schemaInstance(forced.schema, forced.schema) ?? {} }];
  } else {
    const so = api === 'anthropic' ? (body.output_config !== undefined ? structuredOutput(api, body) : undefined)
      : body.response_format !== undefined ? structuredOutput(api, body) : undefined;
    if (so !== undefined) text = JSON.stringify(so);
    else {
      const tr = toolResultTexts(api, body.messages);
      text = tr !== null ? 'Tool results: ' + tr.join('; ') : 'Hello! You said: ' + echoed;
    }
  }
  const oneCall = api === 'anthropic' ? isObj(body.tool_choice) && body.tool_choice.disable_parallel_tool_use === true : body.parallel_tool_calls === false;
  if (oneCall && calls.length > 1) calls = calls.slice(0, 1);
  for (const c of calls) {
    if (c.id === undefined || (c.id === null && api === 'anthropic')) c.id = randomId(api === 'anthropic' ? 'toolu_' : 'call_');
    c.json = JSON.stringify(c.input);
  }
  let thinking = null;
  let hiddenReasoning = 0;
  if (typeof sc.thinking === 'string') thinking = sc.thinking;
  else if (api === 'anthropic' && isObj(body.thinking) && (body.thinking.type === 'enabled' || body.thinking.type === 'adaptive')) {
    thinking = body.thinking.display === 'omitted' ? '' : ('Thinking about: ' + echoed).trimEnd();
  } else if (api === 'openai' && typeof body.reasoning_effort === 'string' && body.reasoning_effort !== 'none') {
    hiddenReasoning = toDeltas(('Thinking about: ' + echoed).trimEnd()).length;
  }
  let stopSeq = null;
  const seqs = api === 'anthropic' ? body.stop_sequences : typeof body.stop === 'string' ? [body.stop] : body.stop;
  if (Array.isArray(seqs) && seqs.length > 0) {
    const hit = findStop(text, seqs);
    if (hit) {
      text = text.slice(0, hit.index);
      calls = [];
      stopSeq = hit.seq;
    }
  }
  const signature = thinking === null ? null : sc.thinking_signature ?? 'sig_' + Buffer.from(thinking, 'utf8').toString('base64');
  const redacted = api === 'anthropic' && typeof sc.redacted_thinking === 'string' ? sc.redacted_thinking : null;
  return { thinking, signature, redacted, hiddenReasoning, text, calls, stopSeq };
}

// Output tokens of the non-text parts: thinking words + ceil(JSON length / 4) per call.
function extraOutputTokens(pc) {
  let n = pc.hiddenReasoning;
  if (pc.thinking) n += toDeltas(pc.thinking).length;
  for (const c of pc.calls) n += Math.ceil(codePoints(c.json) / 4);
  return n;
}

// ---------------------------------------------------------------------------
// Image checks (Anthropic base64 sources, OpenAI data URLs)

const IMAGE_TYPES = new Set(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);
const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;

// Returns 'base64' (not valid base64), 'mismatch' (magic bytes differ) or null.
function checkImageData(mediaType, data) {
  if (typeof data !== 'string' || data.length === 0 || data.length % 4 !== 0 || !B64_RE.test(data)) return 'base64';
  const b = Buffer.from(data.slice(0, 24), 'base64');
  const at = (i, v) => b.length > i && b[i] === v;
  let ok;
  switch (mediaType) {
    case 'image/png': ok = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a].every((v, i) => at(i, v)); break;
    case 'image/jpeg': ok = at(0, 0xff) && at(1, 0xd8) && at(2, 0xff); break;
    case 'image/gif': ok = b.toString('latin1', 0, 6) === 'GIF87a' || b.toString('latin1', 0, 6) === 'GIF89a'; break;
    case 'image/webp': ok = b.toString('latin1', 0, 4) === 'RIFF' && b.toString('latin1', 8, 12) === 'WEBP'; break;
    default: ok = false;
  }
  return ok ? null : 'mismatch';
}

// ---------------------------------------------------------------------------
// HTTP plumbing

function readBody(req, limit) {
  return new Promise((resolve) => {
    const chunks = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) tooBig = true;
      else chunks.push(c);
    });
    req.on('end', () => resolve(tooBig ? null : Buffer.concat(chunks).toString('utf8')));
    req.on('error', () => resolve(null));
    req.on('close', () => resolve(null)); // no-op if 'end' came first
  });
}

function sendJson(res, status, headers, obj, pad) {
  let body = JSON.stringify(obj);
  if (pad) body = padJson(body);
  headers['content-type'] = 'application/json';
  headers['content-length'] = Buffer.byteLength(body);
  res.writeHead(status, headers);
  res.end(body);
}

function extraHeaders(sc, headers) {
  if (sc && sc.headers) for (const [k, v] of Object.entries(sc.headers)) headers[k.toLowerCase()] = String(v);
  return headers;
}

const MAX_BODY = 32 * 1024 * 1024; // the real API's limit for Messages

// ---------------------------------------------------------------------------
// Anthropic Messages API

const ANTHROPIC_ERROR_TYPES = {
  400: 'invalid_request_error', 401: 'authentication_error', 402: 'billing_error', 403: 'permission_error',
  404: 'not_found_error', 409: 'conflict_error', 413: 'request_too_large', 429: 'rate_limit_error',
  500: 'api_error', 504: 'timeout_error', 529: 'overloaded_error',
};
const ANTHROPIC_ERROR_MESSAGES = {
  invalid_request_error: 'Invalid request', authentication_error: 'invalid x-api-key',
  billing_error: 'Your credit balance is too low to access the Anthropic API.',
  permission_error: 'Your API key does not have permission to use the specified resource.',
  not_found_error: 'Not found', conflict_error: 'Conflict',
  request_too_large: 'Request exceeds the maximum allowed number of bytes.',
  rate_limit_error: 'Number of requests has exceeded your rate limit. Please try again later.',
  api_error: 'Internal server error', timeout_error: 'Request timeout', overloaded_error: 'Overloaded',
};

function anthropicErrorType(status) {
  return ANTHROPIC_ERROR_TYPES[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
}

// Default x-should-retry: what the SDKs would decide anyway (408, 409, 429, >= 500).
function defaultShouldRetry(status) {
  return status === 408 || status === 409 || status === 429 || status >= 500;
}

function anthropicError(ctx, status, type, message, sc) {
  const rid = ctx.entry.id;
  const headers = extraHeaders(sc, {
    'request-id': rid,
    'x-should-retry': String(sc && typeof sc.should_retry === 'boolean' ? sc.should_retry : defaultShouldRetry(status)),
  });
  if (sc && sc.retry_after !== undefined) headers['retry-after'] = sc.retry_after;
  if (sc && sc.retry_after_ms !== undefined) headers['retry-after-ms'] = String(sc.retry_after_ms);
  ctx.finish('error_status');
  sendJson(ctx.res, status, headers, { type: 'error', error: { type, message }, request_id: rid }, false);
}

// Raw (non-JSON) error body, as a proxy in front of the API would send it: no request-id.
function rawError(ctx, sc) {
  const headers = extraHeaders(sc, { 'content-type': sc.content_type ?? 'text/html; charset=utf-8' });
  if (sc.retry_after !== undefined) headers['retry-after'] = sc.retry_after;
  if (sc.retry_after_ms !== undefined) headers['retry-after-ms'] = String(sc.retry_after_ms);
  if (typeof sc.should_retry === 'boolean') headers['x-should-retry'] = String(sc.should_retry);
  headers['content-length'] = Buffer.byteLength(sc.body);
  ctx.finish('error_status');
  ctx.res.writeHead(sc.status ?? 502, headers);
  ctx.res.end(sc.body);
}

// Text of a content value (string or block array): text blocks joined with "\n".
function contentText(content) {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  let s = '';
  let first = true;
  for (const b of content) {
    if (isObj(b) && b.type === 'text' && typeof b.text === 'string') {
      if (!first) s += '\n';
      s += b.text;
      first = false;
    }
  }
  return s;
}

const KNOWN_BLOCK_TYPES = new Set([
  'text', 'image', 'document', 'tool_use', 'tool_result', 'thinking', 'redacted_thinking',
  'server_tool_use', 'web_search_tool_result', 'search_result', 'container_upload',
]);

const TOOL_NAME_RE = /^[a-zA-Z0-9_-]{1,64}$/;

// An Anthropic image block at path p (e.g. "messages.0.content.1"). Returns a message or null.
function checkAnthropicImage(b, p) {
  const src = b.source;
  if (!isObj(src)) return `${p}.source: Field required`;
  if (src.type === 'base64') {
    if (!IMAGE_TYPES.has(src.media_type)) return `${p}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'`;
    if (typeof src.data !== 'string') return `${p}.source.base64.data: Field required`;
    const bad = checkImageData(src.media_type, src.data);
    if (bad === 'base64') return `${p}.source.base64.data: Invalid base64 data`;
    if (bad === 'mismatch') return `${p}.source.base64.data: Image does not match the provided media type ${src.media_type}`;
    return null;
  }
  if (src.type === 'url') {
    if (typeof src.url !== 'string') return `${p}.source.url.url: Field required`;
    if (!/^https:\/\/[^/\s]+/i.test(src.url)) return `${p}.source.url: Only HTTPS URLs are supported`;
    return null;
  }
  if (src.type === 'file') return typeof src.file_id === 'string' ? null : `${p}.source.file.file_id: Field required`;
  return `${p}.source: Input tag '${src.type}' found using 'type' does not match any of the expected tags: 'base64', 'url', 'file'`;
}

// The blocks inside a tool_result's content (text, image, ...). Returns a message or null.
function checkToolResultContent(c, p) {
  if (c === undefined || typeof c === 'string') return null;
  if (!Array.isArray(c)) return `${p}.content: Input should be a valid string or a list of content blocks`;
  for (let k = 0; k < c.length; k++) {
    const b = c[k];
    const q = `${p}.content.${k}`;
    if (!isObj(b) || typeof b.type !== 'string') return `${q}: Input should be a valid dictionary`;
    if (b.type === 'text') {
      if (typeof b.text !== 'string') return `${q}.text: Field required`;
      if (b.text.length === 0) return `${q}.text: text content blocks must be non-empty`;
    } else if (b.type === 'image') {
      const bad = checkAnthropicImage(b, q);
      if (bad) return bad;
    } else if (!['document', 'search_result', 'tool_reference'].includes(b.type)) {
      return `${q}: Input tag '${b.type}' found using 'type' does not match any of the expected tags: 'text', 'image', 'search_result', 'document', 'tool_reference'`;
    }
  }
  return null;
}

// tools, tool_choice, thinking, output_config, stop_sequences. Returns a message or null.
function checkAnthropicOptions(body) {
  const names = new Set();
  if ('tools' in body) {
    if (!Array.isArray(body.tools)) return 'tools: Input should be a valid list';
    for (let i = 0; i < body.tools.length; i++) {
      const t = body.tools[i];
      if (!isObj(t)) return `tools.${i}: Input should be a valid dictionary`;
      if (t.type !== undefined && t.type !== null && t.type !== 'custom') {
        if (typeof t.name === 'string') names.add(t.name); // a server tool (web_search_..., bash_...)
        continue;
      }
      if (!('name' in t)) return `tools.${i}.name: Field required`;
      if (typeof t.name !== 'string' || !TOOL_NAME_RE.test(t.name)) return `tools.${i}.name: String should match pattern '^[a-zA-Z0-9_-]{1,64}$'`;
      if (!('input_schema' in t)) return `tools.${i}.input_schema: Field required`;
      if (!isObj(t.input_schema) || t.input_schema.type !== 'object') return `tools.${i}.input_schema.type: Input should be 'object'`;
      if (names.has(t.name)) return 'tools: Tool names must be unique.';
      names.add(t.name);
    }
  }
  let forcing = false;
  if ('tool_choice' in body) {
    const tc = body.tool_choice;
    if (!isObj(tc)) return 'tool_choice: Input should be a valid dictionary';
    if (!['auto', 'any', 'tool', 'none'].includes(tc.type)) {
      return `tool_choice: Input tag '${tc.type}' found using 'type' does not match any of the expected tags: 'auto', 'any', 'tool', 'none'`;
    }
    if (tc.type === 'tool' && typeof tc.name !== 'string') return 'tool_choice.tool.name: Field required';
    forcing = tc.type === 'any' || tc.type === 'tool';
    if (forcing && names.size === 0) return 'tool_choice may only be specified while providing tools.';
    if (tc.type === 'tool' && !names.has(tc.name)) return `tool_choice.name: Tool '${tc.name}' not found in tools`;
  }
  if ('thinking' in body) {
    const th = body.thinking;
    if (!isObj(th)) return 'thinking: Input should be a valid dictionary';
    if (!['enabled', 'disabled', 'adaptive'].includes(th.type)) {
      return `thinking: Input tag '${th.type}' found using 'type' does not match any of the expected tags: 'enabled', 'disabled', 'adaptive'`;
    }
    if (th.type === 'enabled') {
      if (!('budget_tokens' in th)) return 'thinking.enabled.budget_tokens: Field required';
      if (!Number.isInteger(th.budget_tokens)) return 'thinking.enabled.budget_tokens: Input should be a valid integer';
      if (th.budget_tokens < 1024) return 'thinking.enabled.budget_tokens: Input should be greater than or equal to 1024';
      if (th.budget_tokens >= body.max_tokens) {
        return '`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size';
      }
    }
    if (th.type !== 'disabled') {
      if ('temperature' in body && body.temperature !== 1) {
        return '`temperature` may only be set to 1 when thinking is enabled. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking#feature-compatibility';
      }
      if (forcing) return 'Thinking may not be enabled when tool_choice forces tool use.';
    }
  }
  if ('output_config' in body) {
    const oc = body.output_config;
    if (!isObj(oc)) return 'output_config: Input should be a valid dictionary';
    const f = oc.format;
    if (f !== undefined && f !== null) {
      if (!isObj(f) || f.type !== 'json_schema') return "output_config.format.type: Input should be 'json_schema'";
      if (!isObj(f.schema)) return 'output_config.format.schema: Field required';
    }
  }
  if ('stop_sequences' in body) {
    const ss = body.stop_sequences;
    if (!Array.isArray(ss)) return 'stop_sequences: Input should be a valid list';
    for (let i = 0; i < ss.length; i++) {
      if (typeof ss[i] !== 'string') return `stop_sequences.${i}: Input should be a valid string`;
      if (ss[i].trim() === '') return 'stop_sequences: each stop sequence must contain non-whitespace';
    }
  }
  return null;
}

// Ids of the tool_use blocks (kind 'tool_use') or tool_result references (kind 'tool_result') of a message.
function blockIds(m, kind) {
  const ids = [];
  if (!isObj(m) || !Array.isArray(m.content)) return ids;
  for (const b of m.content) if (isObj(b) && b.type === kind) ids.push(kind === 'tool_use' ? b.id : b.tool_use_id);
  return ids;
}

// Every tool_use answered in the next user message; every tool_result answering the previous
// assistant message. Returns a message or null.
// With thinking on, a tool loop's continuation (the last message a user message holding
// tool_result blocks) needs the assistant message it answers to start with a thinking block.
function checkThinkingToolLoop(body) {
  const th = body.thinking;
  if (!isObj(th) || (th.type !== 'enabled' && th.type !== 'adaptive')) return null;
  const msgs = body.messages;
  const last = msgs.length - 1;
  if (last < 1 || msgs[last].role !== 'user' || blockIds(msgs[last], 'tool_result').length === 0) return null;
  const a = msgs[last - 1];
  if (a.role !== 'assistant') return null;
  const first = Array.isArray(a.content) ? a.content[0] : { type: 'text' };
  if (isObj(first) && (first.type === 'thinking' || first.type === 'redacted_thinking')) return null;
  return `messages.${last - 1}.content.0.type: Expected \`thinking\` or \`redacted_thinking\`, but found \`${isObj(first) ? first.type : 'text'}\`. When \`thinking\` is enabled, a final \`assistant\` message must start with a thinking block (preceeding the lastmost set of \`tool_use\` and \`tool_result\` blocks). We recommend you include thinking blocks from previous turns. To avoid this requirement, disable \`thinking\`. Please consult our documentation at https://docs.claude.com/en/docs/build-with-claude/extended-thinking`;
}

function checkToolPairing(msgs) {
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i];
    if (!Array.isArray(m.content)) continue;
    if (m.role === 'user' && m.content.some((b) => b.type === 'tool_result')) {
      const prev = i > 0 && msgs[i - 1].role === 'assistant' ? new Set(blockIds(msgs[i - 1], 'tool_use')) : new Set();
      for (let j = 0; j < m.content.length; j++) {
        const b = m.content[j];
        if (b.type === 'tool_result' && !prev.has(b.tool_use_id)) {
          return `messages.${i}.content.${j}: unexpected \`tool_use_id\` found in \`tool_result\` blocks: ${b.tool_use_id}. Each \`tool_result\` block must have a corresponding \`tool_use\` block in the previous message.`;
        }
      }
    }
    if (m.role === 'assistant' && i < msgs.length - 1) {
      const uses = blockIds(m, 'tool_use');
      if (uses.length === 0) continue;
      const next = msgs[i + 1];
      const answered = new Set(next.role === 'user' ? blockIds(next, 'tool_result') : []);
      const missing = uses.filter((id) => !answered.has(id));
      if (missing.length > 0) {
        return `messages.${i + 1}: \`tool_use\` ids were found without \`tool_result\` blocks immediately after: ${missing.join(', ')}. Each \`tool_use\` block must have a corresponding \`tool_result\` block in the next message.`;
      }
    }
  }
  return null;
}

// Validates the request body like the real API (docs/PROTOCOLS.md A2, A3, A4, A10).
// Returns an error message (400 invalid_request_error) or null.
function validateAnthropic(body, version) {
  if (!isObj(body)) return 'Input should be an object';
  if (!('model' in body)) return 'model: Field required';
  if (typeof body.model !== 'string') return 'model: Input should be a valid string';
  if (!('max_tokens' in body)) return 'max_tokens: Field required';
  if (!Number.isInteger(body.max_tokens)) return 'max_tokens: Input should be a valid integer';
  if (body.max_tokens < 1) return 'max_tokens: Input should be greater than or equal to 1';
  if (!('messages' in body)) return 'messages: Field required';
  if (!Array.isArray(body.messages)) return 'messages: Input should be a valid list';
  if (body.messages.length === 0) return 'messages: at least one message is required';
  if ('stream' in body && typeof body.stream !== 'boolean') return 'stream: Input should be a valid boolean';
  if (version === '2026-10-21') {
    for (const k of ['temperature', 'top_p', 'top_k']) if (k in body) return `${k}: Extra inputs are not permitted`;
  }
  const optErr = checkAnthropicOptions(body);
  if (optErr) return optErr;
  let breakpoints = 0;
  if ('system' in body) {
    const sys = body.system;
    if (Array.isArray(sys)) {
      for (let j = 0; j < sys.length; j++) {
        const b = sys[j];
        if (!isObj(b) || b.type !== 'text' || typeof b.text !== 'string') return `system.${j}: Input should be a valid text block`;
        if (b.text.length === 0) return `system.${j}.text: text content blocks must be non-empty`;
        if (b.cache_control) breakpoints++;
      }
    } else if (typeof sys !== 'string') {
      return 'system: Input should be a valid string or a list of text blocks';
    }
  }
  if (Array.isArray(body.tools)) for (const t of body.tools) if (isObj(t) && t.cache_control) breakpoints++;
  const msgs = body.messages;
  const last = msgs.length - 1;
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i];
    if (!isObj(m)) return `messages.${i}: Input should be a valid dictionary`;
    if (m.role !== 'user' && m.role !== 'assistant') return `messages.${i}.role: Input should be 'user' or 'assistant'`;
    if (!('content' in m)) return `messages.${i}.content: Field required`;
    const c = m.content;
    const finalAssistant = i === last && m.role === 'assistant';
    if (typeof c === 'string') {
      if (c.length === 0 && !finalAssistant) return `messages.${i}: all messages must have non-empty content except for the optional final assistant message`;
    } else if (Array.isArray(c)) {
      if (c.length === 0 && !finalAssistant) return `messages.${i}: all messages must have non-empty content except for the optional final assistant message`;
      for (let j = 0; j < c.length; j++) {
        const b = c[j];
        if (!isObj(b) || typeof b.type !== 'string') return `messages.${i}.content.${j}: Input should be a valid dictionary`;
        if (!KNOWN_BLOCK_TYPES.has(b.type)) return `messages.${i}.content.${j}: Input tag '${b.type}' found using 'type' does not match any of the expected tags`;
        if (b.type === 'text') {
          if (typeof b.text !== 'string') return `messages.${i}.content.${j}.text: Field required`;
          if (b.text.length === 0) return `messages.${i}.content.${j}.text: text content blocks must be non-empty`;
          if (b.text.trim().length === 0) return `messages.${i}.content.${j}.text: text content blocks must contain non-whitespace text`;
          if (version === '2026-10-21' && m.role === 'user' && Array.isArray(b.citations) && b.citations.length > 0) {
            return `messages.${i}.content.${j}.citations: Extra inputs are not permitted`;
          }
        }
        const p = `messages.${i}.content.${j}`;
        if (b.type === 'image') {
          const bad = checkAnthropicImage(b, p);
          if (bad) return bad;
        } else if (b.type === 'tool_use') {
          if (typeof b.id !== 'string') return `${p}.id: Field required`;
          if (typeof b.name !== 'string') return `${p}.name: Field required`;
          if (!isObj(b.input)) return `${p}.input: Input should be a valid dictionary`;
        } else if (b.type === 'tool_result') {
          if (typeof b.tool_use_id !== 'string') return `${p}.tool_use_id: Field required`;
          const bad = checkToolResultContent(b.content, p);
          if (bad) return bad;
        } else if (b.type === 'thinking') {
          if (typeof b.thinking !== 'string') return `${p}.thinking: Field required`;
          if (typeof b.signature !== 'string') return `${p}.signature: Field required`;
        }
        if (version === '2026-10-21' && b.type === 'document' && m.role === 'assistant') {
          return `messages.${i}.content.${j}: document blocks are not allowed in assistant messages`;
        }
        if (b.cache_control) breakpoints++;
      }
    } else {
      return `messages.${i}.content: Input should be a valid string or a list of content blocks`;
    }
    if (OPTS.strictAlternation) {
      if (i === 0 && m.role !== 'user') return 'messages: first message must use the "user" role';
      if (i > 0 && msgs[i - 1].role === m.role) {
        return `messages: roles must alternate between "user" and "assistant", but found multiple "${m.role}" roles in a row`;
      }
    }
  }
  const pairErr = checkToolPairing(msgs) ?? checkThinkingToolLoop(body);
  if (pairErr) return pairErr;
  const lastMsg = msgs[last];
  if (lastMsg.role === 'assistant') {
    const t = typeof lastMsg.content === 'string' ? lastMsg.content
      : Array.isArray(lastMsg.content) && lastMsg.content.length > 0 && lastMsg.content[lastMsg.content.length - 1].type === 'text'
        ? lastMsg.content[lastMsg.content.length - 1].text : '';
    if (t.length > 0 && /\s$/.test(t)) return 'messages: final assistant content cannot end with trailing whitespace';
  }
  if (breakpoints > 4) return `A maximum of 4 blocks with cache_control may be provided. Found ${breakpoints}.`;
  return null;
}

// Adds the cost of a content value to acc {chars, images}: text blocks (joined with "\n"
// as contentText does), tool_use input JSON, tool_result contents, thinking text; images
// (Anthropic image blocks, OpenAI image_url parts) are counted apart.
function contentCost(content, acc) {
  if (typeof content === 'string') {
    acc.chars += codePoints(content);
    return;
  }
  if (!Array.isArray(content)) return;
  let texts = 0;
  for (const b of content) {
    if (!isObj(b)) continue;
    switch (b.type) {
      case 'text':
        if (typeof b.text !== 'string') break;
        if (texts++ > 0) acc.chars += 1;
        acc.chars += codePoints(b.text);
        break;
      case 'image':
      case 'image_url':
        acc.images++;
        break;
      case 'tool_use':
        acc.chars += codePoints(JSON.stringify(b.input ?? {}));
        break;
      case 'tool_result':
        contentCost(b.content ?? '', acc);
        break;
      case 'thinking':
        if (typeof b.thinking === 'string') acc.chars += codePoints(b.thinking);
        break;
      default:
        break;
    }
  }
}

const IMAGE_TOKENS = 1600;

// Default input_tokens: ceil(chars / 4) + 1600 per image, where chars counts the system
// prompt, the content of every message, tool-call arguments and the tool definitions.
function promptTokens(body) {
  const acc = { chars: 0, images: 0 };
  if (body.system !== undefined) acc.chars += codePoints(contentText(body.system));
  for (const m of body.messages) {
    if (!isObj(m)) continue;
    contentCost(m.content, acc);
    if (Array.isArray(m.tool_calls)) {
      for (const t of m.tool_calls) if (isObj(t) && isObj(t.function) && typeof t.function.arguments === 'string') acc.chars += codePoints(t.function.arguments);
    }
  }
  if (body.tools !== undefined) acc.chars += codePoints(JSON.stringify(body.tools));
  return Math.ceil(acc.chars / 4) + IMAGE_TOKENS * acc.images;
}

function lastUserText(messages) {
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (isObj(m) && m.role === 'user') return contentText(m.content);
  }
  return '';
}

function checkAuth(req) {
  let key = req.headers['x-api-key'];
  if (key === undefined) {
    const auth = req.headers['authorization'];
    if (typeof auth === 'string' && auth.startsWith('Bearer ')) key = auth.slice(7);
  }
  if (!key) return 'missing';
  if (OPTS.apiKey !== null && key !== OPTS.apiKey) return 'invalid';
  return null;
}

// Parses the directive from the last user message, validates it and resolves the scenario.
// Returns {sc, echoed, err} where err is a message for a 400.
function resolveScenario(messages) {
  // OpenAI: a conversation ending with role "tool" messages is a tool-loop continuation;
  // its last user turn is those results, so an earlier user message's directive is not
  // applied again (as with Anthropic, whose tool results form the last user message).
  const last = messages[messages.length - 1];
  const text = isObj(last) && last.role === 'tool' ? '' : lastUserText(messages);
  const directive = findDirective(text);
  if (directive && directive.error) return { err: `fake: ${directive.error}` };
  const picked = pickScenario(directive);
  if (picked.scenario !== null) {
    const bad = checkScenario(picked.scenario);
    if (bad) return { err: `fake: ${bad}` };
  }
  return { sc: picked.scenario, fromQueue: picked.fromQueue, echoed: directive ? directive.stripped : text };
}

function commitScenario(ctx, r) {
  if (r.fromQueue) state.script.queue.shift();
  ctx.entry.scenario = r.sc;
}

async function handleAnthropic(ctx, rawBody) {
  const { req } = ctx;
  const authErr = checkAuth(req);
  if (authErr) {
    return anthropicError(ctx, 401, 'authentication_error', authErr === 'missing' ? 'x-api-key header is required' : 'invalid x-api-key', null);
  }
  const version = req.headers['anthropic-version'];
  if (!version) return anthropicError(ctx, 400, 'invalid_request_error', 'anthropic-version: header is required', null);
  if (rawBody === null) return anthropicError(ctx, 413, 'request_too_large', ANTHROPIC_ERROR_MESSAGES.request_too_large, null);
  let body;
  try {
    body = JSON.parse(rawBody);
  } catch {
    return anthropicError(ctx, 400, 'invalid_request_error', 'There was an error parsing the body as JSON', null);
  }
  ctx.entry.body = body;
  const invalid = validateAnthropic(body, version);
  if (invalid) return anthropicError(ctx, 400, 'invalid_request_error', invalid, null);

  const r = resolveScenario(body.messages);
  if (r.err) return anthropicError(ctx, 400, 'invalid_request_error', r.err, null);
  commitScenario(ctx, r);
  const sc = r.sc ?? {};

  if (sc.header_delay_ms && !(await ctx.sleep(sc.header_delay_ms))) return;

  if (sc.body !== undefined) return rawError(ctx, sc);
  if (sc.status !== undefined && sc.status >= 400) {
    const type = sc.error_type ?? anthropicErrorType(sc.status);
    return anthropicError(ctx, sc.status, type, sc.error_message ?? ANTHROPIC_ERROR_MESSAGES[type] ?? 'Error', sc);
  }

  const pc = planContent('anthropic', body, sc, r.echoed);
  const deltas = toDeltas(pc.text);
  const thinkingDeltas = pc.thinking === null ? null : toDeltas(pc.thinking);
  const shape2026 = sc.shape === '2026';
  const usage = {
    input_tokens: promptTokens(body),
    cache_creation_input_tokens: 0,
    cache_read_input_tokens: 0,
    output_tokens: deltas.length + extraOutputTokens(pc),
  };
  if (shape2026) usage.cache_creation = { ephemeral_5m_input_tokens: 0, ephemeral_1h_input_tokens: 0 };
  usage.service_tier = 'standard';
  if (shape2026) usage.inference_geo = 'global';
  if (thinkingDeltas) usage.output_tokens_details = { thinking_tokens: thinkingDeltas.length };
  if (sc.usage) Object.assign(usage, sc.usage);

  const plan = {
    id: randomId('msg_'),
    model: body.model,
    reply: pc.text,
    deltas,
    pc,
    thinkingDeltas,
    usage,
    stopReason: sc.stop_reason ?? (pc.stopSeq !== null ? 'stop_sequence' : pc.calls.length > 0 ? 'tool_use' : 'end_turn'),
    stopSequence: pc.stopSeq,
    shape2026,
    pad: sc.pad_json === true,
  };
  if (body.stream === true) return anthropicStream(ctx, sc, plan);
  return anthropicJson(ctx, sc, plan);
}

function anthropicToolUse(plan, c, input) {
  const b = { type: 'tool_use', id: c.id, name: c.name, input };
  if (plan.shape2026) b.caller = { type: 'direct' };
  return b;
}

// The content blocks of the whole reply: thinking, text, tool_use.
function anthropicContent(plan) {
  const pc = plan.pc;
  if (pc.thinking === null && pc.redacted === null && pc.calls.length === 0) return plan.reply === '' ? [] : [{ type: 'text', text: plan.reply }];
  const content = [];
  if (pc.thinking !== null) content.push({ type: 'thinking', thinking: pc.thinking, signature: pc.signature });
  if (pc.redacted !== null) content.push({ type: 'redacted_thinking', data: pc.redacted });
  if (plan.reply !== '') content.push({ type: 'text', text: plan.reply });
  for (const c of pc.calls) content.push(anthropicToolUse(plan, c, c.input));
  return content;
}

// Stream blocks: [{start: content_block, deltas: [delta objects]}], in reply order.
function anthropicStreamBlocks(plan) {
  const pc = plan.pc;
  const blocks = [];
  if (pc.thinking !== null) {
    const deltas = plan.thinkingDeltas.map((t) => ({ type: 'thinking_delta', thinking: t }));
    deltas.push({ type: 'signature_delta', signature: pc.signature });
    blocks.push({ start: { type: 'thinking', thinking: '', signature: '' }, deltas });
  }
  if (pc.redacted !== null) blocks.push({ start: { type: 'redacted_thinking', data: pc.redacted }, deltas: [] });
  if (plan.deltas.length > 0) blocks.push({ start: { type: 'text', text: '' }, deltas: plan.deltas.map((t) => ({ type: 'text_delta', text: t })) });
  for (const c of pc.calls) {
    const deltas = [{ type: 'input_json_delta', partial_json: '' }];
    for (const piece of splitPieces(c.json, 3)) deltas.push({ type: 'input_json_delta', partial_json: piece });
    blocks.push({ start: anthropicToolUse(plan, c, {}), deltas });
  }
  return blocks;
}

// Number of stream deltas of the reply (for the non-streaming delay).
function deltaCount(plan) {
  const pc = plan.pc;
  let n = plan.deltas.length;
  if (pc.thinking !== null) n += toDeltas(pc.thinking).length + (plan.openai ? 0 : 1);
  for (const c of pc.calls) n += (plan.openai ? 0 : 1) + splitPieces(c.json, 3).length;
  return n;
}

async function anthropicJson(ctx, sc, plan) {
  const delay = (sc.ttft_ms ?? 0) + (sc.gap_ms ?? 0) * Math.max(0, deltaCount(plan) - 1);
  if (delay && !(await ctx.sleep(delay))) return;
  const { res } = ctx;
  const fault = sc.fault;
  if (fault === 'reset') return ctx.reset('fault:reset');
  if (fault === 'stall') return ctx.stall(sc.stall_ms ?? 0, 'fault:stall');
  const headers = extraHeaders(sc, { 'request-id': ctx.entry.id, 'anthropic-organization-id': 'fake-org' });
  const msg = {
    id: plan.id,
    type: 'message',
    role: 'assistant',
    model: plan.model,
    content: anthropicContent(plan),
    stop_reason: plan.stopReason,
    stop_sequence: plan.stopSequence,
  };
  if (plan.shape2026) msg.stop_details = null;
  msg.usage = plan.usage;
  if (fault === 'malformed') {
    const body = JSON.stringify(msg).slice(0, -7) + ',"oops":';
    headers['content-type'] = 'application/json';
    headers['content-length'] = Buffer.byteLength(body);
    ctx.finish('fault:malformed');
    res.writeHead(200, headers);
    return res.end(body);
  }
  if (fault === 'truncate') {
    const body = JSON.stringify(msg);
    const sent = body.slice(0, body.length >> 1);
    headers['content-type'] = 'application/json';
    headers['content-length'] = Buffer.byteLength(body);
    res.writeHead(200, headers);
    res.write(sent);
    return ctx.reset('fault:truncate', true);
  }
  ctx.finish(fault ? `fault:${fault}` : 'completed');
  sendJson(res, 200, headers, msg, plan.pad);
}

function sseEvent(type, data, ctx, pad) {
  let json = JSON.stringify(data);
  if (pad) json = padJson(json);
  return ctx.dataOnly ? `data: ${json}\n\n` : `event: ${type}\ndata: ${json}\n\n`;
}
const PING_DATA = '{"type": "ping"}';

async function anthropicStream(ctx, sc, plan) {
  const { res } = ctx;
  const fault = sc.fault;
  const after = sc.after ?? 0;
  ctx.eol = sc.line_ending === 'crlf' ? '\r\n' : sc.line_ending === 'cr' ? '\r' : '\n';
  ctx.split = sc.split === true;
  ctx.splitDelay = sc.split_delay_ms ?? 1;
  ctx.dataOnly = fault === 'data_only';
  const pad = plan.pad;
  const pingEvery = sc.ping === true ? 1 : typeof sc.ping === 'number' ? sc.ping : 0;
  const ping = () => ctx.write(ctx.dataOnly ? `data: ${PING_DATA}\n\n` : `event: ping\ndata: ${PING_DATA}\n\n`);

  res.socket?.setNoDelay(true);
  res.writeHead(200, extraHeaders(sc, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    'request-id': ctx.entry.id,
    'anthropic-organization-id': 'fake-org',
  }));
  res.flushHeaders();

  const u = plan.usage;
  const startUsage = { ...u, output_tokens: Math.min(1, u.output_tokens) };
  const startMsg = {
    id: plan.id, type: 'message', role: 'assistant', content: [], model: plan.model,
    stop_reason: null, stop_sequence: null,
  };
  if (plan.shape2026) startMsg.stop_details = null;
  startMsg.usage = startUsage;
  if (!(await ctx.write(sseEvent('message_start', { type: 'message_start', message: startMsg }, ctx, pad)))) return;

  const n = plan.deltas.length;
  let faultFired = false;
  // Runs the fault at its position. Returns true if the response is over.
  const fire = async () => {
    faultFired = true;
    switch (fault) {
      case 'midstream_error': {
        const type = sc.error_type ?? 'overloaded_error';
        const message = sc.error_message ?? ANTHROPIC_ERROR_MESSAGES[type] ?? 'Error';
        // Spacing as in the documented example: {"type": "error", "error": {"type": ..., "message": ...}}
        const data = `{"type": "error", "error": {"type": ${JSON.stringify(type)}, "message": ${JSON.stringify(message)}}}`;
        await ctx.write(ctx.dataOnly ? `data: ${data}\n\n` : `event: error\ndata: ${data}\n\n`);
        ctx.finish('fault:midstream_error');
        res.end();
        return true;
      }
      case 'reset':
        ctx.reset('fault:reset');
        return true;
      case 'stall':
        await ctx.stall(sc.stall_ms ?? 0, 'fault:stall');
        return true;
      case 'truncate':
        ctx.finish('fault:truncate');
        res.end();
        return true;
      case 'malformed':
        await ctx.write(`${ctx.dataOnly ? '' : 'event: content_block_delta\n'}data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"oops\n\n`);
        return ctx.closed;
      default:
        return false;
    }
  };
  const positional = fault && fault !== 'data_only';

  if (plan.pc.thinking === null && plan.pc.redacted === null && plan.pc.calls.length === 0) {
    // The plain text reply (the benchmark path): one text block.
    if (n > 0) {
      if (!(await ctx.write(sseEvent('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }, ctx, pad)))) return;
      if (pingEvery && !(await ping())) return;
    }
    if (sc.ttft_ms && !(await ctx.sleep(sc.ttft_ms))) return;
    for (let i = 0; i < n; i++) {
      if (positional && !faultFired && i === after && (await fire())) return;
      if (i > 0 && sc.gap_ms && !(await ctx.sleep(sc.gap_ms))) return;
      const ev = sseEvent('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: plan.deltas[i] } }, ctx, pad);
      if (!(await ctx.write(ev))) return;
      if (pingEvery && (i + 1) % pingEvery === 0 && !(await ping())) return;
    }
    if (n > 0 && !(await ctx.write(sseEvent('content_block_stop', { type: 'content_block_stop', index: 0 }, ctx, pad)))) return;
  } else {
    // Thinking, text and tool_use blocks; `after`, gap_ms and pings count every delta.
    const blocks = anthropicStreamBlocks(plan);
    let k = 0;
    for (let b = 0; b < blocks.length; b++) {
      if (!(await ctx.write(sseEvent('content_block_start', { type: 'content_block_start', index: b, content_block: blocks[b].start }, ctx, pad)))) return;
      if (pingEvery && !(await ping())) return;
      if (b === 0 && sc.ttft_ms && !(await ctx.sleep(sc.ttft_ms))) return;
      for (const d of blocks[b].deltas) {
        if (positional && !faultFired && k === after && (await fire())) return;
        if (k > 0 && sc.gap_ms && !(await ctx.sleep(sc.gap_ms))) return;
        if (!(await ctx.write(sseEvent('content_block_delta', { type: 'content_block_delta', index: b, delta: d }, ctx, pad)))) return;
        k++;
        if (pingEvery && k % pingEvery === 0 && !(await ping())) return;
      }
      if (!(await ctx.write(sseEvent('content_block_stop', { type: 'content_block_stop', index: b }, ctx, pad)))) return;
    }
  }
  if (positional && !faultFired && (await fire())) return;
  if (ctx.closed) return;

  const deltaUsage = plan.shape2026
    ? { input_tokens: u.input_tokens, cache_creation_input_tokens: u.cache_creation_input_tokens, cache_read_input_tokens: u.cache_read_input_tokens, output_tokens: u.output_tokens }
    : { output_tokens: u.output_tokens };
  if (u.output_tokens_details) deltaUsage.output_tokens_details = u.output_tokens_details;
  if (sc.usage) for (const k of Object.keys(sc.usage)) deltaUsage[k] = u[k];
  const delta = { stop_reason: plan.stopReason, stop_sequence: plan.stopSequence };
  if (plan.shape2026) delta.stop_details = null;
  if (!(await ctx.write(sseEvent('message_delta', { type: 'message_delta', delta, usage: deltaUsage }, ctx, pad)))) return;
  if (!(await ctx.write(sseEvent('message_stop', { type: 'message_stop' }, ctx, pad)))) return;
  ctx.finish(fault ? `fault:${fault}` : 'completed');
  res.end();
}

// POST /v1/messages/count_tokens (A9)
function handleCountTokens(ctx, rawBody) {
  const authErr = checkAuth(ctx.req);
  if (authErr) return anthropicError(ctx, 401, 'authentication_error', authErr === 'missing' ? 'x-api-key header is required' : 'invalid x-api-key', null);
  if (!ctx.req.headers['anthropic-version']) return anthropicError(ctx, 400, 'invalid_request_error', 'anthropic-version: header is required', null);
  let body;
  try {
    body = JSON.parse(rawBody ?? '');
  } catch {
    return anthropicError(ctx, 400, 'invalid_request_error', 'There was an error parsing the body as JSON', null);
  }
  ctx.entry.body = body;
  if (!isObj(body) || typeof body.model !== 'string') return anthropicError(ctx, 400, 'invalid_request_error', 'model: Field required', null);
  if (!Array.isArray(body.messages) || body.messages.length === 0) return anthropicError(ctx, 400, 'invalid_request_error', 'messages: at least one message is required', null);
  ctx.finish('completed');
  sendJson(ctx.res, 200, { 'request-id': ctx.entry.id }, { input_tokens: promptTokens(body) }, false);
}

// ---------------------------------------------------------------------------
// OpenAI-compatible Chat Completions (docs/PROTOCOLS.md B)

const OPENAI_STATUS_TYPES = { 400: 'invalid_request_error', 401: 'invalid_request_error', 403: 'invalid_request_error', 404: 'invalid_request_error', 429: 'requests' };
const VLLM_TYPES = { 400: 'BadRequestError', 401: 'UnauthorizedError', 404: 'NotFoundError', 429: 'TooManyRequestsError', 500: 'InternalServerError', 503: 'ServiceUnavailableError' };
const OLLAMA_TYPES = { 400: 'invalid_request_error', 404: 'not_found_error' };
const LLAMACPP_TYPES = { 400: 'invalid_request_error', 401: 'authentication_error', 404: 'not_found_error', 503: 'unavailable_error' };
const OPENAI_MESSAGES = {
  400: 'Invalid request', 401: 'Incorrect API key provided.', 403: 'Forbidden', 404: 'The model does not exist or you do not have access to it.',
  429: 'Rate limit reached for requests. Please try again later.', 500: 'The server had an error while processing your request.',
  503: 'The server is overloaded or not ready yet.',
};

// Error object (the value of "error") in the given variant's shape.
function openaiErrorObject(variant, status, message, type, code) {
  switch (variant) {
    case 'vllm':
      return { message, type: type ?? VLLM_TYPES[status] ?? (status >= 500 ? 'InternalServerError' : 'BadRequestError'), param: null, code: status };
    case 'ollama':
      return { message, type: type ?? OLLAMA_TYPES[status] ?? 'api_error', param: null, code: null };
    case 'llamacpp':
      return { code: status, message, type: type ?? LLAMACPP_TYPES[status] ?? 'server_error' };
    default:
      return { message, type: type ?? OPENAI_STATUS_TYPES[status] ?? (status >= 500 ? 'server_error' : 'invalid_request_error'), param: null, code: code ?? null };
  }
}

function openaiError(ctx, variant, status, message, sc, code) {
  const headers = extraHeaders(sc, { 'x-request-id': ctx.entry.id });
  if (sc && typeof sc.should_retry === 'boolean') headers['x-should-retry'] = String(sc.should_retry);
  if (sc && sc.retry_after !== undefined) headers['retry-after'] = sc.retry_after;
  if (sc && sc.retry_after_ms !== undefined) headers['retry-after-ms'] = String(sc.retry_after_ms);
  ctx.finish('error_status');
  sendJson(ctx.res, status, headers, { error: openaiErrorObject(variant, status, message, sc?.error_type, code) }, false);
}

const OPENAI_ROLES = new Set(['developer', 'system', 'user', 'assistant', 'tool', 'function']);

const OA_PART_TYPES = new Set(['text', 'image_url', 'input_audio', 'file', 'refusal']);
const invalidParam = (msg, param, code = null) => ({ msg, code, param });

// An OpenAI image_url part at param path p. Returns an error or null.
function checkOpenaiImage(part, p) {
  const iu = part.image_url;
  if (!isObj(iu) || typeof iu.url !== 'string') return invalidParam(`Missing required parameter: '${p}.image_url.url'.`, `${p}.image_url.url`, 'missing_required_parameter');
  const url = iu.url;
  if (url.startsWith('data:')) {
    const m = url.match(/^data:([^;,]+);base64,(.*)$/s);
    if (!m) return invalidParam(`Invalid image URL: '${p}.image_url.url'. Expected a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an unsupported data URL.`, `${p}.image_url.url`, 'invalid_image_url');
    const unsupported = invalidParam("You uploaded an unsupported image. Please make sure your image has of one the following formats: ['png', 'jpeg', 'gif', 'webp'].", `${p}.image_url.url`, 'invalid_image_format');
    if (!IMAGE_TYPES.has(m[1])) return unsupported;
    const bad = checkImageData(m[1], m[2]);
    if (bad === 'base64') return invalidParam(`Invalid base64 image_url: '${p}.image_url.url'.`, `${p}.image_url.url`, 'invalid_base64');
    if (bad === 'mismatch') return unsupported;
    return null;
  }
  if (!/^https:\/\/[^/\s]+/i.test(url)) {
    return invalidParam(`Invalid image URL: '${p}.image_url.url'. Expected an https URL or a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an unsupported URL.`, `${p}.image_url.url`, 'invalid_image_url');
  }
  return null;
}

// Content parts, tool-call pairing, tools, tool_choice, response_format, stop, reasoning_effort.
function checkOpenaiRich(body) {
  const msgs = body.messages;
  let pending = null; // ids of the last assistant tool_calls still to answer, while in its tool run
  let pendingAt = -1;
  for (let i = 0; i < msgs.length; i++) {
    const m = msgs[i];
    if (Array.isArray(m.content)) {
      for (let j = 0; j < m.content.length; j++) {
        const part = m.content[j];
        const p = `messages[${i}].content[${j}]`;
        if (!isObj(part) || !OA_PART_TYPES.has(part.type)) {
          return invalidParam(`Invalid value: '${isObj(part) ? part.type : part}'. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', and 'file'.`, `${p}.type`, 'invalid_value');
        }
        if (part.type === 'text' && typeof part.text !== 'string') return invalidParam(`Missing required parameter: '${p}.text'.`, `${p}.text`, 'missing_required_parameter');
        if (part.type === 'image_url') {
          if (m.role !== 'user') return invalidParam(`Invalid '${p}.type': image_url content parts are only supported for messages with role 'user'.`, `${p}.type`, 'invalid_value');
          const bad = checkOpenaiImage(part, p);
          if (bad) return bad;
        }
      }
    }
    if (m.role === 'tool') {
      if (typeof m.tool_call_id !== 'string') return invalidParam(`Missing required parameter: 'messages[${i}].tool_call_id'.`, `messages[${i}].tool_call_id`, 'missing_required_parameter');
      if (pending === null || !pending.has(m.tool_call_id)) {
        return invalidParam("Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.", `messages.[${i}].role`);
      }
      pending.delete(m.tool_call_id);
      continue;
    }
    if (pending !== null && pending.size > 0) {
      return invalidParam(`An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: ${[...pending].join(', ')}`, `messages.[${pendingAt}].role`);
    }
    pending = null;
    if (m.role === 'assistant' && m.tool_calls !== undefined && m.tool_calls !== null) {
      if (!Array.isArray(m.tool_calls)) return invalidParam(`Invalid type for 'messages[${i}].tool_calls': expected an array of objects.`, `messages[${i}].tool_calls`, 'invalid_type');
      if (m.tool_calls.length === 0) {
        return invalidParam(`Invalid 'messages[${i}].tool_calls': empty array. Expected an array with minimum length 1, but got an empty array instead.`, `messages[${i}].tool_calls`, 'empty_array');
      }
      pending = new Set();
      pendingAt = i;
      for (let k = 0; k < m.tool_calls.length; k++) {
        const t = m.tool_calls[k];
        const p = `messages[${i}].tool_calls[${k}]`;
        if (!isObj(t) || typeof t.id !== 'string') return invalidParam(`Missing required parameter: '${p}.id'.`, `${p}.id`, 'missing_required_parameter');
        if (t.type !== 'function') return invalidParam(`Missing required parameter: '${p}.type'.`, `${p}.type`, 'missing_required_parameter');
        if (!isObj(t.function) || typeof t.function.name !== 'string') return invalidParam(`Missing required parameter: '${p}.function.name'.`, `${p}.function.name`, 'missing_required_parameter');
        if (typeof t.function.arguments !== 'string') return invalidParam(`Missing required parameter: '${p}.function.arguments'.`, `${p}.function.arguments`, 'missing_required_parameter');
        pending.add(t.id);
      }
    }
  }
  if (pending !== null && pending.size > 0 && pendingAt < msgs.length - 1) {
    return invalidParam(`An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: ${[...pending].join(', ')}`, `messages.[${pendingAt}].role`);
  }
  const names = new Set();
  if ('tools' in body && body.tools !== null) {
    if (!Array.isArray(body.tools)) return invalidParam("Invalid type for 'tools': expected an array of objects.", 'tools', 'invalid_type');
    for (let i = 0; i < body.tools.length; i++) {
      const t = body.tools[i];
      const p = `tools[${i}]`;
      if (!isObj(t) || t.type !== 'function') return invalidParam(`Invalid value: '${isObj(t) ? t.type : t}'. Supported values are: 'function' and 'custom'.`, `${p}.type`, 'invalid_value');
      if (!isObj(t.function) || !('name' in t.function)) return invalidParam(`Missing required parameter: '${p}.function.name'.`, `${p}.function.name`, 'missing_required_parameter');
      const name = t.function.name;
      if (typeof name !== 'string') return invalidParam(`Invalid type for '${p}.function.name': expected a string.`, `${p}.function.name`, 'invalid_type');
      if (name.length === 0) return invalidParam(`Invalid '${p}.function.name': empty string. Expected a string with minimum length 1, but got an empty string instead.`, `${p}.function.name`, 'empty_string');
      if (name.length > 64) {
        return invalidParam(`Invalid '${p}.function.name': string too long. Expected a string with maximum length 64, but got a string with length ${name.length} instead.`, `${p}.function.name`, 'string_above_max_length');
      }
      const params = t.function.parameters;
      if (params !== undefined && (!isObj(params) || params.type !== 'object')) {
        const got = isObj(params) ? JSON.stringify(params.type ?? 'None') : 'None';
        return invalidParam(`Invalid schema for function '${name}': schema must be a JSON Schema of 'type: "object"', got 'type: ${got}'.`, `${p}.function.parameters`, 'invalid_function_parameters');
      }
      names.add(name);
    }
  }
  if ('tool_choice' in body && body.tool_choice !== null) {
    const tc = body.tool_choice;
    if (typeof tc === 'string') {
      if (!['none', 'auto', 'required'].includes(tc)) return invalidParam(`Invalid value: '${tc}'. Supported values are: 'none', 'auto', and 'required'.`, 'tool_choice', 'invalid_value');
    } else if (!isObj(tc) || tc.type !== 'function' || !isObj(tc.function) || typeof tc.function.name !== 'string') {
      return invalidParam("Missing required parameter: 'tool_choice.function.name'.", 'tool_choice.function.name', 'missing_required_parameter');
    }
    if (!Array.isArray(body.tools) || body.tools.length === 0) {
      return invalidParam("Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.", 'tool_choice');
    }
    if (isObj(tc) && !names.has(tc.function.name)) {
      return invalidParam(`Invalid value for 'tool_choice': function '${tc.function.name}' is not one of the functions in 'tools'.`, 'tool_choice');
    }
  }
  if ('response_format' in body && body.response_format !== null) {
    const rf = body.response_format;
    if (!isObj(rf) || !['text', 'json_object', 'json_schema'].includes(rf.type)) {
      return invalidParam(`Invalid value: '${isObj(rf) ? rf.type : rf}'. Supported values are: 'json_object', 'json_schema', and 'text'.`, 'response_format.type', 'invalid_value');
    }
    if (rf.type === 'json_schema') {
      if (!isObj(rf.json_schema)) return invalidParam("Missing required parameter: 'response_format.json_schema'.", 'response_format.json_schema', 'missing_required_parameter');
      if (typeof rf.json_schema.name !== 'string') return invalidParam("Missing required parameter: 'response_format.json_schema.name'.", 'response_format.json_schema.name', 'missing_required_parameter');
      if ('schema' in rf.json_schema && !isObj(rf.json_schema.schema)) {
        return invalidParam("Invalid type for 'response_format.json_schema.schema': expected an object.", 'response_format.json_schema.schema', 'invalid_type');
      }
    }
  }
  if ('stop' in body && body.stop !== null) {
    const st = body.stop;
    if (Array.isArray(st)) {
      if (st.length > 4) return invalidParam(`Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length ${st.length} instead.`, 'stop', 'array_above_max_length');
      for (let i = 0; i < st.length; i++) if (typeof st[i] !== 'string') return invalidParam(`Invalid type for 'stop[${i}]': expected a string.`, `stop[${i}]`, 'invalid_type');
    } else if (typeof st !== 'string') {
      return invalidParam("Invalid type for 'stop': expected one of a string or array of strings.", 'stop', 'invalid_type');
    }
  }
  if ('parallel_tool_calls' in body && body.parallel_tool_calls !== null) {
    if (typeof body.parallel_tool_calls !== 'boolean') return invalidParam("Invalid type for 'parallel_tool_calls': expected a boolean.", 'parallel_tool_calls', 'invalid_type');
    if (!Array.isArray(body.tools) || body.tools.length === 0) {
      return invalidParam("Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when 'tools' are specified.", 'parallel_tool_calls');
    }
  }
  if ('reasoning_effort' in body && body.reasoning_effort !== null && typeof body.reasoning_effort !== 'string') {
    return invalidParam("Invalid type for 'reasoning_effort': expected a string.", 'reasoning_effort', 'invalid_type');
  }
  return null;
}

function validateOpenai(body) {
  if (!isObj(body)) return { msg: 'Invalid request body: expected a JSON object', code: null, param: null };
  if (typeof body.model !== 'string' || body.model === '') return { msg: 'you must provide a model parameter', code: null, param: null };
  if (!('messages' in body)) return { msg: "Missing required parameter: 'messages'.", code: 'missing_required_parameter', param: 'messages' };
  if (!Array.isArray(body.messages)) return { msg: "Invalid type for 'messages': expected an array.", code: 'invalid_type', param: 'messages' };
  if (body.messages.length === 0) {
    return { msg: "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", code: 'empty_array', param: 'messages' };
  }
  for (let i = 0; i < body.messages.length; i++) {
    const m = body.messages[i];
    if (!isObj(m) || !OPENAI_ROLES.has(m.role)) {
      return { msg: `Invalid value: '${isObj(m) ? m.role : m}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.`, code: 'invalid_value', param: `messages[${i}].role` };
    }
    const c = m.content;
    if (!(typeof c === 'string' || Array.isArray(c) || (c === null && m.role === 'assistant') || (c === undefined && m.role === 'assistant'))) {
      return { msg: `Invalid type for 'messages[${i}].content': expected one of a string or array of objects.`, code: 'invalid_type', param: `messages[${i}].content` };
    }
  }
  for (const k of ['max_tokens', 'max_completion_tokens']) {
    if (k in body && body[k] !== null && !(Number.isInteger(body[k]) && body[k] >= 1)) {
      return { msg: `Invalid '${k}': integer below minimum value. Expected a value >= 1, but got ${JSON.stringify(body[k])} instead.`, code: 'integer_below_min_value', param: k };
    }
  }
  if ('stream' in body && body.stream !== null && typeof body.stream !== 'boolean') return { msg: "Invalid type for 'stream': expected a boolean.", code: 'invalid_type', param: 'stream' };
  return checkOpenaiRich(body);
}

const FINISH_FROM_STOP = { end_turn: 'stop', stop_sequence: 'stop', max_tokens: 'length', tool_use: 'tool_calls', refusal: 'content_filter' };

async function handleOpenai(ctx, rawBody) {
  const { req } = ctx;
  let body;
  if (rawBody === null) return openaiError(ctx, 'openai', 413, 'Request too large', null);
  try {
    body = JSON.parse(rawBody);
  } catch {
    body = undefined;
  }
  ctx.entry.body = body === undefined ? rawBody : body;
  // The scenario decides the variant, and the variant decides auth and error shapes,
  // so peek at it first; the queue is popped only once the request is accepted.
  let r = { sc: null, fromQueue: false, echoed: '' };
  if (isObj(body) && Array.isArray(body.messages)) {
    r = resolveScenario(body.messages);
    if (r.err) return openaiError(ctx, 'openai', 400, r.err, null);
  }
  const sc0 = r.sc ?? {};
  const variant = sc0.variant ?? 'openai';
  const authOptional = variant === 'vllm' || variant === 'ollama' || variant === 'llamacpp';
  const authErr = checkAuth(req);
  if (authErr && !(authErr === 'missing' && authOptional && OPTS.apiKey === null)) {
    const msg = variant === 'llamacpp' ? 'Invalid API Key'
      : authErr === 'missing' ? "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        : 'Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.';
    return openaiError(ctx, variant, 401, msg, null, authErr === 'missing' ? null : 'invalid_api_key');
  }
  if (body === undefined) {
    return openaiError(ctx, variant, 400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)", null);
  }
  const invalid = validateOpenai(body);
  if (invalid) {
    const eo = openaiErrorObject(variant, 400, invalid.msg, null, invalid.code);
    if ('param' in eo) eo.param = invalid.param;
    ctx.finish('error_status');
    return sendJson(ctx.res, 400, { 'x-request-id': ctx.entry.id }, { error: eo }, false);
  }
  commitScenario(ctx, r);
  const sc = sc0;

  if (sc.header_delay_ms && !(await ctx.sleep(sc.header_delay_ms))) return;
  if (sc.body !== undefined) return rawError(ctx, sc);
  if (sc.status !== undefined && sc.status >= 400) {
    return openaiError(ctx, variant, sc.status, sc.error_message ?? OPENAI_MESSAGES[sc.status] ?? 'Error', sc, sc.status === 429 ? 'rate_limit_exceeded' : null);
  }

  const pc = planContent('openai', body, sc, r.echoed);
  const reply = pc.text;
  const deltas = toDeltas(reply);
  const prompt = promptTokens(body);
  const reasoningTokens = pc.hiddenReasoning + (pc.thinking ? toDeltas(pc.thinking).length : 0);
  const completionTokens = deltas.length + extraOutputTokens(pc);
  let usage;
  if (variant === 'ollama') usage = { prompt_tokens: prompt, completion_tokens: completionTokens, total_tokens: prompt + completionTokens };
  else if (variant === 'openai') {
    usage = {
      prompt_tokens: prompt, completion_tokens: completionTokens, total_tokens: prompt + completionTokens,
      prompt_tokens_details: { cached_tokens: 0 }, completion_tokens_details: { reasoning_tokens: reasoningTokens },
    };
  } else {
    usage = { prompt_tokens: prompt, completion_tokens: completionTokens, total_tokens: prompt + completionTokens };
    if (reasoningTokens > 0) usage.completion_tokens_details = { reasoning_tokens: reasoningTokens };
  }
  if (sc.usage) Object.assign(usage, sc.usage);
  const plan = {
    id: 'chatcmpl-' + randomId('').slice(0, 24),
    created: Math.floor(Date.now() / 1000),
    model: body.model,
    reply,
    deltas,
    pc,
    usage,
    interleave: sc.interleave_tools === true,
    finish: sc.finish_reason ?? (sc.stop_reason ? FINISH_FROM_STOP[sc.stop_reason] ?? sc.stop_reason
      : pc.stopSeq === null && pc.calls.length > 0 ? 'tool_calls' : 'stop'),
    variant,
    pad: sc.pad_json === true,
  };
  if (body.stream === true) return openaiStream(ctx, sc, plan, body);
  return openaiJson(ctx, sc, plan);
}

function openaiBase(plan, object) {
  const o = { id: plan.id, object, created: plan.created, model: plan.model };
  switch (plan.variant) {
    case 'openai': o.service_tier = 'default'; o.system_fingerprint = 'fp_fake0001'; break;
    case 'groq': o.system_fingerprint = 'fp_fake0001'; break;
    case 'ollama': o.system_fingerprint = 'fp_ollama'; break;
    case 'llamacpp': o.system_fingerprint = 'b0000-fake'; break;
    default: break;
  }
  return o;
}

function groqUsage(u) {
  return {
    queue_time: 0.01, prompt_tokens: u.prompt_tokens, prompt_time: 0.001, completion_tokens: u.completion_tokens,
    completion_time: 0.01, total_tokens: u.total_tokens, total_time: 0.011,
  };
}

function llamacppTimings(u) {
  return { prompt_n: u.prompt_tokens, prompt_ms: 1, predicted_n: u.completion_tokens, predicted_ms: 1 };
}

async function openaiJson(ctx, sc, plan) {
  const delay = (sc.ttft_ms ?? 0) + (sc.gap_ms ? sc.gap_ms * Math.max(0, openaiDeltas(plan).list.length - 1) : 0);
  if (delay && !(await ctx.sleep(delay))) return;
  const fault = sc.fault;
  if (fault === 'reset') return ctx.reset('fault:reset');
  if (fault === 'stall') return ctx.stall(sc.stall_ms ?? 0, 'fault:stall');
  const o = openaiBase(plan, 'chat.completion');
  const pc = plan.pc;
  const message = { role: 'assistant', content: plan.reply === '' && pc.calls.length > 0 ? null : plan.reply };
  if (pc.thinking !== null) message[plan.variant === 'ollama' ? 'reasoning' : 'reasoning_content'] = pc.thinking;
  if (pc.calls.length > 0) {
    message.tool_calls = pc.calls.map((c) => (c.id === null ? { type: 'function', function: { name: c.name, arguments: c.json } }
      : { id: c.id, type: 'function', function: { name: c.name, arguments: c.json } }));
  }
  if (plan.variant === 'openai') message.refusal = null;
  const choice = { index: 0, message };
  if (plan.variant !== 'vllm') choice.logprobs = null;
  choice.finish_reason = plan.finish;
  o.choices = [choice];
  o.usage = plan.usage;
  if (plan.variant === 'groq') o.x_groq = { id: ctx.entry.id };
  if (plan.variant === 'llamacpp') o.timings = llamacppTimings(plan.usage);
  const headers = extraHeaders(sc, { 'x-request-id': ctx.entry.id });
  if (fault === 'malformed' || fault === 'truncate') {
    const full = JSON.stringify(o);
    const sent = fault === 'malformed' ? full.slice(0, -7) + ',"oops":' : full.slice(0, full.length >> 1);
    headers['content-type'] = 'application/json';
    headers['content-length'] = Buffer.byteLength(fault === 'malformed' ? sent : full);
    ctx.res.writeHead(200, headers);
    if (fault === 'malformed') {
      ctx.finish('fault:malformed');
      return ctx.res.end(sent);
    }
    ctx.res.write(sent);
    return ctx.reset('fault:truncate', true);
  }
  ctx.finish(fault ? `fault:${fault}` : 'completed');
  sendJson(ctx.res, 200, headers, o, plan.pad);
}

// The stream's first delta and the list of later deltas: reasoning words, content words,
// then per tool call a header (index, id, type, name, empty arguments) and argument pieces.
// A reply of tool calls only carries the first header in the first chunk (content null).
function openaiDeltas(plan) {
  const pc = plan.pc;
  if (pc.thinking === null && pc.calls.length === 0) {
    return { first: { role: 'assistant', content: '' }, list: plan.deltas.map((t) => ({ content: t })) };
  }
  const list = [];
  const rkey = plan.variant === 'ollama' ? 'reasoning' : 'reasoning_content';
  if (pc.thinking !== null) for (const t of toDeltas(pc.thinking)) list.push({ [rkey]: t });
  for (const t of plan.deltas) list.push({ content: t });
  let first = { role: 'assistant', content: '' };
  // Ollama sends each call whole (arguments complete) in one chunk.
  const whole = plan.variant === 'ollama';
  const header = (c, k) => {
    const t = { index: k };
    if (c.id !== null) t.id = c.id;
    t.type = 'function';
    t.function = { name: c.name, arguments: whole ? c.json : '' };
    return { tool_calls: [t] };
  };
  const piece = (k, p) => ({ tool_calls: [{ index: k, function: { arguments: p } }] });
  if (pc.calls.length > 0 && list.length === 0) first = { role: 'assistant', content: null, tool_calls: header(pc.calls[0], 0).tool_calls };
  const headed = list.length === 0 ? 1 : 0;
  if (whole) {
    pc.calls.forEach((c, k) => { if (k >= headed) list.push(header(c, k)); });
  } else if (plan.interleave) {
    // Every header first, then the argument pieces of all calls in turn (k0, k1, k0, k1, ...).
    pc.calls.forEach((c, k) => { if (k >= headed) list.push(header(c, k)); });
    const pieces = pc.calls.map((c) => splitPieces(c.json, 3));
    for (let r = 0; r < 3; r++) pieces.forEach((ps, k) => { if (r < ps.length) list.push(piece(k, ps[r])); });
  } else {
    pc.calls.forEach((c, k) => {
      if (k >= headed) list.push(header(c, k));
      for (const p of splitPieces(c.json, 3)) list.push(piece(k, p));
    });
  }
  return { first, list };
}

async function openaiStream(ctx, sc, plan, body) {
  const { res } = ctx;
  const fault = sc.fault;
  const after = sc.after ?? 0;
  const variant = plan.variant;
  ctx.eol = sc.line_ending === 'crlf' ? '\r\n' : sc.line_ending === 'cr' ? '\r' : '\n';
  ctx.split = sc.split === true;
  ctx.splitDelay = sc.split_delay_ms ?? 1;
  const includeUsage = isObj(body.stream_options) && body.stream_options.include_usage === true;
  const obfuscation = variant === 'openai' && !(isObj(body.stream_options) && body.stream_options.include_obfuscation === false);
  const pingEvery = sc.ping === true ? 1 : typeof sc.ping === 'number' ? sc.ping : 0;
  const pad = plan.pad;

  res.socket?.setNoDelay(true);
  res.writeHead(200, extraHeaders(sc, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    'x-request-id': ctx.entry.id,
  }));
  res.flushHeaders();

  const chunk = (choices, extra) => {
    const o = openaiBase(plan, 'chat.completion.chunk');
    o.choices = choices;
    if (includeUsage && variant === 'openai') o.usage = null;
    if (extra) Object.assign(o, extra);
    if (obfuscation) o.obfuscation = 'x'.repeat(1 + (plan.id.length % 7));
    let json = JSON.stringify(o);
    if (pad) json = padJson(json);
    return `data: ${json}\n\n`;
  };
  const choice = (delta, finish) => {
    const c = { index: 0, delta };
    if (variant !== 'vllm') c.logprobs = null;
    if (finish !== null || variant !== 'vllm') c.finish_reason = finish;
    return c;
  };

  const od = openaiDeltas(plan);
  const list = od.list;
  const firstDelta = od.first;
  if (variant === 'openai') firstDelta.refusal = null;
  if (!(await ctx.write(chunk([choice(firstDelta, null)], variant === 'groq' ? { x_groq: { id: ctx.entry.id } } : null)))) return;
  if (sc.ttft_ms && !(await ctx.sleep(sc.ttft_ms))) return;

  const n = list.length;
  let faultFired = false;
  const fire = async () => {
    faultFired = true;
    switch (fault) {
      case 'midstream_error': {
        const status = 500;
        const message = sc.error_message ?? OPENAI_MESSAGES[500];
        if (variant === 'ollama') {
          // Ollama's OpenAI middleware loses the error text: an empty-delta chunk, then EOF.
          await ctx.write(chunk([choice({ role: 'assistant', content: '' }, null)]));
        } else {
          const err = openaiErrorObject(variant, status, message, sc.error_type ?? (variant === 'openai' || variant === 'groq' ? 'server_error' : undefined), null);
          await ctx.write(`data: ${JSON.stringify({ error: err })}\n\n`);
          if (variant === 'vllm') await ctx.write('data: [DONE]\n\n');
        }
        ctx.finish('fault:midstream_error');
        res.end();
        return true;
      }
      case 'reset':
        ctx.reset('fault:reset');
        return true;
      case 'stall':
        await ctx.stall(sc.stall_ms ?? 0, 'fault:stall');
        return true;
      case 'truncate':
        ctx.finish('fault:truncate');
        res.end();
        return true;
      case 'malformed':
        await ctx.write(`data: {"id":"${plan.id}","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"oops\n\n`);
        return ctx.closed;
      default:
        return false; // data_only: every OpenAI stream is data-only already
    }
  };
  const positional = fault && fault !== 'data_only';

  for (let i = 0; i < n; i++) {
    if (positional && !faultFired && i === after && (await fire())) return;
    if (i > 0 && sc.gap_ms && !(await ctx.sleep(sc.gap_ms))) return;
    if (!(await ctx.write(chunk([choice(list[i], null)])))) return;
    if (pingEvery && (i + 1) % pingEvery === 0 && !(await ctx.write(': ping\n\n'))) return;
  }
  if (positional && !faultFired && (await fire())) return;

  let finishExtra = null;
  if (variant === 'groq') finishExtra = { x_groq: { id: ctx.entry.id, usage: groqUsage(plan.usage) } };
  if (variant === 'llamacpp') finishExtra = { timings: llamacppTimings(plan.usage) };
  if (!(await ctx.write(chunk([choice({}, plan.finish)], finishExtra)))) return;
  if (includeUsage) {
    const extra = { usage: plan.usage };
    if (!(await ctx.write(chunk([], extra)))) return;
  }
  if (!(await ctx.write('data: [DONE]\n\n'))) return;
  ctx.finish(fault ? `fault:${fault}` : 'completed');
  res.end();
}

// ---------------------------------------------------------------------------
// Control API

function control(req, res, rawBody, path, query) {
  const reply = (status, obj) => sendJson(res, status, {}, obj, false);
  if (req.method === 'POST' && path === '/_fake/script') {
    let body;
    try {
      body = JSON.parse(rawBody ?? '');
    } catch {
      return reply(400, { error: 'body is not valid JSON' });
    }
    if (!isObj(body)) return reply(400, { error: 'body must be an object' });
    const def = body.default ?? null;
    const queue = body.queue ?? [];
    if (def !== null) {
      const bad = checkScenario(def);
      if (bad) return reply(400, { error: `default: ${bad}` });
    }
    if (!Array.isArray(queue)) return reply(400, { error: 'queue must be an array' });
    for (let i = 0; i < queue.length; i++) {
      const bad = checkScenario(queue[i]);
      if (bad) return reply(400, { error: `queue[${i}]: ${bad}` });
    }
    state.script = { default: def, queue: queue.slice() };
    return reply(200, { ok: true });
  }
  if (req.method === 'POST' && path === '/_fake/reset') {
    state.script = { default: null, queue: [] };
    state.log = new Array(OPTS.logMax);
    state.logStart = 0;
    state.logLen = 0;
    state.total = 0;
    state.clientClosed = 0;
    conns.total = 0;
    conns.h2Total = 0;
    conns.h2Streams = 0;
    return reply(200, { ok: true });
  }
  if (req.method === 'GET' && path === '/_fake/requests') {
    const limit = query.has('limit') ? Math.max(0, Number(query.get('limit')) || 0) : Infinity;
    return reply(200, { requests: logList(limit) });
  }
  if (req.method === 'GET' && path === '/_fake/stats') {
    return reply(200, {
      requests: state.total, client_closed: state.clientClosed, active: state.active, queued: state.script.queue.length,
      connections: conns.open, connections_total: conns.total, h2_connections: conns.h2Open,
      h2_connections_total: conns.h2Total, h2_streams_total: conns.h2Streams,
    });
  }
  return reply(404, { error: `no control endpoint ${req.method} ${path}` });
}

// ---------------------------------------------------------------------------
// Server

async function onRequest(req, res) {
  const received = nowMs();
  const qi = req.url.indexOf('?');
  const path = qi < 0 ? req.url : req.url.slice(0, qi);

  if (path.startsWith('/_fake/')) {
    const raw = req.method === 'POST' ? await readBody(req, MAX_BODY) : null;
    return control(req, res, raw, path, new URLSearchParams(qi < 0 ? '' : req.url.slice(qi + 1)));
  }

  const isOpenai = path === '/v1/chat/completions';
  const entry = {
    id: randomId('req_'),
    method: req.method,
    path,
    headers: req.headers,
    body: null,
    received_at_ms: received,
    scenario: null,
    outcome: null,
    finished_at_ms: null,
  };
  state.total++;
  logPush(entry);
  const ctx = new Ctx(req, res, entry);
  const raw = await readBody(req, MAX_BODY);
  if (ctx.closed) return;
  if (entry.body === null && raw !== null) entry.body = raw;

  try {
    if (req.method === 'POST' && path === '/v1/messages') return await handleAnthropic(ctx, raw);
    if (req.method === 'POST' && path === '/v1/messages/count_tokens') return handleCountTokens(ctx, raw);
    if (req.method === 'POST' && isOpenai) return await handleOpenai(ctx, raw);
    if (path === '/v1/messages' || path === '/v1/messages/count_tokens') {
      return anthropicError(ctx, 405, 'invalid_request_error', `Method ${req.method} not allowed`, null);
    }
    if (isOpenai) return openaiError(ctx, 'openai', 405, `Method ${req.method} not allowed`, null);
    return anthropicError(ctx, 404, 'not_found_error', `Not found: ${req.method} ${path}`, null);
  } catch (e) {
    process.stderr.write(`fake_llm: internal error: ${e && e.stack ? e.stack : e}\n`);
    if (!res.headersSent) return anthropicError(ctx, 500, 'api_error', 'fake_llm internal error', null);
    ctx.finish('internal_error');
    res.destroy();
  }
}

function handler(req, res) {
  onRequest(req, res).catch((e) => {
    process.stderr.write(`fake_llm: ${e && e.stack ? e.stack : e}\n`);
    res.destroy();
  });
}

const h1 = http.createServer({ noDelay: true, keepAlive: true }, handler);
// Long idle keep-alive so a client's pooled connection is not closed under it mid-benchmark.
h1.keepAliveTimeout = 65_000;
h1.headersTimeout = 70_000;
h1.requestTimeout = 0;

// Connection counts for /_fake/stats (a test checks how many connections its client opened).
const conns = { open: 0, total: 0, h2Open: 0, h2Total: 0, h2Streams: 0 };
function countConnection(sock) {
  conns.open++;
  conns.total++;
  sock.once('close', () => conns.open--);
}

// Connection-specific headers, which HTTP/2 forbids (RFC 9113 8.2.2): a scenario's `headers`
// may name them; on an HTTP/2 response they are dropped.
const H2_FORBIDDEN = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade']);

let server = h1;
if (OPTS.h2c) {
  // maxConcurrentStreams: node advertises 2^32-1 by default; a bounded value, as real providers send
  // (--h2-max-streams, default 1000). maxSessionMemory (MB) well above node's 10 so that a thousand
  // streams on one connection are not refused with ENHANCE_YOUR_CALM.
  const h2 = http2.createServer({ settings: { maxConcurrentStreams: OPTS.h2MaxStreams }, maxSessionMemory: 4096 }, (req, res) => {
    conns.h2Streams++;
    const writeHead = res.writeHead.bind(res);
    res.writeHead = (status, headers) => {
      if (headers) for (const k of Object.keys(headers)) if (H2_FORBIDDEN.has(k.toLowerCase())) delete headers[k];
      return writeHead(status, headers);
    };
    handler(req, res);
  });
  h2.on('session', (session) => {
    conns.h2Open++;
    conns.h2Total++;
    session.once('close', () => conns.h2Open--);
    session.on('error', () => {});
  });
  // One port, both protocols: the first bytes decide (RFC 9113 3.4: the client preface starts with "PRI ").
  const PREFACE = Buffer.from('PRI * HTTP/2.0');
  server = net.createServer({ noDelay: true }, (sock) => {
    countConnection(sock);
    sock.on('error', () => {});
    sock.once('data', (chunk) => {
      sock.pause();
      sock.unshift(chunk);
      const n = Math.min(chunk.length, PREFACE.length);
      const target = chunk.subarray(0, n).equals(PREFACE.subarray(0, n)) ? h2 : h1;
      target.emit('connection', sock);
      process.nextTick(() => sock.resume());
    });
  });
} else {
  h1.on('connection', countConnection);
}

server.listen(OPTS.port, OPTS.host, () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

function shutdown() {
  server.close();
  h1.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
