// servers.mjs: starts the fake LLM provider and a real chatd on ephemeral ports
// for the JS client tests and the browser tests, waits until both are ready,
// and stops them by PID. chatd is found through CHATD_BIN (default build/chatd,
// relative to the repository root).

import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export function chatdBin() {
  const bin = process.env.CHATD_BIN || 'build/chatd';
  return path.isAbsolute(bin) ? bin : path.join(REPO_ROOT, bin);
}

const READY_TIMEOUT_MS = 15000;

let helpText = null;
/** True when this chatd binary knows the setting NAME (from `chatd --help`): features still being built are detected, not assumed. */
export function chatdSupports(name) {
  if (helpText === null) {
    const r = spawnSync(chatdBin(), ['--help'], { encoding: 'utf8' });
    helpText = `${r.stdout || ''}${r.stderr || ''}`;
  }
  return new RegExp(`\\b${name}\\b`).test(helpText);
}

// Every server still running when this process exits (a test that crashed or
// timed out before its after() hook) is killed by PID, so none is left behind.
const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try { process.kill(child.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
});

/** Spawns cmd and resolves with the first value `match(line)` returns for a line of `stream`. */
function spawnUntil(cmd, args, { env, stream, match, name }) {
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  child.on('exit', () => live.delete(child));
  const lines = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} not ready after ${READY_TIMEOUT_MS} ms:\n${lines.join('\n')}`));
    }, READY_TIMEOUT_MS);
    const keep = (l) => {
      lines.push(l);
      if (lines.length > 300) lines.shift(); // the last lines: a sanitizer report comes at the end
    };
    const onLine = (line) => {
      keep(line);
      const v = match(line);
      if (v !== undefined) {
        clearTimeout(timer);
        resolve({ child, value: v, lines });
      }
    };
    createInterface({ input: child.stdout }).on('line', stream === 'stdout' ? onLine : keep);
    createInterface({ input: child.stderr }).on('line', stream === 'stderr' ? onLine : keep);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${code ?? sig}) before it was ready:\n${lines.join('\n')}`));
    });
  });
}

/**
 * Sends SIGTERM to the child by PID, SIGKILL after 10 s; resolves with how it
 * exited: {code, signal, killed} (killed: it needed the SIGKILL).
 */
function stopChild(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child?.exitCode ?? null, signal: child?.signalCode ?? null, killed: false, early: true });
  }
  return new Promise((resolve) => {
    let killed = false;
    const kill = setTimeout(() => {
      killed = true;
      try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
    }, 10000);
    child.once('exit', (code, signal) => {
      clearTimeout(kill);
      resolve({ code, signal, killed, early: false });
    });
    try { process.kill(child.pid, 'SIGTERM'); } catch { clearTimeout(kill); resolve({ code: null, signal: null, killed: false }); }
  });
}

/** The fake provider: `{port, url, control: {script, reset, requests, waitForOutcome}, stop}`. */
export async function startFake() {
  const { child, value: port } = await spawnUntil(
    process.execPath, [path.join(REPO_ROOT, 'tests/fake_llm/server.mjs'), '--port', '0', '--host', '127.0.0.1'],
    { env: process.env, stream: 'stdout', name: 'fake provider', match: (l) => (/^LISTENING (\d+)$/.exec(l) || [])[1] });
  const url = `http://127.0.0.1:${port}`;
  const post = async (p, body) => {
    const r = await fetch(url + p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body ?? {}) });
    if (!r.ok) throw new Error(`fake ${p}: ${r.status} ${await r.text()}`);
    return r.json();
  };
  const requests = async () => (await (await fetch(url + '/_fake/requests')).json()).requests;
  return {
    port: Number(port),
    url,
    child,
    script: (s) => post('/_fake/script', s),
    reset: () => post('/_fake/reset'),
    requests,
    /** Polls the request log until a request whose last user text includes `marker` has `outcome`. */
    async waitForOutcome(marker, outcome, timeoutMs = 5000) {
      const deadline = Date.now() + timeoutMs;
      let last = null;
      while (Date.now() < deadline) {
        const reqs = await requests();
        last = reqs.filter((r) => JSON.stringify(r.body ?? '').includes(marker));
        if (last.some((r) => r.outcome === outcome)) return last.find((r) => r.outcome === outcome);
        await new Promise((res) => setTimeout(res, 50));
      }
      throw new Error(`no request with ${marker} reached outcome ${outcome}: ${JSON.stringify(last?.map((r) => r.outcome))}`);
    },
    stop: () => stopChild(child),
  };
}

/**
 * A chatd on an ephemeral port with its own SQLite file. `fakeUrl` is the
 * provider's base URL; `apiKey: null` starts it with no ANTHROPIC_API_KEY.
 * `env` adds settings.
 */
export async function startChatd({ fakeUrl, apiKey = 'k', env = {} } = {}) {
  const bin = chatdBin();
  if (!existsSync(bin)) throw new Error(`chatd binary not found at ${bin} (set CHATD_BIN)`);
  const dir = mkdtempSync(path.join(tmpdir(), 'chatd-js-'));
  const childEnv = {
    PATH: process.env.PATH,
    DATABASE_URL: `sqlite:///${path.join(dir, 'c.db')}`,
    PORT: '0',
    HOST: '127.0.0.1',
    WORKERS: '2',
    PROVIDER_MAX_RETRIES: '0',
    RATE_LIMIT: 'off', // tests that want the limiter set it

    ...(fakeUrl ? { ANTHROPIC_BASE_URL: fakeUrl } : {}),
    ...(apiKey ? { ANTHROPIC_API_KEY: apiKey } : {}),
    // Sanitizer settings of the ctest run reach the server too.
    ...(process.env.ASAN_OPTIONS ? { ASAN_OPTIONS: process.env.ASAN_OPTIONS } : {}),
    ...(process.env.UBSAN_OPTIONS ? { UBSAN_OPTIONS: process.env.UBSAN_OPTIONS } : {}),
    ...env,
  };
  const { child, value: port, lines } = await spawnUntil(bin, ['serve'], {
    env: childEnv, stream: 'stderr', name: 'chatd',
    match: (l) => {
      try {
        const j = JSON.parse(l);
        return j.msg === 'listening' ? j.port : undefined;
      } catch {
        return undefined;
      }
    },
  });
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    child,
    logs: lines,
    /** Stops chatd; throws when it did not exit cleanly (crash, sanitizer report, hang), with its last log lines. */
    async stop() {
      const how = await stopChild(child);
      rmSync(dir, { recursive: true, force: true });
      if (how.code !== 0 || how.killed) {
        throw new Error(`chatd did not exit cleanly (${JSON.stringify(how)}); last lines:\n${lines.slice(-60).join('\n')}`);
      }
    },
  };
}

/** Fake + chatd wired together; stop() stops both. */
export async function startStack(opts = {}) {
  const fake = await startFake();
  let chatd;
  try {
    chatd = await startChatd({ fakeUrl: fake.url, ...opts });
  } catch (e) {
    await fake.stop();
    throw e;
  }
  return {
    fake,
    chatd,
    url: chatd.url,
    async stop() {
      try {
        await chatd.stop();
      } finally {
        await fake.stop();
      }
    },
  };
}
