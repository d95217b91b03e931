// sse.js: an incremental parser for text/event-stream, following the WHATWG
// HTML "server-sent events" parsing rules, so that a stream cut anywhere by the
// network (inside a line, between CR and LF, inside a UTF-8 character) yields
// exactly the events the server wrote. No dependencies; browsers and Node >= 18.

/**
 * Push-style parser. Feed it decoded text with push(); it calls onEvent for
 * every dispatched event and onComment for every comment line (": ping").
 * An event still being built when the stream ends is discarded (end()), as the
 * standard requires: only a blank line dispatches.
 */
export class SSEParser {
  /**
   * @param {(ev: {event: string, data: string, id: string}) => void} onEvent
   * @param {(text: string) => void} [onComment]
   */
  constructor(onEvent, onComment) {
    this.onEvent = onEvent;
    this.onComment = onComment || null;
    this.buf = '';            // text after the last complete line
    this.sawCR = false;       // the previous chunk ended in CR: a leading LF is part of that line break
    this.first = true;        // a BOM is stripped only at the very start of the stream
    this.data = '';
    this.hasData = false;
    this.eventType = '';
    this.lastId = '';
    this.retry = null;        // the last valid "retry" field, in ms
  }

  /** @param {string} text a decoded piece of the stream, cut anywhere */
  push(text) {
    if (this.first && text.length > 0) {
      this.first = false;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.sawCR && text.length > 0) {
      this.sawCR = false;
      if (text.charCodeAt(0) === 0x0a) text = text.slice(1);
    }
    let buf = this.buf + text;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const c = buf.charCodeAt(i);
      if (c !== 0x0a && c !== 0x0d) continue;
      this.line(buf.slice(start, i));
      if (c === 0x0d) {
        if (i + 1 < buf.length) {
          if (buf.charCodeAt(i + 1) === 0x0a) i++;
        } else {
          this.sawCR = true; // CR is the last char we have: swallow a LF starting the next chunk
        }
      }
      start = i + 1;
    }
    this.buf = buf.slice(start);
  }

  /** The stream ended: an unterminated line or event is dropped (WHATWG). */
  end() {
    this.buf = '';
    this.data = '';
    this.hasData = false;
    this.eventType = '';
  }

  line(line) {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.charCodeAt(0) === 0x3a /* ':' */) {
      if (this.onComment) this.onComment(line.slice(1).replace(/^ /, ''));
      return;
    }
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 0x20) value = value.slice(1);
    }
    switch (field) {
      case 'event':
        this.eventType = value;
        break;
      case 'data':
        this.data += value + '\n';
        this.hasData = true;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastId = value;
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  dispatch() {
    if (!this.hasData) {
      this.eventType = '';
      return;
    }
    let data = this.data;
    if (data.endsWith('\n')) data = data.slice(0, -1);
    const ev = { event: this.eventType || 'message', data, id: this.lastId };
    this.data = '';
    this.hasData = false;
    this.eventType = '';
    this.onEvent(ev);
  }
}

/**
 * Pull-style: reads a byte stream (a fetch Response body) and yields its
 * events. UTF-8 is decoded incrementally, so a character split between two
 * reads is not corrupted. Comments are passed to onComment when given.
 * Breaking out of the loop cancels the underlying stream.
 *
 * @param {ReadableStream<Uint8Array>} body
 * @param {{onComment?: (text: string) => void}} [opts]
 * @returns {AsyncGenerator<{event: string, data: string, id: string}>}
 */
export async function* readSSE(body, opts = {}) {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  const queue = [];
  const parser = new SSEParser((ev) => queue.push(ev), opts.onComment);
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        parser.push(decoder.decode());
        parser.end();
        finished = true;
        break;
      }
      parser.push(decoder.decode(value, { stream: true }));
      while (queue.length > 0) yield queue.shift();
    }
    while (queue.length > 0) yield queue.shift();
  } finally {
    if (!finished) {
      // The consumer stopped early (break, throw, abort): close the connection
      // so that the server sees the client go away.
      try { await reader.cancel(); } catch { /* already errored or aborted */ }
    }
    try { reader.releaseLock(); } catch { /* a pending read may still hold it */ }
  }
}
