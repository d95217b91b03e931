// Types of @chatd/client (src/chatd.js, src/errors.js, src/sse.js).

export declare const VERSION: string;

/** Token counts of a turn, a session or a key; a count is null when the provider did not report it. */
export interface Usage {
  input_tokens: number | null;
  output_tokens: number | null;
  cache_read_input_tokens: number | null;
  cache_creation_input_tokens: number | null;
}

/** A cost as chatd reports it: exact integer micro-dollars and a 6-decimal USD string. */
export interface Cost {
  micros: number;
  usd: string;
}

// ---- seed-compatible shapes (the FastAPI template) ----

export interface SeedChatResponse {
  response: string;
  session_id: string;
  timestamp: string;
  turn_count: number;
}

export interface SeedHistory {
  session_id: string;
  messages: { role: 'user' | 'assistant'; content: string }[];
  turn_count: number;
}

export type SeedResetResult =
  | { status: 'reset'; session_id: string; previous_turns: number }
  | { status: 'not_found'; session_id: string };

export interface SeedClearResult {
  status: 'cleared' | 'not_found';
  session_id: string;
}

// ---- /v1 shapes ----

export interface ChatResponse {
  id: string;
  session_id: string;
  model: string;
  response: string;
  stop_reason: string | null;
  usage: Usage;
  cost?: Cost;
  turn_count: number;
  created_at: string;
  request_id: string;
}

export interface StartEventData {
  session_id: string;
  model: string;
  request_id: string;
}

export interface DoneEventData {
  id: string;
  session_id: string;
  model: string;
  stop_reason: string | null;
  usage: Usage;
  cost?: Cost;
  turn_count: number;
}

/** What a finished stream resolves with: the `done` data, the whole reply text and the request id. */
export interface StreamResult extends DoneEventData {
  text: string;
  request_id: string | null;
}

export type StreamEvent =
  | { type: 'start'; data: StartEventData }
  | { type: 'delta'; text: string; data: { text: string } }
  | { type: 'done'; data: StreamResult };

export interface Session {
  id: string;
  created_at: string;
  updated_at: string;
  turn_count: number;
  message_count: number;
  model: string | null;
  system_prompt: string | null;
  usage: Usage;
  cost?: Cost;
}

export interface SessionPage {
  data: Session[];
  next_cursor: string | null;
}

export interface Message {
  id: string;
  seq: number;
  role: 'user' | 'assistant';
  content: string;
  status: 'complete' | 'incomplete';
  created_at: string;
  model?: string;
  stop_reason?: string | null;
  usage?: Usage;
  cost?: Cost;
}

export interface MessagePage {
  data: Message[];
  has_more: boolean;
}

export interface Stats {
  sessions: number;
  messages: number;
  turns: number;
  usage: Usage;
  [key: string]: unknown;
}

/** Prices in USD per million tokens. */
export interface Pricing {
  input: number;
  output: number;
  cache_write: number;
  cache_read: number;
}

export interface Model {
  id: string;
  provider?: string;
  model_id?: string;
  context_window?: number;
  max_output?: number;
  available?: boolean;
  default?: boolean;
  fallbacks?: string[];
  /** Normalized from the server's `pricing` (`input_per_mtok`, ...); null when the model has no price. */
  pricing: Pricing | null;
  [key: string]: unknown;
}

export interface ModelList {
  data: Model[];
  default: string | null;
}

export interface EstimateResponse {
  usage: Usage;
  data: { model: string; provider: string; cost: Cost }[];
}

// ---- errors ----

export interface RateLimitInfo {
  limit: number | null;
  remaining: number | null;
  reset: number | null;
}

export declare class ChatdError extends Error {
  name: 'ChatdError';
  /** HTTP status; for an `error` event inside a stream, the status its type stands for; 0 for a network failure. */
  status: number;
  /** `invalid_request_error`, `authentication_error`, `session_busy`, `rate_limit_error`, `provider_overloaded`,
   *  `provider_not_configured`, `provider_timeout`, `network_error`, `stream_truncated`, ... */
  type: string;
  requestId: string | null;
  /** Seconds to wait (Retry-After), or null. */
  retryAfter: number | null;
  rateLimit: RateLimitInfo | null;
  /** The parsed error body, or its text. */
  body: unknown;
  /** True when the error arrived as an `event: error` after the stream had started. */
  inStream: boolean;
  constructor(message: string, info?: {
    status?: number; type?: string; requestId?: string | null; retryAfter?: number | null;
    rateLimit?: RateLimitInfo | null; body?: unknown; cause?: unknown; inStream?: boolean;
  });
}

/** A sentence for a person ("Rate limited: try again in 7 s."), for any error the client throws. */
export declare function describeError(err: unknown): string;
/** True for the error an aborted request rejects with. */
export declare function isAbortError(err: unknown): boolean;
/** Seconds from a Retry-After value (delta-seconds or HTTP date), or null. */
export declare function parseRetryAfter(value: string | null | undefined, now?: number): number | null;

// ---- cost helpers ----

export declare function pricingOf(model: object | null | undefined): Pricing | null;
export declare function costOf(usage: Partial<Usage> | null | undefined, pricing: Pricing): { microUsd: number; usd: number };
export declare function costUsd(cost: Cost | number | null | undefined): number | null;

// ---- SSE ----

export interface SSEEvent {
  event: string;
  data: string;
  id: string;
}

export declare class SSEParser {
  constructor(onEvent: (ev: SSEEvent) => void, onComment?: (text: string) => void);
  /** The last valid `retry` field, in milliseconds. */
  retry: number | null;
  push(text: string): void;
  end(): void;
}

export declare function readSSE(
  body: ReadableStream<Uint8Array>,
  opts?: { onComment?: (text: string) => void },
): AsyncGenerator<SSEEvent, void, undefined>;

// ---- client ----

export interface ClientOptions {
  /** Sent as `Authorization: Bearer <apiKey>`. Can be changed later through `client.apiKey`. */
  apiKey?: string | null;
  /** A fetch implementation (tests, proxies); default: the global fetch. */
  fetch?: typeof fetch;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /** The session of the template-style methods; default: a new `session-xxxxxxxxx`. */
  sessionId?: string;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface TurnOptions extends RequestOptions {
  /** Default: `client.sessionId`; null lets the server create one (returned in the response). */
  sessionId?: string | null;
  systemPrompt?: string;
  model?: string;
  maxTokens?: number;
  /** Sent as X-Request-Id. */
  requestId?: string;
  /** Sent as Idempotency-Key: a retried request with the same key gets the stored answer. */
  idempotencyKey?: string;
}

export interface StreamOptions extends TurnOptions {
  onStart?: (data: StartEventData) => void;
  onDelta?: (text: string, fullText: string) => void;
  onDone?: (result: StreamResult) => void;
  onError?: (err: ChatdError | Error) => void;
  /** Called for each `: ping` heartbeat comment. */
  onPing?: () => void;
}

export declare class ChatStream implements AsyncIterable<StreamEvent> {
  /** The session of the turn (known from the request or the `start` event). */
  sessionId: string | null;
  model: string | null;
  requestId: string | null;
  /** The reply so far. */
  text: string;
  usage: Usage | null;
  doneData: DoneEventData | null;
  readonly signal: AbortSignal;
  /** Stops the turn: closes the connection; the iterator and result() reject with an AbortError. */
  abort(reason?: unknown): void;
  [Symbol.asyncIterator](): AsyncIterator<StreamEvent>;
  /** Consumes the stream (running the callbacks) and resolves with the result. */
  result(): Promise<StreamResult>;
}

export declare class ChatClient {
  constructor(baseUrl?: string, options?: ClientOptions);
  baseUrl: string;
  apiKey: string | null;
  sessionId: string;
  headers: Record<string, string>;
  generateSessionId(): string;

  // seed-compatible (the template's ChatClient)
  chat(message: string, options?: RequestOptions & { sessionId?: string; systemPrompt?: string }): Promise<SeedChatResponse>;
  chatStream(
    message: string,
    onChunk?: (chunk: string) => void,
    options?: RequestOptions & { sessionId?: string; systemPrompt?: string },
  ): Promise<string>;
  getHistory(sessionId?: string): Promise<SeedHistory>;
  reset(sessionId?: string): Promise<SeedResetResult>;
  clearHistory(sessionId?: string): Promise<SeedClearResult>;

  // /v1
  send(message: string, options?: TurnOptions): Promise<ChatResponse>;
  stream(message: string, options?: StreamOptions): ChatStream;
  listSessions(options?: RequestOptions & { limit?: number; cursor?: string | null }): Promise<SessionPage>;
  sessions(options?: RequestOptions & { limit?: number }): AsyncGenerator<Session, void, undefined>;
  getSession(sessionId?: string, options?: RequestOptions): Promise<Session>;
  deleteSession(sessionId?: string, options?: RequestOptions): Promise<true>;
  resetSession(sessionId?: string, options?: RequestOptions): Promise<{ session_id: string; previous_turns: number }>;
  listMessages(sessionId?: string, options?: RequestOptions & { after?: number; limit?: number }): Promise<MessagePage>;
  messages(sessionId?: string, options?: RequestOptions & { limit?: number }): AsyncGenerator<Message, void, undefined>;
  stats(options?: RequestOptions): Promise<Stats>;
  /** null when the server has no /v1/models. */
  models(options?: RequestOptions): Promise<ModelList | null>;
  /** null when the server has no /v1/estimate. */
  estimate(usage: Partial<Usage>, options?: RequestOptions & { models?: string[] }): Promise<EstimateResponse | null>;
  /** Computed here from /v1/models prices; null when no model has a price. */
  estimateCosts(
    usage: Partial<Usage>,
    options?: RequestOptions & { models?: ModelList | null },
  ): Promise<{ model: string; microUsd: number; usd: number }[] | null>;
  health(options?: RequestOptions): Promise<{ status: string }>;
}

export default ChatClient;
