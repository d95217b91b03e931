// The SSE parser against the WHATWG rules: line endings, chunk boundaries
// anywhere (also inside UTF-8 characters), comments, multi-line data, fields.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SSEParser, readSSE } from '../src/sse.js';

function parseAll(pieces) {
  const events = [];
  const comments = [];
  const p = new SSEParser((e) => events.push(e), (c) => comments.push(c));
  for (const piece of pieces) p.push(piece);
  p.end();
  return { events, comments };
}

/** Every way of cutting `s` into two pieces, and into pieces of each size 1..4. */
function cuts(s) {
  const out = [[s]];
  for (let i = 0; i <= s.length; i++) out.push([s.slice(0, i), s.slice(i)]);
  for (let n = 1; n <= 4; n++) {
    const parts = [];
    for (let i = 0; i < s.length; i += n) parts.push(s.slice(i, i + n));
    out.push(parts);
  }
  return out;
}

const STREAM = ': ping\n\nevent: start\ndata: {"a":1}\n\nevent: delta\ndata: line one\ndata:line two\ndata\n\n' +
  'id: 7\nretry: 1500\nevent: done\ndata: end\n\n';
const EXPECTED = [
  { event: 'start', data: '{"a":1}', id: '' },
  { event: 'delta', data: 'line one\nline two\n', id: '' },
  { event: 'done', data: 'end', id: '7' },
];

for (const [name, eol] of [['LF', '\n'], ['CRLF', '\r\n'], ['CR', '\r']]) {
  test(`every cut of a stream with ${name} line endings gives the same events`, () => {
    const s = STREAM.replace(/\n/g, eol);
    for (const pieces of cuts(s)) {
      const { events, comments } = parseAll(pieces);
      assert.deepEqual(events, EXPECTED, JSON.stringify(pieces));
      assert.deepEqual(comments, ['ping']);
    }
  });
}

test('mixed line endings, and a CR at the end of one chunk followed by LF in the next is one line break', () => {
  const { events } = parseAll(['data: a\r', '\ndata: b\r\r', '\n', 'data: c\n\n']);
  // "a\r" + "\n" is one break; "b\r\r" ends "b" and then a blank line dispatches; the "\n" of the
  // next chunk completes that last CR (one CRLF), so it is not a second blank line.
  assert.deepEqual(events.map((e) => e.data), ['a\nb', 'c']);
});

test('no dispatch without data; event type reset after each event; unterminated event dropped at the end', () => {
  const { events } = parseAll(['event: lonely\n\n', 'data: x\n\n', 'event: cut\ndata: never dispatched']);
  assert.deepEqual(events, [{ event: 'message', data: 'x', id: '' }]);
});

test('field details: only one leading space stripped, no colon means empty value, unknown fields ignored, BOM', () => {
  const { events } = parseAll(['\uFEFFdata:  two spaces\nfoo: bar\ndata\nevent:x\nid: a\0b\n\n']);
  assert.deepEqual(events, [{ event: 'x', data: ' two spaces\n', id: '' }]);
});

test('retry field keeps only digits', () => {
  const p = new SSEParser(() => {});
  p.push('retry: 12x\n\nretry: 300\n\n');
  assert.equal(p.retry, 300);
});

function byteStream(bytes, size) {
  let i = 0;
  return new ReadableStream({
    pull(ctrl) {
      if (i >= bytes.length) return ctrl.close();
      ctrl.enqueue(bytes.slice(i, i + size));
      i += size;
    },
  });
}

test('readSSE decodes UTF-8 split across reads (one byte per read)', async () => {
  const text = 'event: delta\ndata: {"text":"héllo 世界 🎉"}\n\n: ping\n\nevent: done\ndata: {}\n\n';
  const bytes = new TextEncoder().encode(text);
  for (const size of [1, 2, 3, 5]) {
    const events = [];
    let pings = 0;
    for await (const ev of readSSE(byteStream(bytes, size), { onComment: () => pings++ })) events.push(ev);
    assert.deepEqual(events.map((e) => e.event), ['delta', 'done']);
    assert.equal(JSON.parse(events[0].data).text, 'héllo 世界 🎉');
    assert.equal(pings, 1);
  }
});

test('leaving a readSSE loop early cancels the byte stream', async () => {
  let cancelled = false;
  const body = new ReadableStream({
    start(ctrl) {
      ctrl.enqueue(new TextEncoder().encode('data: 1\n\ndata: 2\n\n'));
    },
    cancel() {
      cancelled = true;
    },
  });
  for await (const ev of readSSE(body)) {
    assert.equal(ev.data, '1');
    break;
  }
  assert.equal(cancelled, true);
});
