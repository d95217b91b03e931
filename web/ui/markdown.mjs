// markdown.mjs: a small Markdown renderer for model replies that builds DOM
// nodes directly. Text only ever becomes Text nodes (createTextNode), never
// markup: nothing a model or a stored message says can inject HTML, attributes
// or script. Links are made only for http(s) URLs, opened with rel=noopener.
//
// Supported: paragraphs, line breaks, headings, **bold** / __bold__, *italic* /
// _italic_, ~~strike~~, `code`, fenced code blocks (``` or ~~~, also while
// still open during streaming), bullet and numbered lists (nested by
// indentation), block quotes, horizontal rules, [text](https://...) links and
// bare https:// URLs, backslash escapes.
//
// renderMarkdown(text, doc) -> DocumentFragment; `doc` defaults to the global
// document (tests pass a minimal stand-in with createElement, createTextNode,
// createDocumentFragment; elements need appendChild and setAttribute).

const MAX_DEPTH = 8; // nesting of lists/quotes/emphasis; deeper content is shown as plain text

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const QUOTE = /^ {0,3}> ?(.*)$/;
const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const ITEM = /^( *)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*)|[ \t]*)$/;

function el(doc, tag, attrs) {
  const e = doc.createElement(tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function isBlank(line) {
  return /^\s*$/.test(line);
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || HR.test(line) || ITEM.test(line);
}

/** An http(s) URL made safe for href, or null. */
export function safeHref(raw) {
  try {
    const u = new URL(raw);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

// ---- inline ----

const ESCAPE = /\\([\\`*_{}[\]()#+\-.!~>|])/y;
const LINK = /\[([^[\]\n]+)\]\((https?:\/\/[^\s()]+(?:\([^\s()]*\)[^\s()]*)*)\)/y;
const AUTOLINK = /https?:\/\/[^\s<>"'`]+/y;
const BOLD_STAR = /\*\*(?=\S)([\s\S]*?\S)\*\*(?!\*)/y;
const BOLD_UNDER = /__(?=\S)([\s\S]*?\S)__(?![A-Za-z0-9_])/y;
const ITALIC_STAR = /\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/y;
const ITALIC_UNDER = /_(?=[^\s_])([\s\S]*?[^\s_])_(?![A-Za-z0-9_])/y;
const STRIKE = /~~(?=\S)([\s\S]*?\S)~~/y;

function at(re, text, i) {
  re.lastIndex = i;
  return re.exec(text);
}

function trimUrl(url) {
  // Trailing punctuation belongs to the sentence, and a ')' to it unless the URL opened one.
  for (;;) {
    const last = url[url.length - 1];
    if ('.,;:!?\'"*_~'.includes(last)) url = url.slice(0, -1);
    else if (last === ')' && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) url = url.slice(0, -1);
    else return url;
  }
}

function codeSpan(text, i) {
  let n = 0;
  while (text[i + n] === '`') n++;
  const run = '`'.repeat(n);
  let j = i + n;
  for (;;) {
    const k = text.indexOf(run, j);
    if (k < 0) return null;
    if (text[k + n] === '`') {
      j = k + n;
      while (text[j] === '`') j++;
      continue;
    }
    let content = text.slice(i + n, k).replace(/\n/g, ' ');
    if (content.length > 2 && content.startsWith(' ') && content.endsWith(' ') && content.trim()) content = content.slice(1, -1);
    return { content, end: k + n };
  }
}

/** Appends the inline content of `text` to `parent`. */
function renderInline(doc, text, parent, depth) {
  if (depth > MAX_DEPTH) {
    parent.appendChild(doc.createTextNode(text));
    return;
  }
  let pending = '';
  const flush = () => {
    if (pending) parent.appendChild(doc.createTextNode(pending));
    pending = '';
  };
  const wrap = (tag, inner, end) => {
    flush();
    const e = el(doc, tag);
    renderInline(doc, inner, e, depth + 1);
    parent.appendChild(e);
    return end;
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const prev = i > 0 ? text[i - 1] : ' ';
    let m;
    if (c === '\\' && (m = at(ESCAPE, text, i))) {
      pending += m[1];
      i = ESCAPE.lastIndex;
    } else if (c === '\n') {
      flush();
      parent.appendChild(el(doc, 'br'));
      i++;
    } else if (c === '`') {
      const span = codeSpan(text, i);
      if (span) {
        flush();
        const code = el(doc, 'code');
        code.appendChild(doc.createTextNode(span.content));
        parent.appendChild(code);
        i = span.end;
      } else {
        // An unmatched run of backticks is literal, as a whole.
        let n = 0;
        while (text[i + n] === '`') n++;
        pending += text.slice(i, i + n);
        i += n;
      }
    } else if (c === '[' && (m = at(LINK, text, i)) && safeHref(m[2])) {
      flush();
      const a = el(doc, 'a', { href: safeHref(m[2]), rel: 'noopener noreferrer', target: '_blank' });
      renderInline(doc, m[1], a, depth + 1);
      parent.appendChild(a);
      i = LINK.lastIndex;
    } else if (c === 'h' && !/[A-Za-z0-9]/.test(prev) && (m = at(AUTOLINK, text, i))) {
      const url = trimUrl(m[0]);
      const href = safeHref(url);
      if (href && url.length > 'https://'.length) {
        flush();
        const a = el(doc, 'a', { href, rel: 'noopener noreferrer', target: '_blank' });
        a.appendChild(doc.createTextNode(url));
        parent.appendChild(a);
        i += url.length;
      } else {
        pending += c;
        i++;
      }
    } else if (c === '*' && (m = at(BOLD_STAR, text, i))) {
      i = wrap('strong', m[1], BOLD_STAR.lastIndex);
    } else if (c === '_' && !/[A-Za-z0-9]/.test(prev) && (m = at(BOLD_UNDER, text, i))) {
      i = wrap('strong', m[1], BOLD_UNDER.lastIndex);
    } else if (c === '*' && (m = at(ITALIC_STAR, text, i))) {
      i = wrap('em', m[1], ITALIC_STAR.lastIndex);
    } else if (c === '_' && !/[A-Za-z0-9]/.test(prev) && (m = at(ITALIC_UNDER, text, i))) {
      i = wrap('em', m[1], ITALIC_UNDER.lastIndex);
    } else if (c === '~' && (m = at(STRIKE, text, i))) {
      i = wrap('del', m[1], STRIKE.lastIndex);
    } else {
      pending += c;
      i++;
    }
  }
  flush();
}

// ---- blocks ----

function renderBlocks(doc, lines, parent, depth) {
  if (depth > MAX_DEPTH) {
    const p = el(doc, 'p');
    p.appendChild(doc.createTextNode(lines.join('\n')));
    parent.appendChild(p);
    return;
  }
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (isBlank(line)) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const close = new RegExp(`^ {0,3}${fence[0] === '`' ? '`' : '~'}{${fence.length},}[ \\t]*$`);
      const body = [];
      i++;
      while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
      i++; // the closing fence (or past the end while a reply is still streaming)
      const pre = el(doc, 'pre');
      const code = el(doc, 'code', m[2] ? { 'data-lang': m[2].slice(0, 40) } : null);
      code.appendChild(doc.createTextNode(body.join('\n')));
      pre.appendChild(code);
      parent.appendChild(pre);
    } else if ((m = HEADING.exec(line))) {
      const level = Math.min(6, m[1].length + 2); // the page owns h1/h2
      const h = el(doc, `h${level}`);
      renderInline(doc, m[2] || '', h, depth);
      parent.appendChild(h);
      i++;
    } else if (HR.test(line)) {
      parent.appendChild(el(doc, 'hr'));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        inner.push(m[1]);
        i++;
      }
      const q = el(doc, 'blockquote');
      renderBlocks(doc, inner, q, depth + 1);
      parent.appendChild(q);
    } else if ((m = ITEM.exec(line))) {
      i = renderList(doc, lines, i, parent, depth);
    } else {
      const para = [];
      while (i < lines.length && !isBlank(lines[i]) && (para.length === 0 || !startsBlock(lines[i]))) {
        para.push(lines[i].replace(/^ {1,3}/, ''));
        i++;
      }
      const p = el(doc, 'p');
      renderInline(doc, para.join('\n'), p, depth);
      parent.appendChild(p);
    }
  }
}

/** Renders the list starting at lines[start]; returns the index of the first line after it. */
function renderList(doc, lines, start, parent, depth) {
  const first = ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const list = el(doc, ordered ? 'ol' : 'ul');
  if (ordered) {
    const n = parseInt(first[2], 10);
    if (n !== 1) list.setAttribute('start', String(n));
  }
  let i = start;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = indent + m[2].length + 1;
    const body = [m[3] || ''];
    i++;
    // Continuation: indented lines (nested lists, wrapped text), also after one blank line.
    while (i < lines.length) {
      const l = lines[i];
      if (isBlank(l)) {
        if (i + 1 < lines.length && /^\s+\S/.test(lines[i + 1]) && leading(lines[i + 1]) > indent) {
          body.push('');
          i++;
          continue;
        }
        break;
      }
      if (leading(l) > indent) {
        body.push(l.slice(Math.min(leading(l), contentIndent)));
        i++;
      } else if (!startsBlock(l) && body.length === 1 && !isBlank(body[0])) {
        body.push(l); // a lazily wrapped line of the item's first paragraph
        i++;
      } else {
        break;
      }
    }
    const li = el(doc, 'li');
    const simple = body.every((b) => !isBlank(b) && !startsBlock(b)) || (body.length === 1);
    if (simple) renderInline(doc, body.join('\n'), li, depth + 1);
    else renderBlocks(doc, body, li, depth + 1);
    list.appendChild(li);
    // A blank line between items of the same list does not end it.
    if (i < lines.length && isBlank(lines[i]) && i + 1 < lines.length) {
      const next = ITEM.exec(lines[i + 1]);
      if (next && next[1].length === indent && /\d/.test(next[2]) === ordered) i++;
    }
  }
  parent.appendChild(list);
  return i;
}

function leading(line) {
  return line.length - line.replace(/^ +/, '').length;
}

/**
 * @param {string} text Markdown source (model output or stored history)
 * @param {Document} [doc]
 * @returns {DocumentFragment}
 */
export function renderMarkdown(text, doc = globalThis.document) {
  const frag = doc.createDocumentFragment();
  const lines = String(text ?? '').replace(/\r\n?/g, '\n').replace(/\t/g, '    ').split('\n');
  renderBlocks(doc, lines, frag, 0);
  return frag;
}
