// The playground's Markdown renderer (web/ui/markdown.mjs), in Node with a
// minimal DOM stand-in: the nodes it builds, serialized with every text
// escaped, so that markup in the input can only ever show up as text.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderMarkdown, safeHref } from '../../web/ui/markdown.mjs';

class Node_ {
  constructor(tag) {
    this.tag = tag;
    this.attrs = {};
    this.children = [];
  }
  appendChild(c) {
    this.children.push(c);
    return c;
  }
  setAttribute(k, v) {
    if (/^on/i.test(k)) throw new Error(`event handler attribute ${k}`);
    this.attrs[k] = v;
  }
}
class Text_ {
  constructor(t) {
    this.text = t;
  }
}
const doc = {
  createElement: (t) => new Node_(t),
  createTextNode: (t) => new Text_(t),
  createDocumentFragment: () => new Node_(null),
};
const esc = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
function html(n) {
  if (n instanceof Text_) return esc(n.text);
  const inner = n.children.map(html).join('');
  if (n.tag === null) return inner;
  const attrs = Object.entries(n.attrs).map(([k, v]) => ` ${k}="${esc(v)}"`).join('');
  return ['br', 'hr'].includes(n.tag) ? `<${n.tag}${attrs}>` : `<${n.tag}${attrs}>${inner}</${n.tag}>`;
}
const md = (s) => html(renderMarkdown(s, doc));

test('paragraphs, line breaks, bold, italic, code, strike', () => {
  assert.equal(md('Hello **big** *world*\nline two\n\nSecond `a<b>` ~~old~~ __x__ _y_'),
    '<p>Hello <strong>big</strong> <em>world</em><br>line two</p>' +
    '<p>Second <code>a&lt;b&gt;</code> <del>old</del> <strong>x</strong> <em>y</em></p>');
  assert.equal(md('**bold with *italic* inside**'), '<p><strong>bold with <em>italic</em> inside</strong></p>');
  assert.equal(md('snake_case_name and 2*3*4'), '<p>snake_case_name and 2<em>3</em>4</p>');
  assert.equal(md('a ** b ** c and * x *'), '<p>a ** b ** c and * x *</p>');
  assert.equal(md('\\*not italic\\* and ``code with ` tick``'), '<p>*not italic* and <code>code with ` tick</code></p>');
  assert.equal(md('unclosed `code and **bold'), '<p>unclosed `code and **bold</p>');
});

test('fenced code blocks keep their text verbatim, also while still open', () => {
  assert.equal(md('before\n```js\nconst a = "<b>";\n\n  **not bold**\n```\nafter'),
    '<p>before</p><pre><code data-lang="js">const a = &quot;&lt;b&gt;&quot;;\n\n  **not bold**</code></pre><p>after</p>');
  assert.equal(md('```\nstreaming so far'), '<pre><code>streaming so far</code></pre>');
  assert.equal(md('~~~\nx\n~~~'), '<pre><code>x</code></pre>');
});

test('lists: bullets, numbers with start, nesting, loose items', () => {
  assert.equal(md('- one\n- **two**\n* three'), '<ul><li>one</li><li><strong>two</strong></li><li>three</li></ul>');
  assert.equal(md('3. c\n4. d'), '<ol start="3"><li>c</li><li>d</li></ol>');
  assert.equal(md('- a\n  - a1\n  - a2\n- b'), '<ul><li><p>a</p><ul><li>a1</li><li>a2</li></ul></li><li>b</li></ul>');
  assert.equal(md('1. x\n\n2. y\n\ntext'), '<ol><li>x</li><li>y</li></ol><p>text</p>');
});

test('headings, quotes, rules', () => {
  assert.equal(md('# Title\n## Sub\n> quoted *text*\n> more\n\n---'),
    '<h3>Title</h3><h4>Sub</h4><blockquote><p>quoted <em>text</em><br>more</p></blockquote><hr>');
});

test('links only for http(s), with rel=noopener; bare URLs; everything else is text', () => {
  assert.equal(md('[docs](https://example.com/a_b?x=1&y=2) and https://example.org/path).'),
    '<p><a href="https://example.com/a_b?x=1&amp;y=2" rel="noopener noreferrer" target="_blank">docs</a> and ' +
    '<a href="https://example.org/path" rel="noopener noreferrer" target="_blank">https://example.org/path</a>).</p>');
  assert.equal(md('[x](javascript:alert(1)) [y](data:text/html,<b>) [z](//evil.com)'),
    '<p>[x](javascript:alert(1)) [y](data:text/html,&lt;b&gt;) [z](//evil.com)</p>');
  assert.equal(md('see (https://en.wikipedia.org/wiki/C_(language)) now'),
    '<p>see (<a href="https://en.wikipedia.org/wiki/C_(language)" rel="noopener noreferrer" target="_blank">' +
    'https://en.wikipedia.org/wiki/C_(language)</a>) now</p>');
  assert.equal(safeHref('javascript:alert(1)'), null);
  assert.equal(safeHref('HTTPS://A.example/'), 'https://a.example/');
});

test('HTML in the input is text, never elements or attributes', () => {
  const evil = '<script>window.__xss=1</script> <img src=x onerror="window.__xss=2"> <a href="javascript:x">y</a>\n' +
    '- <b onclick=1>item</b>\n\n```\n</code></pre><script>x</script>\n```';
  const out = md(evil);
  assert.ok(!/<(script|img|b )/.test(out), out);
  assert.match(out, /&lt;script&gt;window.__xss=1&lt;\/script&gt;/);
  assert.match(out, /&lt;img src=x onerror=&quot;window.__xss=2&quot;&gt;/);
  const tags = new Set();
  (function walk(n) {
    if (n instanceof Node_) {
      if (n.tag) tags.add(n.tag);
      n.children.forEach(walk);
    }
  })(renderMarkdown(evil, doc));
  assert.deepEqual([...tags].sort(), ['code', 'li', 'p', 'pre', 'ul']);
});

test('pathological input stays fast and bounded', () => {
  const t0 = Date.now();
  md('*'.repeat(5000) + '_'.repeat(5000) + '`'.repeat(3000) + '['.repeat(3000));
  md('>'.repeat(200) + ' deep');
  md(Array.from({ length: 50 }, (_, i) => ' '.repeat(i * 2) + '- x').join('\n'));
  assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`);
});
