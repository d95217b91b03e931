// Types of @chatd/client (src/chatd.js, src/errors.js, src/sse.js).

export declare const VERSION: string;

/** Token counts of a turn, a session or a key; a count is null when the provider did not report it. */
export interface Usage {
  input_tokens: number | null;
  output_tokens: number | null;
  cache_read_input_tokens: number | null;
  cache_creation_input_tokens: number | null;
  /** /v1 turns: the part of output_tokens spent thinking, when the provider reported it. */
  reasoning_tokens?: number;
}

// ---- content blocks (the canonical shape: docs/API.md "Tools, images and options") ----

export interface TextBlock {
  type: 'text';
  text: string;
  cache_control?: object;
}

export type ImageMediaType = 'image/png' | 'image/jpeg' | 'image/gif' | 'image/webp';

export interface ImageBlock {
  type: 'image';
  source: { type: 'base64'; media_type: ImageMediaType; data: string } | { type: 'url'; url: string };
  cache_control?: object;
}

export interface ToolUseBlock {
  type: 'tool_use';
  id: string;
  name: string;
  input: Record<string, unknown>;
}

export interface ToolResultBlock {
  type: 'tool_result';
  tool_use_id: string;
  content?: string | (TextBlock | ImageBlock)[];
  is_error?: boolean;
}

export interface ThinkingBlock {
  type: 'thinking';
  thinking: string;
  signature?: string;
}

export interface RedactedThinkingBlock {
  type: 'redacted_thinking';
  data: string;
}

export type ContentBlock = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock;

/** What a user turn may send as content. */
export type UserContent = (TextBlock | ImageBlock)[];

/** One call the reply made: answer it with toolResult(call.id, ...). */
export interface ToolCall {
  id: string;
  name: string;
  input: Record<string, unknown>;
}

/** The result of one tool call, for the `toolResults` option. */
export interface ToolResult {
  tool_call_id: string;
  content: string | (TextBlock | ImageBlock)[];
  is_error?: boolean;
}

export interface ToolDefinition {
  name: string;
  description?: string;
  /** JSON Schema of the input; absent: no parameters. */
  input_schema?: Record<string, unknown>;
  strict?: boolean;
}

export type ToolChoice =
  | 'auto' | 'any' | 'none' | 'required'
  | { type: 'auto' | 'any' | 'none' }
  | { type: 'tool'; name: string };

export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; name?: string; schema: Record<string, unknown>; strict?: boolean };

export declare function textBlock(text: string): TextBlock;
export declare function imageBlock(data: string | Uint8Array | ArrayBuffer, mediaType?: ImageMediaType): ImageBlock;
export declare function imageUrlBlock(url: string): ImageBlock;
/** Reads a Blob / File (e.g. from an <input type=file>) into a base64 image block. */
export declare function imageBlockFromBlob(blob: Blob): Promise<ImageBlock>;
/** A tool result; content that is not a string or blocks is sent as its JSON text. */
export declare function toolResult(toolCallId: string, content: unknown, options?: { isError?: boolean }): ToolResult;
export declare function toBase64(bytes: Uint8Array | ArrayBuffer): string;

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
  truncated_turns?: number;
  created_at: string;
  request_id: string;
  /** The reply as blocks (thinking, text, tool_use). */
  content: ContentBlock[];
  /** The reply's tool calls ([] when none; stop_reason is then the provider's word: "tool_use" or "tool_calls"). */
  tool_calls: ToolCall[];
  stop_sequence: string | null;
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
  truncated_turns?: number;
  content: ContentBlock[];
  tool_calls: ToolCall[];
  stop_sequence: string | null;
}

/** A piece of a streamed tool call: the first has id and name, the next ones pieces of the arguments' JSON. */
export interface ToolCallDeltaData {
  index: number;
  id?: string;
  name?: string;
  arguments_delta: string;
}

/** What a finished stream resolves with: the `done` data, the whole reply text and the request id. */
export interface StreamResult extends DoneEventData {
  text: string;
  request_id: string | null;
}

export type StreamEvent =
  | { type: 'start'; data: StartEventData }
  | { type: 'delta'; text: string; data: { text: string } }
  | { type: 'thinking'; text: string; data: { text: string } }
  | { type: 'tool_call_delta'; data: ToolCallDeltaData }
  | { type: 'tool_call'; call: ToolCall; data: ToolCall & { index: number } }
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
  /** Present when the message holds more than text (images, tool calls, tool results, thinking). */
  blocks?: ContentBlock[];
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
  /** What a request may use beyond plain text: "tools", "vision", "structured_output", "thinking", "reasoning_effort". */
  features?: string[];
  /** The highest `temperature` the model takes (a higher one is refused, not clamped). */
  temperature_max?: number;
  /** Request options the model refuses. */
  rejects?: string[];
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
  /** Text and image blocks (instead of a string message). */
  content?: UserContent;
  /** The results of the previous reply's tool calls. */
  toolResults?: ToolResult[];
  tools?: ToolDefinition[];
  toolChoice?: ToolChoice;
  parallelToolCalls?: boolean;
  temperature?: number;
  topP?: number;
  topK?: number;
  stop?: string | string[];
  seed?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  logitBias?: Record<string, number>;
  logprobs?: boolean;
  topLogprobs?: number;
  user?: string;
  responseFormat?: ResponseFormat;
  thinking?: { type: 'enabled'; budget_tokens: number } | { type: 'disabled' };
  reasoningEffort?: 'minimal' | 'low' | 'medium' | 'high';
  truncation?: 'auto' | 'reject';
  /** Other body fields, by their wire names. */
  params?: Record<string, unknown>;
}

export type ToolHandler = (input: Record<string, unknown>, call: ToolCall) => unknown | Promise<unknown>;

export interface RunToolsOptions extends TurnOptions {
  tools: ToolDefinition[];
  /** By tool name; the value returned is the result (non-strings sent as JSON); a throw is an error result. */
  handlers: Record<string, ToolHandler>;
  /** At most this many turns (default 8). */
  maxRounds?: number;
  onToolCall?: (call: ToolCall) => void;
  onToolResult?: (call: ToolCall, result: ToolResult) => void;
}

export interface StreamOptions extends TurnOptions {
  onStart?: (data: StartEventData) => void;
  onDelta?: (text: string, fullText: string) => void;
  onThinking?: (text: string, fullThinking: string) => void;
  onToolCallDelta?: (data: ToolCallDeltaData) => void;
  onToolCall?: (call: ToolCall) => void;
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
  /** The thinking so far. */
  thinking: string;
  /** The complete tool calls so far. */
  toolCalls: ToolCall[];
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
  /** message: a string, text and image blocks, or null for a turn of toolResults only. */
  send(message: string | UserContent | null, options?: TurnOptions): Promise<ChatResponse>;
  stream(message: string | UserContent | null, options?: StreamOptions): ChatStream;
  /** A whole tool loop: the final reply, with the number of turns it took. */
  runTools(message: string | UserContent, options: RunToolsOptions): Promise<ChatResponse & { rounds: number }>;
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
