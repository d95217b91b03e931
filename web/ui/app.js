// app.js: the chatd playground. Talks to the chatd that serves it, through the
// JavaScript client (./lib/chatd.js, the same file as clients/js/src/chatd.js).
// Every text from the server or the model reaches the page as Text nodes or
// through renderMarkdown(), which builds nodes without ever parsing HTML.

import {
  ChatClient, ChatdError, describeError, isAbortError, costOf, costUsd, imageBlockFromBlob, textBlock,
} from './lib/chatd.js';
import { renderMarkdown } from './markdown.mjs';

const $ = (id) => document.getElementById(id);

const KEYS = {
  apiKey: 'chatd.apiKey', model: 'chatd.model', system: 'chatd.systemPrompt', session: 'chatd.lastSession', tools: 'chatd.tools',
};
const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'];
const MAX_IMAGE_BYTES = 5 * 1024 * 1024; // the server's default MAX_IMAGE_SIZE (it answers 413 above its own)
const storage = {
  get(k) {
    try {
      return localStorage.getItem(k);
    } catch {
      return null; // storage disabled: the page still works, it just forgets
    }
  },
  set(k, v) {
    try {
      if (v == null || v === '') localStorage.removeItem(k);
      else localStorage.setItem(k, v);
    } catch {
      /* see get() */
    }
  },
};

const SESSION_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const narrow = window.matchMedia('(max-width: 759px)');

const ui = {
  layout: $('layout'),
  toggle: $('sidebar-toggle'),
  scrim: $('scrim'),
  status: $('status'),
  newSession: $('new-session'),
  sessionList: $('session-list'),
  moreSessions: $('more-sessions'),
  sessionsNote: $('sessions-note'),
  title: $('session-title'),
  reset: $('reset-session'),
  del: $('delete-session'),
  error: $('error'),
  errorText: $('error-text'),
  errorDetail: $('error-detail'),
  errorSettings: $('error-settings'),
  errorDismiss: $('error-dismiss'),
  conversation: $('conversation'),
  composer: $('composer'),
  input: $('composer-input'),
  send: $('send'),
  stop: $('stop'),
  settings: $('settings'),
  apiKey: $('api-key'),
  forgetKey: $('forget-key'),
  model: $('model'),
  modelHelp: $('model-help'),
  system: $('system-prompt'),
  systemHelp: $('system-help'),
  usageSummary: $('usage-summary'),
  costNote: $('cost-note'),
  costTable: $('cost-table'),
  costRows: $('cost-rows'),
  attach: $('attach'),
  attachInput: $('attach-input'),
  attachments: $('attachments'),
  pendingTools: $('pending-tools'),
  pendingToolList: $('pending-tool-list'),
  tools: $('tools'),
};

const client = new ChatClient(window.location.origin, { apiKey: storage.get(KEYS.apiKey) || null });

const state = {
  sessionId: null,
  session: null, // the server's record of the current session, or null while it has none
  models: null, // result of client.models(), or null when the server lists none
  turn: null, // the ChatStream being streamed
  lastTurn: null, // {usage, model} of the last finished turn shown
  nextCursor: null,
  openSeq: 0, // guards against a slow openSession() finishing after a newer one
  attachments: [], // [{name, size, block, url}]: images for the next message
  pendingCalls: [], // [{id, name, input}]: the last reply's tool calls, waiting for their results
  callNames: new Map(), // tool call id -> tool name, to label results
};

// ---------- small helpers ----------

function setStatus(text) {
  ui.status.textContent = text;
}

function fmtInt(n) {
  return n == null ? '?' : Number(n).toLocaleString('en-US'); // null: the provider did not report it
}

/** A stopped reply may carry no usage at all (all counts zero or unknown): nothing worth showing. */
function hasUsage(u) {
  return Boolean(u) && ['input_tokens', 'output_tokens', 'cache_read_input_tokens', 'cache_creation_input_tokens']
    .some((k) => u[k] != null && u[k] !== 0);
}

function fmtUsd(usd) {
  if (usd === 0) return '$0';
  if (usd < 0.01) return '$' + usd.toFixed(6).replace(/0+$/, '');
  return '$' + usd.toFixed(4).replace(/0+$/, '').replace(/\.$/, '');
}

function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : d.toLocaleDateString();
}

function pricingFor(modelId) {
  const m = state.models && state.models.data.find((x) => x.id === modelId);
  return m && m.pricing ? m.pricing : null;
}

function usageLine(usage, model, extra) {
  if (!usage) return '';
  const parts = [`${fmtInt(usage.input_tokens)} in · ${fmtInt(usage.output_tokens)} out tokens`];
  if (usage.cache_creation_input_tokens || usage.cache_read_input_tokens) {
    parts.push(`cache: ${fmtInt(usage.cache_creation_input_tokens)} written, ${fmtInt(usage.cache_read_input_tokens)} read`);
  }
  if (model) parts.push(model);
  const server = costUsd(extra && extra.cost);
  const pricing = pricingFor(model);
  if (server != null) parts.push(fmtUsd(server));
  else if (pricing) parts.push('≈ ' + fmtUsd(costOf(usage, pricing).usd));
  return parts.join(' · ');
}

// ---------- errors ----------

function showError(err, context) {
  const text = describeError(err);
  ui.errorText.textContent = context ? `${context}: ${text}` : text;
  const detail = [];
  if (err instanceof ChatdError) {
    if (err.status) detail.push(`HTTP ${err.status}`);
    if (err.type) detail.push(err.type);
    if (err.requestId) detail.push(`request ${err.requestId}`);
    if (err.message && err.type !== 'invalid_request_error') detail.push(`server said: ${err.message}`);
  }
  ui.errorDetail.textContent = detail.join(' · ');
  ui.errorSettings.hidden = !(err instanceof ChatdError && (err.status === 401 || err.status === 403));
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
  ui.errorText.textContent = '';
  ui.errorDetail.textContent = '';
}

// ---------- content blocks (images, tool calls and results, thinking) ----------

/** A blob: URL for base64 image data (the page's CSP allows blob: images, never data: or remote ones). */
function imageUrlOf(source) {
  if (!source || source.type !== 'base64' || typeof source.data !== 'string') return null;
  try {
    const bin = atob(source.data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return URL.createObjectURL(new Blob([bytes], { type: source.media_type || 'application/octet-stream' }));
  } catch {
    return null;
  }
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text != null) e.textContent = text;
  return e;
}

function imageNode(block) {
  const src = block.source || {};
  const url = imageUrlOf(src);
  if (!url) return el('div', 'image-ref', src.type === 'url' ? `Image: ${src.url}` : 'Image');
  const img = el('img', 'thumb');
  img.src = url;
  img.alt = `Attached image (${src.media_type || 'image'})`;
  img.decoding = 'async';
  return img;
}

function prettyJson(v) {
  try {
    return JSON.stringify(v, null, 2);
  } catch {
    return String(v);
  }
}

/** A tool call, readable: the tool's name, its id and its input as indented JSON. */
function toolCallNode(call) {
  if (call.id && call.name) state.callNames.set(call.id, call.name);
  const box = el('div', 'tool-call');
  box.setAttribute('role', 'group');
  const head = el('div', 'tool-head');
  head.append(el('span', 'tool-label', 'Tool call'), el('code', 'tool-name', call.name || '?'), el('span', 'tool-id', call.id || ''));
  box.setAttribute('aria-label', `Tool call ${call.name || ''}`);
  const pre = el('pre', 'tool-json', prettyJson(call.input ?? {}));
  box.append(head, pre);
  return box;
}

/** A tool result: which call it answers, its text (and images), marked when it is an error. */
function toolResultNode(block) {
  const box = el('div', block.is_error ? 'tool-result error' : 'tool-result');
  box.setAttribute('role', 'group');
  const name = state.callNames.get(block.tool_use_id);
  box.setAttribute('aria-label', `Tool result${name ? ` of ${name}` : ''}`);
  const head = el('div', 'tool-head');
  head.append(el('span', 'tool-label', block.is_error ? 'Tool error' : 'Tool result'));
  if (name) head.append(el('code', 'tool-name', name));
  head.append(el('span', 'tool-id', block.tool_use_id || ''));
  box.appendChild(head);
  const c = block.content;
  if (typeof c === 'string') box.appendChild(el('pre', 'tool-json', c));
  else if (Array.isArray(c)) {
    for (const b of c) {
      if (b.type === 'text') box.appendChild(el('pre', 'tool-json', b.text));
      else if (b.type === 'image') box.appendChild(imageNode(b));
    }
  }
  return box;
}

function thinkingNode(text) {
  const d = el('details', 'thinking');
  d.append(el('summary', null, 'Thinking'), el('div', 'thinking-text', text));
  return d;
}

/** Renders canonical blocks into container: text (markdown for the assistant), images, tools, thinking. */
function renderBlocks(container, blocks, role) {
  const nodes = [];
  for (const b of blocks) {
    if (!b || typeof b !== 'object') continue;
    if (b.type === 'text') {
      if (role === 'user') nodes.push(el('div', 'text-block', b.text));
      else {
        const d = el('div', 'text-block');
        d.appendChild(renderMarkdown(b.text, document));
        nodes.push(d);
      }
    } else if (b.type === 'image') nodes.push(imageNode(b));
    else if (b.type === 'tool_use') nodes.push(toolCallNode(b));
    else if (b.type === 'tool_result') nodes.push(toolResultNode(b));
    else if (b.type === 'thinking') nodes.push(thinkingNode(b.thinking));
    else if (b.type === 'redacted_thinking') nodes.push(el('div', 'image-ref', 'Thinking (redacted by the provider)'));
  }
  container.replaceChildren(...nodes);
}

// ---------- conversation ----------

function addMessage(role, text, info = {}) {
  const li = document.createElement('li');
  li.className = `msg ${role}`;
  const who = document.createElement('div');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Assistant';
  const content = document.createElement('div');
  content.className = role === 'user' ? 'content plain' : 'content';
  const meta = document.createElement('div');
  meta.className = 'usage';
  meta.hidden = true;
  const note = document.createElement('div');
  note.className = 'note';
  note.hidden = true;
  const extras = document.createElement('div'); // thinking and tool calls while a reply streams
  extras.className = 'extras';
  li.append(who, content, extras, note, meta);
  ui.conversation.appendChild(li);

  let thinking = null;
  const view = {
    li,
    setText(t) {
      if (role === 'user') content.textContent = t;
      else content.replaceChildren(renderMarkdown(t, document));
    },
    /** The whole message from its blocks (replaces the streamed text and extras). */
    setBlocks(blocks) {
      content.className = 'content blocks';
      renderBlocks(content, blocks, role);
      extras.replaceChildren();
      thinking = null;
    },
    setThinking(t) {
      if (!thinking) {
        thinking = thinkingNode('');
        extras.prepend(thinking);
      }
      thinking.querySelector('.thinking-text').textContent = t;
    },
    addToolCall(call) {
      extras.appendChild(toolCallNode(call));
    },
    setUsage(usage, model, extra) {
      const line = usageLine(usage, model, extra);
      meta.textContent = line;
      meta.hidden = !line;
    },
    setNote(t) {
      note.textContent = t || '';
      note.hidden = !t;
    },
  };
  if (Array.isArray(info.blocks) && info.blocks.length) view.setBlocks(info.blocks);
  else view.setText(text);
  if (info.usage) view.setUsage(info.usage, info.model, info.extra);
  if (info.note) view.setNote(info.note);
  return view;
}

// The conversation scrolls inside its own box on wide screens and with the page on a phone.
function nearBottom() {
  const c = ui.conversation;
  if (c.scrollHeight > c.clientHeight + 1) return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
  const d = document.documentElement;
  return window.innerHeight + window.scrollY >= d.scrollHeight - 200;
}

function scrollToEnd() {
  const last = ui.conversation.lastElementChild;
  if (last) last.scrollIntoView({ block: 'end' });
}

function setStreaming(on) {
  ui.send.disabled = on;
  ui.attach.disabled = on;
  ui.stop.disabled = !on;
  ui.conversation.setAttribute('aria-busy', on ? 'true' : 'false');
  ui.reset.disabled = on || !state.session;
  ui.del.disabled = on || !state.session;
}

/** The tools of Settings, parsed; undefined when empty; throws a message when not a JSON array. */
function toolsSetting() {
  const raw = ui.tools.value.trim();
  if (!raw) return undefined;
  let v;
  try {
    v = JSON.parse(raw);
  } catch (e) {
    throw new Error(`Tools (Settings) is not valid JSON: ${e.message}`);
  }
  if (!Array.isArray(v)) throw new Error('Tools (Settings) must be a JSON array of {name, description, input_schema}.');
  return v;
}

// ---------- attachments and pending tool calls ----------

function renderAttachments() {
  const items = state.attachments.map((a, i) => {
    const li = el('li', 'attachment');
    const img = el('img', 'thumb small');
    img.src = a.url;
    img.alt = `Attached image ${a.name}`;
    const name = el('span', 'attachment-name', `${a.name} (${Math.max(1, Math.round(a.size / 1024))} KB)`);
    const rm = el('button', 'remove', 'Remove');
    rm.type = 'button';
    rm.setAttribute('aria-label', `Remove ${a.name}`);
    rm.addEventListener('click', () => {
      URL.revokeObjectURL(a.url);
      state.attachments.splice(i, 1);
      renderAttachments();
      ui.input.focus();
    });
    li.append(img, name, rm);
    return li;
  });
  ui.attachments.replaceChildren(...items);
  ui.attachments.hidden = items.length === 0;
}

async function attachFiles(files) {
  hideError();
  for (const f of files) {
    if (!IMAGE_TYPES.includes(f.type)) {
      showError(new Error(`${f.name}: only PNG, JPEG, GIF and WebP images can be attached.`));
      continue;
    }
    if (f.size > MAX_IMAGE_BYTES) {
      showError(new Error(`${f.name} is larger than 5 MB, the server's limit for one image.`));
      continue;
    }
    const block = await imageBlockFromBlob(f);
    state.attachments.push({ name: f.name, size: f.size, block, url: URL.createObjectURL(f) });
  }
  renderAttachments();
  if (state.attachments.length) setStatus(`${state.attachments.length} image${state.attachments.length === 1 ? '' : 's'} attached`);
}

function clearAttachments() {
  for (const a of state.attachments) URL.revokeObjectURL(a.url);
  state.attachments = [];
  renderAttachments();
}

/** Shows a result box for each tool call of the last reply (or hides the section). */
function setPendingCalls(calls) {
  state.pendingCalls = calls || [];
  const items = state.pendingCalls.map((call, i) => {
    const li = el('li', 'pending-call');
    const id = `tool-result-${i}`;
    const label = el('label', null);
    label.htmlFor = id;
    let args = '';
    try {
      args = JSON.stringify(call.input ?? {});
    } catch {
      /* shown without its input */
    }
    label.append('Result of ', el('code', null, call.name), ` ${args}`);
    const ta = el('textarea', 'tool-result-input');
    ta.id = id;
    ta.rows = 2;
    ta.dataset.callId = call.id;
    const err = el('label', 'tool-error-flag');
    const box = el('input');
    box.type = 'checkbox';
    box.className = 'tool-is-error';
    err.append(box, ' the tool failed');
    li.append(label, ta, err);
    return li;
  });
  ui.pendingToolList.replaceChildren(...items);
  ui.pendingTools.hidden = items.length === 0;
}

function pendingResults() {
  return [...ui.pendingToolList.querySelectorAll('li.pending-call')].map((li) => {
    const ta = li.querySelector('textarea');
    const r = { tool_call_id: ta.dataset.callId, content: ta.value };
    if (li.querySelector('.tool-is-error').checked) r.is_error = true;
    return r;
  });
}

async function sendMessage() {
  const text = ui.input.value;
  const toolResults = state.pendingCalls.length ? pendingResults() : null;
  const images = state.attachments.slice();
  if ((!text.trim() && !images.length && !toolResults) || state.turn) return;
  hideError();
  const opts = {};
  if (ui.model.value) opts.model = ui.model.value;
  if (!state.session && ui.system.value.trim()) opts.systemPrompt = ui.system.value;
  try {
    opts.tools = toolsSetting();
  } catch (e) {
    showError(e);
    ui.settings.open = true;
    ui.tools.focus();
    return;
  }
  if (toolResults) opts.toolResults = toolResults;
  // A string, or text and image blocks when images are attached.
  let message = text.trim() ? text : null;
  if (images.length) message = [...(text.trim() ? [textBlock(text)] : []), ...images.map((a) => a.block)];
  const userBlocks = [
    ...(toolResults || []).map((r) => ({ type: 'tool_result', tool_use_id: r.tool_call_id, content: r.content, is_error: r.is_error })),
    ...(Array.isArray(message) ? message : message != null ? [textBlock(message)] : []),
  ];

  const userView = addMessage('user', text, { blocks: images.length || toolResults ? userBlocks : null });
  const reply = addMessage('assistant', '');
  reply.li.classList.add('streaming');
  ui.input.value = '';
  clearAttachments();
  setPendingCalls([]);
  scrollToEnd();
  setStreaming(true);
  setStatus('Waiting for the model…');

  let pending = null;
  let frame = 0;
  const flush = () => {
    frame = 0;
    if (pending == null) return;
    const stick = nearBottom();
    reply.setText(pending);
    pending = null;
    if (stick) scrollToEnd();
  };
  const t0 = performance.now();
  const turn = client.stream(message, {
    ...opts,
    sessionId: state.sessionId,
    onStart: () => setStatus('Streaming the reply…'),
    onDelta: (_t, full) => {
      pending = full;
      if (!frame) frame = requestAnimationFrame(flush);
    },
    onThinking: (_t, full) => reply.setThinking(full),
    onToolCall: (call) => {
      reply.addToolCall(call);
      if (nearBottom()) scrollToEnd();
    },
  });
  state.turn = turn;
  try {
    const done = await turn.result();
    if (frame) cancelAnimationFrame(frame);
    pending = done.text;
    flush();
    reply.li.classList.remove('streaming');
    if (Array.isArray(done.content) && done.content.some((b) => b.type !== 'text')) reply.setBlocks(done.content);
    reply.setUsage(done.usage, done.model, done);
    state.lastTurn = { usage: done.usage, model: done.model, extra: done };
    const calls = Array.isArray(done.tool_calls) ? done.tool_calls : [];
    if (calls.length) {
      setPendingCalls(calls);
      setStatus(`The model called ${calls.length} tool${calls.length === 1 ? '' : 's'}: enter the result${calls.length === 1 ? '' : 's'} and Send`);
    } else {
      setStatus(`Done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
    await afterTurn();
  } catch (err) {
    if (frame) cancelAnimationFrame(frame);
    if (turn.text) {
      pending = turn.text;
      flush();
    }
    reply.li.classList.remove('streaming');
    if (isAbortError(err)) {
      reply.setNote(turn.text ? 'Stopped. The part received so far is kept in the history, marked incomplete.'
        : 'Stopped before the reply started.');
      setStatus('Stopped');
      await afterTurn();
    } else {
      if (turn.text) {
        reply.setNote('The reply failed midway and was not saved.');
      } else {
        reply.li.remove();
      }
      userView.setNote('Not saved: the server kept nothing of this turn.');
      if (!ui.input.value) ui.input.value = text; // ready to try again
      if (!state.attachments.length && images.length) {
        state.attachments = images.map((a) => ({ ...a, url: imageUrlOf(a.block.source) || '' })); // ready to try again
        renderAttachments();
      }
      if (toolResults && !state.pendingCalls.length) {
        setPendingCalls(toolResults.map((r) => ({ id: r.tool_call_id, name: state.callNames.get(r.tool_call_id) || '?', input: {} })));
        [...ui.pendingToolList.querySelectorAll('textarea')].forEach((ta, i) => {
          ta.value = typeof toolResults[i].content === 'string' ? toolResults[i].content : '';
        });
      }
      showError(err);
      setStatus('Failed');
    }
  } finally {
    state.turn = null;
    setStreaming(false);
    const a = document.activeElement;
    if (!a || a === document.body || a === ui.stop) ui.input.focus();
  }
}

/** After a turn: the session record (totals, system prompt) and the sidebar. */
async function afterTurn() {
  try {
    state.session = await client.getSession(state.sessionId);
  } catch (err) {
    if (!(err instanceof ChatdError && err.status === 404)) showError(err, 'Could not reload the session');
  }
  applySession();
  updateCosts();
  refreshSessions();
}

// ---------- sessions ----------

function parseHash() {
  const m = /^#session=(.+)$/.exec(window.location.hash);
  if (!m) return null;
  let id;
  try {
    id = decodeURIComponent(m[1]);
  } catch {
    return null;
  }
  return SESSION_ID.test(id) ? id : null;
}

function setHash(id) {
  const h = '#session=' + encodeURIComponent(id);
  if (window.location.hash !== h) window.history.replaceState(null, '', h);
  storage.set(KEYS.session, id);
}

/** The parts of the page that depend on the current session's record. */
function applySession() {
  const s = state.session;
  ui.title.textContent = s
    ? `Session ${state.sessionId} · ${s.turn_count} turn${s.turn_count === 1 ? '' : 's'}`
    : `Session ${state.sessionId} · new`;
  if (s) {
    ui.system.value = s.system_prompt ?? '';
    ui.system.readOnly = true;
    ui.systemHelp.textContent = "Fixed by this session's first turn. Start a new session to use another system prompt.";
  } else {
    ui.system.value = storage.get(KEYS.system) ?? '';
    ui.system.readOnly = false;
    ui.systemHelp.textContent = 'Used by the first turn of this new session.';
  }
  ui.reset.disabled = !s || Boolean(state.turn);
  ui.del.disabled = !s || Boolean(state.turn);
  if (s && s.model && [...ui.model.options].some((o) => o.value === s.model && !o.disabled)) ui.model.value = s.model;
  for (const b of ui.sessionList.querySelectorAll('button')) {
    b.setAttribute('aria-current', b.dataset.id === state.sessionId ? 'true' : 'false');
  }
}

async function openSession(id, { isNew = false } = {}) {
  const seq = ++state.openSeq;
  if (state.turn) state.turn.abort();
  hideError();
  state.sessionId = id;
  client.sessionId = id;
  state.session = null;
  state.lastTurn = null;
  state.callNames = new Map();
  clearAttachments();
  setPendingCalls([]);
  setHash(id);
  ui.conversation.replaceChildren();
  applySession();
  updateCosts();
  if (isNew) {
    setStatus('New session');
    return;
  }
  setStatus('Loading the session…');
  try {
    const session = await client.getSession(id);
    const views = [];
    let last = null;
    for await (const m of client.messages(id)) {
      if (seq !== state.openSeq) return;
      views.push(m);
      if (m.role === 'assistant' && hasUsage(m.usage)) last = { usage: m.usage, model: m.model, extra: m };
    }
    if (seq !== state.openSeq) return;
    state.session = session;
    for (const m of views) {
      const note = m.status === 'incomplete' ? 'Stopped before the end (incomplete).' : '';
      const usage = m.role === 'assistant' && hasUsage(m.usage) ? m.usage : null;
      addMessage(m.role, m.content, { usage, model: m.model, extra: m, note, blocks: m.blocks });
    }
    // A session whose last reply called tools waits for their results.
    const lastMsg = views[views.length - 1];
    if (lastMsg && lastMsg.role === 'assistant' && Array.isArray(lastMsg.blocks)) {
      setPendingCalls(lastMsg.blocks.filter((b) => b.type === 'tool_use').map((b) => ({ id: b.id, name: b.name, input: b.input })));
    }
    state.lastTurn = last;
    scrollToEnd();
    setStatus(`Loaded ${views.length} message${views.length === 1 ? '' : 's'}`);
  } catch (err) {
    if (seq !== state.openSeq) return;
    if (err instanceof ChatdError && err.status === 404) {
      setStatus('New session'); // nothing stored under this id yet
    } else {
      showError(err, 'Could not load the session');
      setStatus('Failed');
    }
  }
  applySession();
  updateCosts();
}

function renderSessionItem(s) {
  const li = document.createElement('li');
  const b = document.createElement('button');
  b.type = 'button';
  b.dataset.id = s.id;
  b.setAttribute('aria-current', s.id === state.sessionId ? 'true' : 'false');
  const sid = document.createElement('span');
  sid.className = 'sid';
  sid.textContent = s.id;
  const meta = document.createElement('span');
  meta.className = 'meta';
  meta.textContent = `${s.turn_count} turn${s.turn_count === 1 ? '' : 's'} · ${fmtTime(s.updated_at)}`;
  b.append(sid, meta);
  b.addEventListener('click', () => {
    if (narrow.matches) setSidebar(false);
    openSession(s.id).then(() => {
      if (narrow.matches) ui.input.focus();
    });
  });
  li.appendChild(b);
  return li;
}

async function refreshSessions({ append = false } = {}) {
  try {
    const page = await client.listSessions({ limit: 20, cursor: append ? state.nextCursor : undefined });
    if (!append) ui.sessionList.replaceChildren();
    for (const s of page.data) ui.sessionList.appendChild(renderSessionItem(s));
    state.nextCursor = page.next_cursor;
    ui.moreSessions.hidden = !page.next_cursor;
    ui.sessionsNote.hidden = ui.sessionList.children.length > 0;
    ui.sessionsNote.textContent = 'No saved sessions yet.';
  } catch (err) {
    ui.sessionsNote.hidden = false;
    ui.sessionsNote.textContent = `Sessions unavailable. ${describeError(err)}`;
  }
}

async function newSession() {
  await openSession(client.generateSessionId(), { isNew: true });
  ui.input.focus();
}

async function resetSession() {
  const id = state.sessionId;
  if (!state.session || !window.confirm(`Reset session ${id}? Its messages are removed; the session and its system prompt stay.`)) return;
  try {
    const r = await client.resetSession(id);
    await openSession(id);
    setStatus(`Reset: ${r.previous_turns} turn${r.previous_turns === 1 ? '' : 's'} removed`);
    refreshSessions();
  } catch (err) {
    showError(err, 'Could not reset the session');
  }
}

async function deleteSession() {
  const id = state.sessionId;
  if (!state.session || !window.confirm(`Delete session ${id} and all its messages?`)) return;
  try {
    await client.deleteSession(id);
    await newSession();
    setStatus(`Deleted session ${id}`);
    refreshSessions();
  } catch (err) {
    showError(err, 'Could not delete the session');
  }
}

// ---------- models and cost ----------

async function loadModels() {
  try {
    state.models = await client.models();
  } catch (err) {
    state.models = null;
    ui.modelHelp.textContent = `Models unavailable: ${describeError(err)}`;
    updateCosts();
    return;
  }
  const saved = storage.get(KEYS.model);
  ui.model.replaceChildren(new Option('Server default', ''));
  if (!state.models || state.models.data.length === 0) {
    ui.modelHelp.textContent = "This server does not list its models (no GET /v1/models): replies use the server's default model.";
  } else {
    if (state.models.default) ui.model.options[0].text = `Default: ${state.models.default}`;
    for (const m of state.models.data) {
      const off = m.available === false;
      const opt = new Option(`${m.id}${m.provider ? ` · ${m.provider}` : ''}${off ? ' (not configured)' : ''}`, m.id);
      opt.disabled = off;
      ui.model.appendChild(opt);
    }
    const n = state.models.data.filter((m) => m.available === false).length;
    ui.modelHelp.textContent = n ? `${n} listed model${n === 1 ? ' is' : 's are'} not configured on this server.` : '';
    const wanted = state.session && state.session.model ? state.session.model : saved;
    if (wanted && state.models.data.some((m) => m.id === wanted && m.available !== false)) ui.model.value = wanted;
  }
  updateCosts();
}

function sessionUsage() {
  return state.session && state.session.usage ? state.session.usage : null;
}

function updateCosts() {
  const last = state.lastTurn;
  const total = sessionUsage();
  const lines = [];
  if (last && last.usage) {
    const u = last.usage;
    lines.push(`Last turn: ${fmtInt(u.input_tokens)} input + ${fmtInt(u.output_tokens)} output tokens` +
      (u.cache_read_input_tokens || u.cache_creation_input_tokens
        ? ` (cache: ${fmtInt(u.cache_creation_input_tokens)} written, ${fmtInt(u.cache_read_input_tokens)} read)`
        : '') + (last.model ? ` on ${last.model}.` : '.'));
  }
  if (total) {
    const spent = costUsd(state.session.cost);
    lines.push(`This session: ${fmtInt(total.input_tokens)} input + ${fmtInt(total.output_tokens)} output tokens` +
      (spent != null ? `, ${fmtUsd(spent)} so far.` : '.'));
  }
  ui.usageSummary.textContent = lines.length ? lines.join(' ') : 'No turn yet.';

  const priced = state.models ? state.models.data.filter((m) => m.pricing) : [];
  if (priced.length === 0) {
    ui.costTable.hidden = true;
    ui.costNote.textContent = 'Cost comparison unavailable: this server does not publish model prices (GET /v1/models).';
    return;
  }
  ui.costNote.textContent = last ? '' : 'Costs appear after a turn.';
  const rows = priced.map((m) => {
    const tr = document.createElement('tr');
    if (last && last.model === m.id) tr.className = 'current';
    const th = document.createElement('th');
    th.scope = 'row';
    const name = document.createElement('span');
    name.textContent = m.id;
    const price = document.createElement('span');
    price.className = 'price';
    price.textContent = `$${m.pricing.input} in · $${m.pricing.output} out per 1M`;
    th.append(name, price);
    tr.appendChild(th);
    for (const usage of [last && last.usage, total]) {
      const td = document.createElement('td');
      td.textContent = usage ? fmtUsd(costOf(usage, m.pricing).usd) : '—';
      tr.appendChild(td);
    }
    return tr;
  });
  ui.costRows.replaceChildren(...rows);
  ui.costTable.hidden = false;
}

// ---------- sidebar ----------

function setSidebar(open) {
  ui.layout.classList.toggle('sidebar-open', open);
  ui.toggle.setAttribute('aria-expanded', open ? 'true' : 'false');
  if (open && narrow.matches) ui.newSession.focus();
}

// ---------- wiring ----------

document.querySelector('.skip-link').addEventListener('click', (e) => {
  e.preventDefault(); // the address keeps #session=...
  ui.input.focus();
});
ui.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  sendMessage();
});
ui.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.altKey && !e.isComposing) {
    e.preventDefault();
    sendMessage();
  } else if (e.key === 'Escape' && state.turn) {
    e.preventDefault();
    state.turn.abort();
  }
});
ui.stop.addEventListener('click', () => {
  if (state.turn) state.turn.abort();
});
ui.attach.addEventListener('click', () => ui.attachInput.click());
ui.attachInput.addEventListener('change', async () => {
  const files = [...ui.attachInput.files];
  ui.attachInput.value = ''; // the same file may be attached again
  await attachFiles(files);
  ui.input.focus();
});
ui.tools.value = storage.get(KEYS.tools) ?? '';
ui.tools.addEventListener('input', () => storage.set(KEYS.tools, ui.tools.value));
ui.newSession.addEventListener('click', () => {
  if (narrow.matches) setSidebar(false);
  newSession();
});
ui.moreSessions.addEventListener('click', () => refreshSessions({ append: true }));
ui.reset.addEventListener('click', resetSession);
ui.del.addEventListener('click', deleteSession);
ui.toggle.addEventListener('click', () => setSidebar(!ui.layout.classList.contains('sidebar-open')));
ui.scrim.addEventListener('click', () => setSidebar(false));
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && narrow.matches && ui.layout.classList.contains('sidebar-open')) {
    setSidebar(false);
    ui.toggle.focus();
  }
});
narrow.addEventListener('change', () => setSidebar(!narrow.matches));

ui.errorDismiss.addEventListener('click', () => {
  hideError();
  ui.input.focus();
});
ui.errorSettings.addEventListener('click', () => {
  ui.settings.open = true;
  ui.apiKey.focus();
});

ui.apiKey.value = client.apiKey || '';
ui.apiKey.addEventListener('change', () => {
  const key = ui.apiKey.value.trim();
  client.apiKey = key || null;
  storage.set(KEYS.apiKey, key);
  setStatus(key ? 'API key saved in this browser' : 'No API key');
  hideError();
  loadModels();
  refreshSessions();
});
ui.forgetKey.addEventListener('click', () => {
  ui.apiKey.value = '';
  client.apiKey = null;
  storage.set(KEYS.apiKey, null);
  setStatus('API key forgotten');
});
ui.model.addEventListener('change', () => storage.set(KEYS.model, ui.model.value));
ui.system.addEventListener('input', () => {
  if (!ui.system.readOnly) storage.set(KEYS.system, ui.system.value);
});
window.addEventListener('hashchange', () => {
  const id = parseHash();
  if (id && id !== state.sessionId) openSession(id);
});

async function start() {
  setSidebar(!narrow.matches);
  const id = parseHash() || storage.get(KEYS.session);
  const first = id && SESSION_ID.test(id) ? openSession(id) : openSession(client.generateSessionId(), { isNew: true });
  await Promise.all([first, loadModels(), refreshSessions()]);
  if (ui.status.textContent === 'Loading…') setStatus('Ready');
}

start();
