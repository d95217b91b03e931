// errors.js: the one error type of the chatd client (ChatdError), built from
// any failed HTTP response (the /v1 `{"error": {...}}` shape, the seed
// FastAPI `{"detail": ...}` shape, or a proxy's HTML page), from an `error`
// event in a stream, or from a network failure; and describeError(), which says
// what went wrong in words a person wants to read.

/** Status that an /v1 error type stands for (used for `event: error` in a stream, which arrives on a 200). */
const STATUS_OF_TYPE = {
  invalid_request_error: 400,
  authentication_error: 401,
  permission_error: 403,
  not_found_error: 404,
  method_not_allowed: 405,
  session_busy: 409,
  request_too_large: 413,
  rate_limit_error: 429,
  rate_limited: 429,
  internal_error: 500,
  provider_error: 502,
  provider_auth_error: 502,
  provider_not_configured: 503,
  provider_overloaded: 503,
  provider_timeout: 504,
};

/** Type used when a response carries none (seed errors, proxies). */
const TYPE_OF_STATUS = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  405: 'method_not_allowed',
  409: 'session_busy',
  413: 'request_too_large',
  422: 'invalid_request_error',
  429: 'rate_limit_error',
  500: 'internal_error',
  502: 'provider_error',
  503: 'service_unavailable',
  504: 'provider_timeout',
};

export class ChatdError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, type?: string, requestId?: string|null, retryAfter?: number|null,
   *          rateLimit?: object|null, body?: any, cause?: any, inStream?: boolean}} [info]
   */
  constructor(message, info = {}) {
    super(message, info.cause !== undefined ? { cause: info.cause } : undefined);
    this.name = 'ChatdError';
    /** HTTP status; for an `error` event inside a stream, the status the type stands for; 0 for network errors. */
    this.status = info.status ?? 0;
    /** The /v1 error type (`rate_limit_error`, `provider_overloaded`, ...), or one derived from the status. */
    this.type = info.type || TYPE_OF_STATUS[this.status] || (this.status === 0 ? 'network_error' : 'http_error');
    this.requestId = info.requestId ?? null;
    /** Seconds to wait before retrying (Retry-After), or null. */
    this.retryAfter = info.retryAfter ?? null;
    /** RateLimit-Limit / -Remaining / -Reset when the server sent them, or null. */
    this.rateLimit = info.rateLimit ?? null;
    /** The parsed error body (or its text when it was not JSON). */
    this.body = info.body ?? null;
    /** True when the error came as an `event: error` after the stream had started. */
    this.inStream = Boolean(info.inStream);
  }
}

/** Seconds from a Retry-After value (delta-seconds or an HTTP date), or null. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value == null || value === '') return null;
  const s = String(value).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.ceil(Number(s));
  const t = Date.parse(s);
  if (Number.isNaN(t)) return null;
  return Math.max(0, Math.ceil((t - now) / 1000));
}

function parseRateLimit(headers) {
  const num = (name) => {
    const v = headers.get(name);
    if (v == null) return null;
    const n = Number(String(v).split(/[;,]/)[0].trim());
    return Number.isFinite(n) ? n : null;
  };
  const rl = { limit: num('ratelimit-limit'), remaining: num('ratelimit-remaining'), reset: num('ratelimit-reset') };
  return rl.limit == null && rl.remaining == null && rl.reset == null ? null : rl;
}

function seedDetailMessage(detail) {
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    // FastAPI 422: [{loc: ["body", "message"], msg: "Field required"}, ...]
    return detail
      .map((d) => {
        const loc = Array.isArray(d?.loc) ? d.loc.filter((p) => p !== 'body').join('.') : '';
        return loc ? `${loc}: ${d?.msg ?? 'invalid'}` : String(d?.msg ?? 'invalid');
      })
      .join('; ');
  }
  return JSON.stringify(detail);
}

/**
 * Builds a ChatdError from a non-2xx Response; reads (and so consumes) its body.
 * @param {Response} res
 * @returns {Promise<ChatdError>}
 */
export async function errorFromResponse(res) {
  let text = '';
  try {
    text = await res.text();
  } catch {
    text = '';
  }
  let body = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  let type;
  let message;
  let requestId = res.headers.get('x-request-id');
  if (body && typeof body === 'object' && body.error && typeof body.error === 'object') {
    type = body.error.type;
    message = body.error.message;
    requestId = body.error.request_id || requestId;
  } else if (body && typeof body === 'object' && 'detail' in body) {
    message = seedDetailMessage(body.detail);
  } else if (typeof body === 'string' && body.trim()) {
    // A proxy's page: keep it short, without markup.
    message = body.replace(/<[^>]*>/g, ' ').replace(/\s+/g, ' ').trim().slice(0, 200);
  }
  if (!message) message = `HTTP ${res.status}${res.statusText ? ' ' + res.statusText : ''}`;
  return new ChatdError(message, {
    status: res.status,
    type,
    requestId,
    retryAfter: parseRetryAfter(res.headers.get('retry-after')),
    rateLimit: parseRateLimit(res.headers),
    body,
  });
}

/** Builds a ChatdError from the data of an SSE `error` event. */
export function errorFromEvent(data, requestId) {
  const type = (data && data.type) || 'provider_error';
  return new ChatdError((data && data.message) || type, {
    status: STATUS_OF_TYPE[type] ?? 502,
    type,
    requestId: (data && data.request_id) || requestId || null,
    retryAfter: data && data.retry_after != null ? parseRetryAfter(data.retry_after) : null,
    body: data,
    inStream: true,
  });
}

/** True for the error an aborted request rejects with (AbortController.abort()). */
export function isAbortError(err) {
  return Boolean(err) && (err.name === 'AbortError' || (err.name === 'ChatdError' && err.type === 'aborted'));
}

/**
 * A sentence for a person, for any error the client can throw.
 * @param {any} err
 * @returns {string}
 */
export function describeError(err) {
  if (isAbortError(err)) return 'Stopped.';
  if (!(err instanceof ChatdError)) return `Something went wrong: ${err && err.message ? err.message : String(err)}`;
  const wait = err.retryAfter != null ? `try again in ${err.retryAfter} s` : 'try again in a moment';
  // chatd's own gate (API keys, rate limits) and the provider's limits read the same to a person.
  if (err.status === 401) return 'Not authorised: check your API key (Settings).';
  if (err.status === 429) return `Rate limited: ${wait}.`;
  switch (err.type) {
    case 'network_error':
      return 'Cannot reach the chatd server: check that it is running and that the address is right.';
    case 'permission_error':
      return 'This API key is not allowed to do that.';
    case 'rate_limit_error':
    case 'rate_limited':
      return `Rate limited: ${wait}.`;
    case 'provider_not_configured':
      return 'The server has no provider API key configured, so it cannot answer. Ask its operator to set one ' +
        '(for Anthropic: ANTHROPIC_API_KEY).';
    case 'provider_overloaded':
      return `The model provider is overloaded right now: ${wait}.`;
    case 'provider_auth_error':
      return "The model provider rejected the server's own API key: the server's operator must fix its configuration.";
    case 'provider_timeout':
      return 'The model provider took too long to answer: try again, perhaps with a shorter request.';
    case 'provider_error':
      return 'The model provider failed to answer (bad gateway): try again.';
    case 'session_busy':
      return 'This conversation is still answering a previous message: wait for it, or stop it first.';
    case 'request_too_large':
      return 'The message is too large for this server.';
    case 'not_found_error':
      return 'Not found: this conversation no longer exists on the server.';
    case 'internal_error':
      return `The server hit an internal error${err.requestId ? ` (request ${err.requestId})` : ''}: try again later.`;
    case 'invalid_request_error':
      return `The server refused the request: ${err.message}`;
    case 'stream_truncated':
      return 'The connection was cut before the reply finished: nothing was saved, try again.';
    default:
      break;
  }
  if (err.status === 503) return `The service is unavailable right now: ${wait}.`;
  if (err.status === 502 || err.status === 504) return 'The server could not get an answer in time: try again.';
  return `Error ${err.status}: ${err.message}`;
}
