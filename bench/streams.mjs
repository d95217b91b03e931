#!/usr/bin/env node
// Streams phase of bench/run.sh: opens N concurrent SSE streams against one
// server, checks that every one of them is whole, and follows the server's
// memory (VmRSS of the given PIDs, summed) before, while and after they are
// open.
//
//   node bench/streams.mjs --url http://127.0.0.1:PORT --kind chatd|anthropic --n N
//        --pids PID[,PID...] --out FILE [--ramp STREAMS_PER_S] [--timeout S]
//        [--settle S] [--prefix P] [--model M] [--max-tokens N] [--system-json JSON]
//
// --kind chatd      POST /v1/chat/stream {"message","session_id"} (one fresh
//                   session per stream); whole = status 200, the body ends with
//                   the `done` event and has no `error` event.
// --kind anthropic  POST /v1/messages with "stream": true (the fake itself, or
//                   nginx in front of it); whole = status 200 and the body ends
//                   with `message_stop`.
// The provider's pace (how long a stream stays open) is set on the fake by
// run.sh (scenario ttft_ms / gap_ms / reply_words); this client only opens,
// reads and checks. Streams are opened at --ramp per second (a listen backlog
// would otherwise drop SYNs of a burst of thousands, and the retransmission
// after 1 s would be measured instead of the server), each on its own
// connection. Every stream is destroyed at the deadline (--timeout seconds
// after the first one opened), so the client always ends; a stream cut there
// counts as failed.
//
// Memory: VmRSS is sampled every 100 ms. before = just before the first
// stream, at_all_open = the first sample taken while all N streams had their
// response headers and none had finished, at_most_open = the sample with the
// most streams open (open = response headers received, body not ended),
// peak = the largest sample, after = --settle seconds after the last stream
// ended. kib_per_open_stream = (at_most_open - before) / streams open then
// (the headline: equal to the all-open figure when all N were open at once);
// kib_per_stream = (peak - before) / N. returned = (peak - after) /
// (peak - before): 1 means everything the burst took was given back.
//
// Output: one JSON object in --out (and a one-line summary on stderr).
import fs from 'node:fs';
import http from 'node:http';

function parseArgs(argv) {
  const o = {
    url: null, kind: 'chatd', n: 100, pids: [], out: null, ramp: 4000, timeout: 60, settle: 3,
    prefix: 'st', model: 'claude-sonnet-4-6', maxTokens: 1024, systemJson: '"You are a helpful AI assistant."',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${a}`);
      return argv[++i];
    };
    if (a === '--url') o.url = new URL(v());
    else if (a === '--kind') o.kind = v();
    else if (a === '--n') o.n = Number(v());
    else if (a === '--pids') o.pids = v().split(',').filter(Boolean).map(Number);
    else if (a === '--out') o.out = v();
    else if (a === '--ramp') o.ramp = Number(v());
    else if (a === '--timeout') o.timeout = Number(v());
    else if (a === '--settle') o.settle = Number(v());
    else if (a === '--prefix') o.prefix = v();
    else if (a === '--model') o.model = v();
    else if (a === '--max-tokens') o.maxTokens = Number(v());
    else if (a === '--system-json') o.systemJson = v();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.url || !o.out) throw new Error('--url and --out are required');
  if (o.kind !== 'chatd' && o.kind !== 'anthropic') throw new Error('--kind must be chatd or anthropic');
  for (const k of ['n', 'ramp', 'timeout']) {
    if (!Number.isFinite(o[k]) || o[k] <= 0) throw new Error(`--${k} must be a positive number`);
  }
  return o;
}

const O = parseArgs(process.argv.slice(2));
const SYSTEM = JSON.parse(O.systemJson);

function rssKb() {
  let total = 0;
  for (const pid of O.pids) {
    try {
      const m = /^VmRSS:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) total += Number(m[1]);
    } catch {
      // a process that went away adds nothing
    }
  }
  return total;
}

function body(i) {
  const text = `stream ${O.prefix}-${i}`;
  if (O.kind === 'chatd') return JSON.stringify({ message: text, session_id: `${O.prefix}-${i}` });
  return JSON.stringify({
    model: O.model, max_tokens: O.maxTokens, system: SYSTEM, stream: true,
    messages: [{ role: 'user', content: text }],
  });
}

const headers = O.kind === 'chatd'
  ? { 'content-type': 'application/json', accept: 'text/event-stream' }
  : { 'content-type': 'application/json', 'x-api-key': 'bench', 'anthropic-version': '2023-06-01' };
const endMark = O.kind === 'chatd' ? 'event: done' : 'event: message_stop';
const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });

const st = {
  started: 0, headers: 0, open: 0, maxOpen: 0, ended: 0, whole: 0,
  failures: {}, durationsMs: [], ttfbMs: [],
};
const fail = (why) => { st.failures[why] = (st.failures[why] || 0) + 1; };
const live = new Set();
const t0 = performance.now();
const samples = [];
let allOpenRss = null;
let allOpenAt = null;
let bestOpen = 0; // the most streams open at one sample, and the RSS then
let bestOpenRss = null;
const before = rssKb();
let peak = before;

function sample() {
  const kb = rssKb();
  if (kb > peak) peak = kb;
  samples.push([Math.round(performance.now() - t0), st.open, kb]);
  if (st.open > bestOpen) {
    bestOpen = st.open;
    bestOpenRss = kb;
  }
  if (allOpenRss === null && st.headers === O.n && st.ended === 0) {
    allOpenRss = kb;
    allOpenAt = (performance.now() - t0) / 1000;
  }
}
const sampler = setInterval(sample, 100);

let finished;
const allDone = new Promise((r) => { finished = r; });
function settleOne() {
  if (st.ended === O.n) finished();
}

// The end event is there, and no other event follows it.
function endsWell(tail) {
  const k = tail.lastIndexOf(endMark);
  return k >= 0 && tail.indexOf('\nevent:', k + 1) < 0;
}

function openOne(i) {
  const start = performance.now();
  st.started++;
  let done = false;
  let gotHeaders = false;
  let tail = '';
  let errorEvent = false;
  const payload = body(i);
  const end = (why) => {
    if (done) return;
    done = true;
    live.delete(req);
    if (gotHeaders) st.open--;
    st.ended++;
    if (why === null) {
      st.whole++;
      st.durationsMs.push(performance.now() - start);
    } else {
      fail(why);
    }
    settleOne();
  };
  const req = http.request({
    host: O.url.hostname, port: O.url.port, method: 'POST',
    path: O.kind === 'chatd' ? '/v1/chat/stream' : '/v1/messages',
    headers: { ...headers, 'content-length': Buffer.byteLength(payload) }, agent,
  }, (res) => {
    gotHeaders = true;
    st.headers++;
    st.open++;
    if (st.open > st.maxOpen) st.maxOpen = st.open;
    st.ttfbMs.push(performance.now() - start);
    res.setEncoding('utf8');
    res.on('data', (chunk) => {
      const s = tail + chunk;
      if (s.includes('event: error')) errorEvent = true;
      tail = s.slice(-4096);
    });
    res.on('end', () => {
      if (res.statusCode !== 200) end(`status ${res.statusCode}`);
      else if (errorEvent) end('error event');
      else if (!endsWell(tail)) end('cut (no end event)');
      else end(null);
    });
    res.on('error', (e) => end(`response ${e.code || e.message}`));
    res.on('aborted', () => end('aborted'));
  });
  req.on('error', (e) => end(`socket ${e.code || e.message}`));
  live.add(req);
  req.end(payload);
}

// Ramp: a batch every 10 ms.
const perTick = Math.max(1, Math.ceil(O.ramp / 100));
let next = 0;
await new Promise((resolve) => {
  const tick = () => {
    for (let k = 0; k < perTick && next < O.n; k++) openOne(next++);
    if (next < O.n) setTimeout(tick, 10);
    else resolve();
  };
  tick();
});
const rampS = (performance.now() - t0) / 1000;

const deadline = setTimeout(() => {
  for (const r of live) r.destroy(new Error('deadline'));
}, O.timeout * 1000);
await allDone;
clearTimeout(deadline);
const lastEnd = (performance.now() - t0) / 1000;
sample();
await new Promise((r) => setTimeout(r, O.settle * 1000));
clearInterval(sampler);
const after = rssKb();
samples.push([Math.round(performance.now() - t0), st.open, after]);

function pct(xs, p) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))] * 10) / 10;
}
const grown = peak - before;
const result = {
  kind: O.kind, url: O.url.href, n: O.n, ramp_per_s: O.ramp, ramp_s: Math.round(rampS * 1000) / 1000,
  got_headers: st.headers, whole: st.whole, failed: O.n - st.whole, failures: st.failures,
  max_open: st.maxOpen, all_open_at_s: allOpenAt, last_end_s: Math.round(lastEnd * 1000) / 1000,
  ttfb_ms: { p50: pct(st.ttfbMs, 50), p99: pct(st.ttfbMs, 99), max: pct(st.ttfbMs, 100) },
  duration_ms: { p50: pct(st.durationsMs, 50), p99: pct(st.durationsMs, 99), max: pct(st.durationsMs, 100) },
  pids: O.pids,
  rss_kb: { before, at_all_open: allOpenRss, at_most_open: bestOpenRss, peak, after },
  most_open_at_a_sample: bestOpen,
  kib_per_open_stream: bestOpen ? Math.round(((bestOpenRss - before) / bestOpen) * 10) / 10 : null,
  kib_per_stream: Math.round((grown / O.n) * 10) / 10,
  returned: grown > 0 ? Math.round(((peak - after) / grown) * 1000) / 1000 : null,
  settle_s: O.settle,
  samples,
};
fs.writeFileSync(O.out, JSON.stringify(result) + '\n');
process.stderr.write(`bench: streams ${O.kind} ${O.url.host}: ${st.whole}/${O.n} whole, max open ${st.maxOpen}, ` +
  `RSS ${before} -> peak ${peak} -> after ${after} KiB, ${result.kib_per_open_stream} KiB per open stream\n`);
process.exit(0);
