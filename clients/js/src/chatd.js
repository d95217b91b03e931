// chatd.js: the JavaScript client of chatd. An ES module with no dependencies,
// for browsers and Node >= 18 (global fetch, ReadableStream, TextDecoder,
// AbortController).
//
// ChatClient keeps the template's four methods (chat, chatStream, getHistory,
// reset) on the seed-compatible endpoints, so the template's own usage example
// runs unchanged, and adds the /v1 API: send() and stream() (SSE, parsed
// incrementally, cancellable), sessions with cursor pagination, messages, reset,
// delete, stats, models and per-turn cost, typed errors (ChatdError), an API key.

import { ChatdError, errorFromResponse, errorFromEvent, isAbortError, describeError, parseRetryAfter } from './errors.js';
import { SSEParser, readSSE } from './sse.js';

export { ChatdError, isAbortError, describeError, parseRetryAfter, SSEParser, readSSE };

export const VERSION = '0.2.0';

// ---- content helpers (canonical blocks: docs/API.md "Tools, images and options") ----

/** A text block. */
export function textBlock(text) {
  return { type: 'text', text: String(text) };
}

/** Base64 of bytes (Uint8Array, ArrayBuffer), in browsers and Node. */
export function toBase64(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (typeof globalThis.Buffer === 'function') return globalThis.Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('base64');
  let bin = '';
  for (let i = 0; i < u8.length; i += 0x8000) bin += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  return btoa(bin);
}

const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];

/**
 * An image block: base64 data (a string) or bytes (Uint8Array / ArrayBuffer) with
 * its media type (image/png, image/jpeg, image/gif or image/webp).
 */
export function imageBlock(data, mediaType = 'image/png') {
  if (!IMAGE_TYPES.includes(mediaType)) throw new TypeError(`imageBlock: ${mediaType} is not one of ${IMAGE_TYPES.join(', ')}`);
  const b64 = typeof data === 'string' ? data : toBase64(data);
  return { type: 'image', source: { type: 'base64', media_type: mediaType, data: b64 } };
}

/** An image block that points at an https:// URL (the provider fetches it). */
export function imageUrlBlock(url) {
  return { type: 'image', source: { type: 'url', url: String(url) } };
}

/** An image block from a Blob or File (a browser file input), read as base64. */
export async function imageBlockFromBlob(blob) {
  const type = blob.type || 'image/png';
  return imageBlock(new Uint8Array(await blob.arrayBuffer()), type);
}

/**
 * One tool result for `toolResults`: the call's id, its result (a string, text
 * and image blocks, or any other value, sent as its JSON text), isError when the
 * tool failed.
 */
export function toolResult(toolCallId, content, { isError = false } = {}) {
  let c = content;
  if (c === undefined || c === null) c = '';
  else if (typeof c !== 'string' && !Array.isArray(c)) c = JSON.stringify(c);
  const r = { tool_call_id: toolCallId, content: c };
  if (isError) r.is_error = true;
  return r;
}

// The request options of a turn: camelCase name -> the body field (src/llm/content.h).
const TURN_OPTIONS = {
  temperature: 'temperature', topP: 'top_p', topK: 'top_k', stop: 'stop', seed: 'seed',
  presencePenalty: 'presence_penalty', frequencyPenalty: 'frequency_penalty', logitBias: 'logit_bias',
  logprobs: 'logprobs', topLogprobs: 'top_logprobs', user: 'user', tools: 'tools', toolChoice: 'tool_choice',
  parallelToolCalls: 'parallel_tool_calls', responseFormat: 'response_format', thinking: 'thinking',
  reasoningEffort: 'reasoning_effort', truncation: 'truncation',
};

function abortErrorFrom(signal) {
  const r = signal && signal.reason;
  if (r instanceof Error && (r.name === 'AbortError' || r.name === 'TimeoutError')) return r;
  const e = typeof DOMException === 'function'
    ? new DOMException('The request was aborted', 'AbortError')
    : Object.assign(new Error('The request was aborted'), { name: 'AbortError' });
  return e;
}

function randomId(len) {
  const alphabet = '0123456789abcdefghijklmnopqrstuvwxyz';
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === 'function') {
    const bytes = c.getRandomValues(new Uint8Array(len));
    let s = '';
    for (const b of bytes) s += alphabet[b % 36];
    return s;
  }
  let s = '';
  while (s.length < len) s += Math.random().toString(36).slice(2);
  return s.slice(0, len);
}

function pick(obj, keys) {
  for (const k of keys) if (obj && obj[k] != null && Number.isFinite(Number(obj[k]))) return Number(obj[k]);
  return null;
}

/**
 * Prices in USD per million tokens of a /v1/models entry (`pricing.input_per_mtok`,
 * ...; the short names `input`, `output`, `cache_write`, `cache_read` are
 * accepted too), or null when it has none.
 * @returns {{input: number, output: number, cache_write: number, cache_read: number} | null}
 */
export function pricingOf(model) {
  if (!model || typeof model !== 'object') return null;
  const p = model.pricing || model.prices;
  if (!p || typeof p !== 'object') return null;
  const input = pick(p, ['input_per_mtok', 'input']);
  const output = pick(p, ['output_per_mtok', 'output']);
  if (input == null || output == null) return null;
  const cacheWrite = pick(p, ['cache_write_per_mtok', 'cache_write']);
  const cacheRead = pick(p, ['cache_read_per_mtok', 'cache_read']);
  return { input, output, cache_write: cacheWrite ?? input, cache_read: cacheRead ?? input };
}

/**
 * What a turn's token counts cost at the given prices (USD per million tokens).
 * A price per million tokens in dollars is a price per token in micro-dollars,
 * so microUsd = sum(tokens * price), rounded once at the end.
 * @returns {{microUsd: number, usd: number}}
 */
export function costOf(usage, pricing) {
  const u = usage || {};
  const micro =
    (u.input_tokens || 0) * pricing.input +
    (u.output_tokens || 0) * pricing.output +
    (u.cache_creation_input_tokens || 0) * pricing.cache_write +
    (u.cache_read_input_tokens || 0) * pricing.cache_read;
  const microUsd = Math.round(micro);
  return { microUsd, usd: microUsd / 1e6 };
}

/**
 * A cost as chatd reports it (`{micros, usd: "0.000171"}`) in US dollars, or null.
 */
export function costUsd(cost) {
  if (cost == null) return null;
  if (typeof cost === 'number') return cost;
  if (typeof cost.micros === 'number') return cost.micros / 1e6;
  if (cost.usd != null && Number.isFinite(Number(cost.usd))) return Number(cost.usd);
  return null;
}

/**
 * One streamed turn of POST /v1/chat/stream. The request starts at once.
 * Consume it once, either as an async iterator of events
 *   {type: 'start', data} | {type: 'delta', text, data} | {type: 'thinking', text, data} |
 *   {type: 'tool_call_delta', data} | {type: 'tool_call', call, data} | {type: 'done', data}
 * (an `error` event, a cut stream or an HTTP error is thrown as ChatdError), or
 * with result(), which runs the callbacks and resolves with the done data plus
 * `text`. abort() (or the caller's AbortSignal, or leaving the loop early)
 * closes the connection: chatd sees the client go away and stops the turn.
 */
export class ChatStream {
  constructor(client, body, opts = {}) {
    this.sessionId = body.session_id ?? null;
    this.model = null;
    this.requestId = null;
    this.text = '';
    this.thinking = '';
    this.toolCalls = []; // complete calls, {id, name, input}, in order
    this.usage = null;
    this.doneData = null;
    this._cb = opts;
    this._consumed = false;
    this._settled = false;
    this._controller = new AbortController();
    const user = opts.signal;
    if (user) {
      if (user.aborted) this._controller.abort(user.reason);
      else user.addEventListener('abort', () => this._controller.abort(user.reason), { once: true });
    }
    this._response = client._request('POST', '/v1/chat/stream', {
      body,
      signal: this._controller.signal,
      accept: 'text/event-stream',
      requestId: opts.requestId,
      idempotencyKey: opts.idempotencyKey,
    });
    this._response.catch(() => {}); // reported through the iterator / result()
    this._result = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this._result.catch(() => {}); // no unhandled rejection when nobody asks for result()
  }

  /** The AbortSignal of this turn (aborted by abort() or by the caller's signal). */
  get signal() {
    return this._controller.signal;
  }

  /** Stops the turn: the connection is closed and the iterator / result() reject with an AbortError. */
  abort(reason) {
    this._controller.abort(reason);
  }

  [Symbol.asyncIterator]() {
    if (this._consumed) throw new Error('ChatStream: already consumed (iterate it once, or call result())');
    this._consumed = true;
    return this._run();
  }

  /** Resolves with the `done` data plus `text` (the whole reply) and `request_id`; rejects with ChatdError or AbortError. */
  result() {
    if (!this._consumed) {
      this._consumed = true;
      (async () => {
        for await (const ev of this._run()) void ev;
      })().catch(() => {});
    }
    return this._result;
  }

  _settle(err, value) {
    if (this._settled) return;
    this._settled = true;
    if (err) this._reject(err);
    else this._resolve(value);
  }

  async *_run() {
    const cb = this._cb;
    let finished = false;
    try {
      const res = await this._response;
      this.requestId = res.headers.get('x-request-id');
      const ctype = res.headers.get('content-type') || '';
      if (!ctype.includes('text/event-stream')) {
        throw new ChatdError(`Expected an event stream, got ${ctype || 'no content type'}`, {
          status: res.status, type: 'http_error', requestId: this.requestId,
        });
      }
      const onComment = cb.onPing ? () => cb.onPing() : undefined;
      for await (const ev of readSSE(res.body, { onComment })) {
        if (finished) continue; // nothing may follow done/error; drain to the end of the response
        // Events already received but not yet handed out are dropped once the turn is aborted.
        if (this._controller.signal.aborted) throw abortErrorFrom(this._controller.signal);
        let data;
        try {
          data = JSON.parse(ev.data);
        } catch {
          throw new ChatdError('The server sent an event that is not JSON', {
            status: 502, type: 'provider_error', requestId: this.requestId, body: ev.data, inStream: true,
          });
        }
        if (ev.event === 'start') {
          this.sessionId = data.session_id ?? this.sessionId;
          this.model = data.model ?? null;
          if (data.request_id) this.requestId = data.request_id;
          if (cb.onStart) cb.onStart(data);
          yield { type: 'start', data };
        } else if (ev.event === 'delta') {
          const text = typeof data.text === 'string' ? data.text : '';
          this.text += text;
          if (cb.onDelta) cb.onDelta(text, this.text);
          yield { type: 'delta', text, data };
        } else if (ev.event === 'thinking') {
          const text = typeof data.text === 'string' ? data.text : '';
          this.thinking += text;
          if (cb.onThinking) cb.onThinking(text, this.thinking);
          yield { type: 'thinking', text, data };
        } else if (ev.event === 'tool_call_delta') {
          if (cb.onToolCallDelta) cb.onToolCallDelta(data);
          yield { type: 'tool_call_delta', data };
        } else if (ev.event === 'tool_call') {
          const call = { id: data.id, name: data.name, input: data.input ?? {} };
          this.toolCalls.push(call);
          if (cb.onToolCall) cb.onToolCall(call);
          yield { type: 'tool_call', call, data };
        } else if (ev.event === 'done') {
          finished = true;
          this.doneData = data;
          this.usage = data.usage ?? null;
          this.sessionId = data.session_id ?? this.sessionId;
          this.model = data.model ?? this.model;
          const result = { ...data, text: this.text, request_id: this.requestId };
          this._settle(null, result);
          if (cb.onDone) cb.onDone(result);
          yield { type: 'done', data: result };
        } else if (ev.event === 'error') {
          finished = true;
          throw errorFromEvent(data, this.requestId);
        }
        // Other event names are ignored: newer servers may add some.
      }
      if (!finished) {
        throw new ChatdError('The stream ended before the reply was complete', {
          status: 502, type: 'stream_truncated', requestId: this.requestId, inStream: true,
        });
      }
    } catch (e) {
      // After `done` the turn is committed: a failure while draining the rest of the response is not the turn's.
      if (this.doneData && this._settled) return;
      let err = e;
      if (this._controller.signal.aborted && !(err instanceof ChatdError && err.inStream)) err = abortErrorFrom(this._controller.signal);
      if (!this._settled && cb.onError) cb.onError(err);
      this._settle(err);
      throw err;
    } finally {
      if (!this._settled) {
        // The consumer left the loop early: stop the turn on the server too.
        this._controller.abort();
        const err = abortErrorFrom(this._controller.signal);
        this._settle(err);
      }
    }
  }
}

export class ChatClient {
  /**
   * @param {string} [baseUrl] chatd's address; '' means the page's own origin (browsers)
   * @param {{apiKey?: string|null, fetch?: typeof fetch, headers?: Record<string,string>, sessionId?: string}} [options]
   */
  constructor(baseUrl = 'http://localhost:8000', options = {}) {
    this.baseUrl = String(baseUrl ?? '').replace(/\/+$/, '');
    this.apiKey = options.apiKey ?? null;
    this.headers = { ...(options.headers || {}) };
    // Called through a wrapper so that the browser's fetch is never invoked with `this` set to the client.
    const f = options.fetch;
    this.fetch = f ? (...args) => f(...args) : (...args) => globalThis.fetch(...args);
    this.sessionId = options.sessionId ?? this.generateSessionId();
  }

  /** 'session-' and 9 random base-36 characters, as the template. */
  generateSessionId() {
    return 'session-' + randomId(9);
  }

  _url(path, query) {
    let url = this.baseUrl + path;
    if (query) {
      const qs = Object.entries(query)
        .filter(([, v]) => v !== undefined && v !== null)
        .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
        .join('&');
      if (qs) url += '?' + qs;
    }
    return url;
  }

  /** Sends a request; resolves with the Response when 2xx, else throws ChatdError. */
  async _request(method, path, { body, query, signal, requestId, idempotencyKey, accept = 'application/json' } = {}) {
    const headers = { Accept: accept, ...this.headers };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    if (requestId) headers['X-Request-Id'] = requestId;
    if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
    let res;
    try {
      res = await this.fetch(this._url(path, query), {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (e) {
      if ((signal && signal.aborted) || isAbortError(e)) throw signal && signal.aborted ? abortErrorFrom(signal) : e;
      throw new ChatdError(`Cannot reach ${this.baseUrl || 'the server'}: ${e && e.message ? e.message : e}`, {
        status: 0, type: 'network_error', cause: e,
      });
    }
    if (!res.ok) throw await errorFromResponse(res);
    return res;
  }

  async _json(method, path, opts) {
    const res = await this._request(method, path, opts);
    if (res.status === 204) return null;
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }

  static _sid(id) {
    if (typeof id !== 'string' || id === '') throw new TypeError('a session id (non-empty string) is required');
    return encodeURIComponent(id);
  }

  // ---- seed-compatible API (the template's ChatClient) ----

  /** POST /chat: `{response, session_id, timestamp, turn_count}`. */
  async chat(message, options = {}) {
    const body = { message, session_id: options.sessionId ?? this.sessionId };
    if (options.systemPrompt != null) body.system_prompt = options.systemPrompt;
    return this._json('POST', '/chat', { body, signal: options.signal });
  }

  /**
   * POST /chat-stream: calls onChunk with each piece of text as it arrives
   * (UTF-8 decoded across chunk boundaries) and resolves with the whole text.
   * As in the template, an error after the first byte arrives as text ("\nError: ...").
   */
  async chatStream(message, onChunk, options = {}) {
    const body = { message, session_id: options.sessionId ?? this.sessionId };
    if (options.systemPrompt != null) body.system_prompt = options.systemPrompt;
    const res = await this._request('POST', '/chat-stream', { body, signal: options.signal, accept: 'text/plain' });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let full = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        const chunk = decoder.decode(value, { stream: true });
        if (chunk) {
          full += chunk;
          if (onChunk) onChunk(chunk);
        }
      }
      const tail = decoder.decode();
      if (tail) {
        full += tail;
        if (onChunk) onChunk(tail);
      }
    } catch (e) {
      if (options.signal && options.signal.aborted) throw abortErrorFrom(options.signal);
      throw e;
    }
    return full;
  }

  /** GET /history/{id}: `{session_id, messages: [{role, content}], turn_count}`; 404 throws. */
  async getHistory(sessionId = this.sessionId) {
    return this._json('GET', `/history/${ChatClient._sid(sessionId)}`);
  }

  /** POST /reset/{id}: `{status: 'reset', session_id, previous_turns}` or `{status: 'not_found', session_id}`. */
  async reset(sessionId = this.sessionId) {
    return this._json('POST', `/reset/${ChatClient._sid(sessionId)}`);
  }

  /** DELETE /history/{id}: `{status: 'cleared'|'not_found', session_id}`. */
  async clearHistory(sessionId = this.sessionId) {
    return this._json('DELETE', `/history/${ChatClient._sid(sessionId)}`);
  }

  // ---- /v1 ----

  _turnBody(message, o) {
    const body = {};
    // A string is the message; an array is content (text and image blocks);
    // null/undefined sends neither (a turn of toolResults only).
    if (Array.isArray(message)) body.content = message;
    else if (message != null) body.message = message;
    if (o.content != null) body.content = o.content;
    if (o.toolResults != null) body.tool_results = o.toolResults;
    const sid = o.sessionId === undefined ? this.sessionId : o.sessionId;
    if (sid != null) body.session_id = sid;
    if (o.systemPrompt != null) body.system_prompt = o.systemPrompt;
    if (o.model != null && o.model !== '') body.model = o.model;
    if (o.maxTokens != null) body.max_tokens = o.maxTokens;
    for (const [k, field] of Object.entries(TURN_OPTIONS)) if (o[k] != null) body[field] = o[k];
    if (o.params) Object.assign(body, o.params); // any other body field, by its wire name
    return body;
  }

  /**
   * POST /v1/chat: one turn, the whole reply at once.
   * message: a string, or an array of text and image blocks (textBlock, imageBlock), or null with toolResults.
   * Options: sessionId (default this.sessionId; null lets the server make one), systemPrompt, model, maxTokens,
   * signal, requestId, idempotencyKey (the server replays the stored answer for a repeated key); toolResults
   * (toolResult(...) for each call of the previous reply), tools, toolChoice, temperature, topP, topK, stop, seed,
   * presencePenalty, frequencyPenalty, logitBias, logprobs, topLogprobs, user, parallelToolCalls, responseFormat,
   * thinking, reasoningEffort, truncation, and params (other body fields by their wire names).
   * The result has `usage`, `content` (blocks), `tool_calls` ([{id, name, input}]) and, from servers that price
   * turns, `cost: {micros, usd}`.
   */
  async send(message, options = {}) {
    return this._json('POST', '/v1/chat', {
      body: this._turnBody(message, options), signal: options.signal, requestId: options.requestId,
      idempotencyKey: options.idempotencyKey,
    });
  }

  /**
   * POST /v1/chat/stream: one turn, streamed. Same options as send(), plus the callbacks
   * onStart(data), onDelta(text, fullText), onThinking(text, fullThinking), onToolCallDelta(data),
   * onToolCall({id, name, input}), onDone(result), onError(err), onPing().
   * @returns {ChatStream}
   */
  stream(message, options = {}) {
    return new ChatStream(this, this._turnBody(message, options), options);
  }

  /**
   * A whole tool loop on one session: sends message with `tools`, and while the
   * reply calls tools (non-empty tool_calls; stop_reason is the provider's word,
   * "tool_use" or "tool_calls") runs each call's handler
   * (handlers[name](input, call), may be async; a missing handler or a throw is
   * sent back as an error result) and sends the results, up to maxRounds turns.
   * Resolves with the last reply (plus `rounds`, the turns it took). Other
   * options as send(); onToolCall(call) and onToolResult(call, result) observe.
   */
  async runTools(message, { tools, handlers = {}, maxRounds = 8, onToolCall, onToolResult, ...options } = {}) {
    const sessionId = options.sessionId === undefined ? this.sessionId : options.sessionId;
    let reply = await this.send(message, { ...options, sessionId, tools });
    let rounds = 1;
    while (Array.isArray(reply.tool_calls) && reply.tool_calls.length > 0) {
      if (rounds >= maxRounds) throw new ChatdError(`runTools: still calling tools after ${maxRounds} turns`, { type: 'tool_loop_limit' });
      const results = [];
      for (const call of reply.tool_calls) {
        if (onToolCall) onToolCall(call);
        const fn = handlers[call.name];
        let r;
        try {
          if (typeof fn !== 'function') throw new Error(`no handler for tool ${call.name}`);
          r = toolResult(call.id, await fn(call.input, call));
        } catch (e) {
          r = toolResult(call.id, String(e && e.message ? e.message : e), { isError: true });
        }
        if (onToolResult) onToolResult(call, r);
        results.push(r);
      }
      const { idempotencyKey, requestId, ...rest } = options; // one per request, not per loop
      void idempotencyKey;
      void requestId;
      reply = await this.send(null, { ...rest, sessionId: reply.session_id, tools, toolResults: results });
      rounds++;
    }
    return { ...reply, rounds };
  }

  /** GET /v1/sessions: one page, `{data: [session], next_cursor}` (newest first). */
  async listSessions({ limit, cursor, signal } = {}) {
    return this._json('GET', '/v1/sessions', { query: { limit, cursor }, signal });
  }

  /** Every session, newest first, following next_cursor page by page. */
  async *sessions({ limit = 100, signal } = {}) {
    let cursor = null;
    do {
      const page = await this.listSessions({ limit, cursor, signal });
      for (const s of page.data) yield s;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** GET /v1/sessions/{id}. */
  async getSession(sessionId = this.sessionId, { signal } = {}) {
    return this._json('GET', `/v1/sessions/${ChatClient._sid(sessionId)}`, { signal });
  }

  /** DELETE /v1/sessions/{id}; resolves true (404 throws). */
  async deleteSession(sessionId = this.sessionId, { signal } = {}) {
    await this._json('DELETE', `/v1/sessions/${ChatClient._sid(sessionId)}`, { signal });
    return true;
  }

  /** POST /v1/sessions/{id}/reset: `{session_id, previous_turns}`. */
  async resetSession(sessionId = this.sessionId, { signal } = {}) {
    return this._json('POST', `/v1/sessions/${ChatClient._sid(sessionId)}/reset`, { signal });
  }

  /** GET /v1/sessions/{id}/messages: one page, `{data: [message], has_more}`. */
  async listMessages(sessionId = this.sessionId, { after, limit, signal } = {}) {
    return this._json('GET', `/v1/sessions/${ChatClient._sid(sessionId)}/messages`, {
      query: { after, limit }, signal,
    });
  }

  /** Every message of a session, oldest first, page by page. */
  async *messages(sessionId = this.sessionId, { limit = 100, signal } = {}) {
    let after = 0;
    for (;;) {
      const page = await this.listMessages(sessionId, { after, limit, signal });
      for (const m of page.data) yield m;
      if (!page.has_more || page.data.length === 0) break;
      after = page.data[page.data.length - 1].seq;
    }
  }

  /** GET /v1/stats. */
  async stats({ signal } = {}) {
    return this._json('GET', '/v1/stats', { signal });
  }

  /**
   * GET /v1/models: `{data: [model], ...}` with each model's `pricing` normalized
   * (USD per million tokens, or null when the server gives no price); null when
   * the server has no models endpoint (older chatd).
   */
  async models({ signal } = {}) {
    let body;
    try {
      body = await this._json('GET', '/v1/models', { signal });
    } catch (e) {
      if (e instanceof ChatdError && (e.status === 404 || e.status === 405)) return null;
      throw e;
    }
    const list = Array.isArray(body) ? body : body && (body.data || body.models);
    if (!Array.isArray(list)) return null;
    const data = list.map((m) => (typeof m === 'string' ? { id: m } : m)).map((m) => ({ ...m, pricing: pricingOf(m) }));
    let def = body && !Array.isArray(body) && typeof body.default === 'string' ? body.default : null;
    if (!def) def = (data.find((m) => m.default === true) || {}).id ?? null;
    return { ...(Array.isArray(body) ? {} : body), data, default: def };
  }

  /**
   * POST /v1/estimate: what the token counts of `usage` cost on each model, priced
   * by the server (`{usage, data: [{model, provider, cost: {micros, usd}}]}`);
   * null when the server has no estimate endpoint (older chatd).
   * `models` restricts the answer to these model ids.
   */
  async estimate(usage, { models, signal } = {}) {
    const u = usage || {};
    const body = {};
    for (const k of ['input_tokens', 'output_tokens', 'cache_read_input_tokens', 'cache_creation_input_tokens']) {
      if (u[k] != null) body[k] = u[k];
    }
    if (models) body.models = models;
    try {
      return await this._json('POST', '/v1/estimate', { body, signal });
    } catch (e) {
      if (e instanceof ChatdError && (e.status === 404 || e.status === 405)) return null;
      throw e;
    }
  }

  /**
   * What the token counts of `usage` would cost on each listed model that has
   * prices, computed here from the /v1/models prices: `[{model, microUsd, usd}]`,
   * or null when the server lists no prices. Pass `models` (the result of
   * models()) to avoid fetching them again. estimate() asks the server instead.
   */
  async estimateCosts(usage, { models, signal } = {}) {
    const list = models === undefined ? await this.models({ signal }) : models;
    if (!list) return null;
    const priced = list.data.filter((m) => m.pricing);
    if (priced.length === 0) return null;
    return priced.map((m) => ({ model: m.id, ...costOf(usage, m.pricing) }));
  }

  /** GET /healthz: `{status: 'ok'}`. */
  async health({ signal } = {}) {
    return this._json('GET', '/healthz', { signal });
  }
}

export default ChatClient;
