// The OpenAPI document docs/openapi.json against two references:
//   1. the Redocly linter (recommended ruleset, see redocly.yaml): no errors;
//   2. the route table of src/api/router.c: the same (method, path) set, both directions
//      (HEAD is ignored: the router adds it to every GET route by itself);
// plus the document's own header conventions (X-Request-Id everywhere, Allow on 405,
// Retry-After on 429 and 503). Self-checks prove each comparison can fail.
//
// Run from anywhere: node --test tests/openapi/   (needs `npm install` in the repo root)
// CHATD_OPENAPI / CHATD_ROUTER_C override the two input paths (to try a mutated copy).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DOC_PATH = process.env.CHATD_OPENAPI || join(ROOT, 'docs', 'openapi.json');
const ROUTER_PATH = process.env.CHATD_ROUTER_C || join(ROOT, 'src', 'api', 'router.c');
const REDOCLY = join(ROOT, 'node_modules', '@redocly', 'cli', 'bin', 'cli.js');
const REDOCLY_CONFIG = join(ROOT, 'redocly.yaml');

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];
const FLAG_TO_METHOD = {
  HTTP_GET: 'get',
  HTTP_POST: 'post',
  HTTP_PUT: 'put',
  HTTP_DELETE: 'delete',
  HTTP_PATCH: 'patch',
  HTTP_OPTIONS: 'options',
  HTTP_HEAD: 'head',
};

// ---------- route table ----------

/** Removes C comments and string-aware nothing else: the route table has no comment markers in strings. */
function stripComments(src) {
  return src.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
}

/**
 * Returns [{method, pattern}] from the `static const route routes[] = { ... };` initializer.
 * Every top-level brace entry must parse, so a format change fails loudly instead of
 * silently dropping routes.
 */
export function parseRouter(src) {
  const code = stripComments(src);
  const head = /static\s+const\s+route\s+routes\s*\[\s*\]\s*=\s*\{/.exec(code);
  if (!head) throw new Error('router.c: cannot find "static const route routes[] = {"');
  const entries = [];
  let depth = 1;
  let start = -1;
  let i = head.index + head[0].length;
  for (; i < code.length && depth > 0; i++) {
    const c = code[i];
    if (c === '"') {
      // skip string literals (a pattern could in theory contain braces: "{}")
      for (i++; i < code.length && code[i] !== '"'; i++) if (code[i] === '\\') i++;
      continue;
    }
    if (c === '{') {
      if (depth === 1) start = i;
      depth++;
    } else if (c === '}') {
      depth--;
      if (depth === 1) entries.push(code.slice(start + 1, i));
    }
  }
  if (depth !== 0) throw new Error('router.c: unterminated routes[] initializer');
  if (entries.length === 0) throw new Error('router.c: routes[] has no entries');

  const routes = [];
  for (const raw of entries) {
    const m = /^\s*([A-Z_|\s]+?)\s*,\s*"([^"]*)"\s*,/.exec(raw);
    if (!m) throw new Error(`router.c: cannot parse route entry {${raw.trim()}}`);
    const flags = m[1].split('|').map((s) => s.trim());
    for (const flag of flags) {
      const method = FLAG_TO_METHOD[flag];
      if (!method) throw new Error(`router.c: unknown method flag ${flag} in {${raw.trim()}}`);
      if (method !== 'head') routes.push({ method, pattern: m[2] });
    }
  }
  return routes;
}

/** "/v1/sessions/{session_id}" and "/v1/sessions/{}" both become "/v1/sessions/{}". */
export function normalisePath(p) {
  return p.replace(/\{[^}/]*\}/g, '{}');
}

const key = (method, path) => `${method.toUpperCase()} ${normalisePath(path)}`;

export function routerKeys(src) {
  return parseRouter(src).map((r) => key(r.method, r.pattern));
}

export function documentKeys(doc) {
  const keys = [];
  for (const [path, item] of Object.entries(doc.paths || {}))
    for (const method of HTTP_METHODS) if (method !== 'head' && item[method]) keys.push(key(method, path));
  return keys;
}

/** Returns '' when the two lists hold the same set of keys, else a readable diff. */
export function parityDiff(fromRouter, fromDoc) {
  const r = new Set(fromRouter);
  const d = new Set(fromDoc);
  const lines = [];
  const dupR = fromRouter.filter((k, i) => fromRouter.indexOf(k) !== i);
  const dupD = fromDoc.filter((k, i) => fromDoc.indexOf(k) !== i);
  const onlyR = [...r].filter((k) => !d.has(k)).sort();
  const onlyD = [...d].filter((k) => !r.has(k)).sort();
  if (onlyR.length) lines.push('served by src/api/router.c but missing from docs/openapi.json:', ...onlyR.map((k) => `  + ${k}`));
  if (onlyD.length) lines.push('in docs/openapi.json but not served by src/api/router.c:', ...onlyD.map((k) => `  - ${k}`));
  if (dupR.length) lines.push('routes listed twice in router.c (after path normalisation):', ...dupR.map((k) => `  ! ${k}`));
  if (dupD.length) lines.push('operations listed twice in docs/openapi.json (after path normalisation):', ...dupD.map((k) => `  ! ${k}`));
  return lines.join('\n');
}

// ---------- inputs ----------

const routerSrc = readFileSync(ROUTER_PATH, 'utf8');
const docText = readFileSync(DOC_PATH, 'utf8');
const doc = JSON.parse(docText);

// ---------- linter ----------

function lint(file) {
  if (!existsSync(REDOCLY))
    throw new Error(`${REDOCLY} is missing: run "npm install" in ${ROOT} (devDependency @redocly/cli)`);
  const res = spawnSync(process.execPath, [REDOCLY, 'lint', file, '--config', REDOCLY_CONFIG, '--format', 'json'], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, REDOCLY_TELEMETRY: 'off', REDOCLY_SUPPRESS_UPDATE_NOTICE: 'true' },
  });
  if (res.error) throw res.error;
  const start = res.stdout.indexOf('{');
  let report;
  try {
    report = JSON.parse(res.stdout.slice(start));
  } catch {
    throw new Error(`redocly lint printed no JSON report (exit ${res.status}):\n${res.stdout}\n${res.stderr}`);
  }
  return { status: res.status, report, stderr: res.stderr };
}

function describeProblems(report, severity) {
  return report.problems
    .filter((p) => p.severity === severity)
    .map((p) => {
      const where = (p.location || []).map((l) => l.pointer).filter(Boolean).join(', ');
      return `  [${p.ruleId}] ${p.message}${where ? ` at ${where}` : ''}`;
    })
    .join('\n');
}

test('docs/openapi.json is an OpenAPI 3.1 document', () => {
  assert.match(String(doc.openapi), /^3\.1\.\d+$/);
  assert.equal(doc.info.title, 'chatd');
  assert.ok(doc.info.version && doc.info.description, 'info.version and info.description are required');
  assert.ok((doc.servers || []).some((s) => s.url === 'http://127.0.0.1:8000'), 'servers must list http://127.0.0.1:8000');
});

test('redocly lint (recommended ruleset) reports no errors', (t) => {
  const { status, report, stderr } = lint(DOC_PATH);
  const warnings = describeProblems(report, 'warn');
  if (warnings) t.diagnostic(`redocly warnings:\n${warnings}`);
  assert.equal(report.totals.errors, 0, `redocly lint errors in ${DOC_PATH}:\n${describeProblems(report, 'error')}`);
  assert.equal(status, 0, `redocly lint exited with ${status}:\n${stderr}`);
});

test('self-check: the linter fails on a broken document', () => {
  const dir = mkdtempSync(join(tmpdir(), 'chatd-openapi-'));
  try {
    const broken = structuredClone(doc);
    delete broken.info.title; // required by the specification: a "struct" error
    const [path, item] = Object.entries(broken.paths)[0];
    const method = HTTP_METHODS.find((m) => item[m]);
    item[method].parameters = [{ $ref: '#/components/parameters/NoSuchParameter' }]; // dangling $ref
    const file = join(dir, 'broken.json');
    writeFileSync(file, JSON.stringify(broken));
    const { status, report } = lint(file);
    const rules = new Set(report.problems.filter((p) => p.severity === 'error').map((p) => p.ruleId));
    assert.ok(rules.has('struct') && rules.has('no-unresolved-refs'),
      `expected struct and no-unresolved-refs errors, got ${JSON.stringify(report.totals)}: ${[...rules]}`);
    assert.notEqual(status, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------- route parity ----------

test('route parity: router.c routes == docs/openapi.json operations (HEAD ignored)', () => {
  const fromRouter = routerKeys(routerSrc);
  const fromDoc = documentKeys(doc);
  assert.ok(fromRouter.length >= 10, `parsed only ${fromRouter.length} routes from ${ROUTER_PATH}`);
  const diff = parityDiff(fromRouter, fromDoc);
  assert.equal(diff, '', `route table and OpenAPI document differ:\n${diff}`);
});

test('self-check: parity catches a route added to router.c, or an operation added to the document', () => {
  // A route added to the table (multi-method flags, like a real edit might use).
  const extraRoute = routerSrc.replace(
    /(static\s+const\s+route\s+routes\s*\[\s*\]\s*=\s*\{)/,
    '$1\n    {HTTP_GET | HTTP_PUT, "/v1/widgets/{}", api_root, API_V1},',
  );
  assert.notEqual(extraRoute, routerSrc);
  const d1 = parityDiff(routerKeys(extraRoute), documentKeys(doc));
  assert.match(d1, /missing from docs\/openapi\.json:[\s\S]*\+ GET \/v1\/widgets\/\{\}/);
  assert.match(d1, /\+ PUT \/v1\/widgets\/\{\}/);

  // An operation in the document that the server does not serve.
  const extraOp = structuredClone(doc);
  extraOp.paths['/v1/stats'].delete = { responses: { 204: { description: 'x' } } };
  const d2 = parityDiff(routerKeys(routerSrc), documentKeys(extraOp));
  assert.match(d2, /not served by src\/api\/router\.c:[\s\S]*- DELETE \/v1\/stats/);

  // A route removed from the table (its line deleted).
  const lines = routerSrc.split('\n');
  const idx = lines.findIndex((l) => /^\s*\{\s*HTTP_[A-Z_| ]+,\s*"\/v1\/sessions\/\{\}\/reset"/.test(l));
  assert.ok(idx >= 0, 'router.c no longer has the /v1/sessions/{}/reset line the self-check removes');
  lines.splice(idx, 1);
  const d3 = parityDiff(routerKeys(lines.join('\n')), documentKeys(doc));
  assert.match(d3, /- POST \/v1\/sessions\/\{\}\/reset/);

  // An entry the parser cannot read fails instead of being skipped.
  assert.throws(() => parseRouter(routerSrc.replace(/\{\s*HTTP_GET, "\/"/, '{api_flags(), "/"')), /cannot parse route entry/);
});

// ---------- header conventions ----------

function resolveRef(obj) {
  for (let n = 0; obj && obj.$ref && n < 16; n++) {
    obj = obj.$ref
      .replace(/^#\//, '')
      .split('/')
      .reduce((o, k) => o && o[k.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
  }
  return obj;
}

test('every response has X-Request-Id; 405 has Allow; 429 and 503 from chat have Retry-After', () => {
  const problems = [];
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of HTTP_METHODS) {
      const op = item[method];
      if (!op) continue;
      const where = `${method.toUpperCase()} ${path}`;
      const params = [...(item.parameters || []), ...(op.parameters || [])].map(resolveRef);
      if (!params.some((p) => p.in === 'header' && p.name === 'X-Request-Id'))
        problems.push(`${where}: no X-Request-Id request header parameter`);
      for (const [status, resp0] of Object.entries(op.responses || {})) {
        const resp = resolveRef(resp0);
        const hdrs = Object.keys(resp.headers || {});
        if (!hdrs.includes('X-Request-Id')) problems.push(`${where} ${status}: no X-Request-Id header`);
        if (status === '405' && !hdrs.includes('Allow')) problems.push(`${where} 405: no Allow header`);
        if (status === '429' && !hdrs.includes('Retry-After')) problems.push(`${where} 429: no Retry-After header`);
        if (status === '503' && op.requestBody && !hdrs.includes('Retry-After'))
          problems.push(`${where} 503: no Retry-After header`);
      }
    }
  }
  assert.deepEqual(problems, []);
});
