// servers.mjs: the fake LLM provider and a real chatd on ephemeral 127.0.0.1 ports,
// for the official `openai` SDK tests in this directory. chatd is found through
// CHATD_BIN (default build/chatd, relative to the repository root); each chatd
// gets its own temporary database. Both are stopped by PID: SIGTERM, then
// SIGKILL after 10 s; stopChatd reports chatd's exit code (0 expected).

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ANTHROPIC_KEY = 'sk-ant-sdk-test';
export const OPENAI_KEY = 'sk-openai-sdk-test';
const READY_TIMEOUT_MS = 15000;

export function chatdBin() {
  const bin = process.env.CHATD_BIN || 'build/chatd';
  return path.isAbsolute(bin) ? bin : path.join(REPO_ROOT, bin);
}

/** Spawns cmd; resolves {child, value, lines} with the first defined match(line) on the chosen stream. */
function spawnUntil(cmd, args, { env, stream, match, name }) {
  const child = spawn(cmd, args, { env, cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
      reject(new Error(`${name} not ready after ${READY_TIMEOUT_MS} ms:\n${lines.join('\n')}`));
    }, READY_TIMEOUT_MS);
    let ready = false;
    const onLine = (watch) => (line) => {
      lines.push(line);
      if (lines.length > 300) lines.shift();
      if (ready || !watch) return;
      const v = match(line);
      if (v !== undefined) {
        ready = true;
        clearTimeout(timer);
        resolve({ child, value: v, lines });
      }
    };
    createInterface({ input: child.stdout }).on('line', onLine(stream === 'stdout'));
    createInterface({ input: child.stderr }).on('line', onLine(stream === 'stderr'));
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      if (!ready) reject(new Error(`${name} exited (${code ?? sig}) before it was ready:\n${lines.join('\n')}`));
    });
  });
}

/** SIGTERM by PID, SIGKILL after 10 s; resolves {code, signal, killed}. */
function stopChild(child) {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve({ code: child.exitCode, signal: child.signalCode, killed: false });
  }
  return new Promise((resolve) => {
    let killed = false;
    const t = setTimeout(() => {
      killed = true;
      try { process.kill(child.pid, 'SIGKILL'); } catch { /* gone */ }
    }, 10000);
    child.once('exit', (code, signal) => { clearTimeout(t); resolve({ code, signal, killed }); });
    try { process.kill(child.pid, 'SIGTERM'); } catch { /* gone */ }
  });
}

/** The fake provider (tests/fake_llm/server.mjs) with its control API. */
export async function startFake() {
  const { child, value: port } = await spawnUntil(process.execPath,
    [path.join(REPO_ROOT, 'tests', 'fake_llm', 'server.mjs'), '--port', '0', '--host', '127.0.0.1'], {
      env: process.env, stream: 'stdout', name: 'fake provider',
      match: (l) => {
        const m = /^LISTENING (\d+)$/.exec(l);
        return m ? Number(m[1]) : undefined;
      },
    });
  const url = `http://127.0.0.1:${port}`;
  const ctl = async (p, body) => {
    const r = await fetch(url + p, body === undefined ? {} : { method: 'POST', body: JSON.stringify(body) });
    const j = await r.json();
    if (r.status !== 200) throw new Error(`fake ${p}: ${r.status} ${JSON.stringify(j)}`);
    return j;
  };
  return {
    url,
    child,
    /** Replaces the script: {default, queue} (see tests/fake_llm/README.md). */
    script: (s) => ctl('/_fake/script', { default: s.default ?? null, queue: s.queue ?? [] }),
    reset: () => ctl('/_fake/reset', {}),
    /** The provider requests received since the last reset (both APIs), oldest first. */
    requests: async () => (await ctl('/_fake/requests')).requests.filter((q) => q.path.startsWith('/v1/')),
    stop: () => stopChild(child),
  };
}

/**
 * A chatd serving on an ephemeral port, in front of `fake`: Anthropic at the
 * fake, the openai provider at the fake's /v1 with a key (the fake's openai
 * variant wants one). extraEnv entries override; a null value removes one.
 */
export async function startChatd(fake, extraEnv = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'chatd-sdk-'));
  const env = {
    PATH: '/usr/bin:/bin',
    ANTHROPIC_API_KEY: ANTHROPIC_KEY,
    ANTHROPIC_BASE_URL: fake.url,
    OPENAI_BASE_URL: `${fake.url}/v1`,
    OPENAI_API_KEY: OPENAI_KEY,
    DATABASE_URL: `sqlite:///${path.join(dir, 'chatd.db')}`,
    PORT: '0',
    HOST: '127.0.0.1',
    WORKERS: '2',
    PROVIDER_MAX_RETRIES: '0',
    RATE_LIMIT: 'off',
    LOG_LEVEL: 'info',
  };
  for (const k of ['ASAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS']) if (process.env[k]) env[k] = process.env[k];
  for (const [k, v] of Object.entries(extraEnv)) {
    if (v === null || v === undefined) delete env[k];
    else env[k] = String(v);
  }
  let started;
  try {
    started = await spawnUntil(chatdBin(), ['serve'], {
      env, stream: 'stderr', name: 'chatd',
      match: (l) => {
        try {
          const o = JSON.parse(l);
          return o && o.msg === 'listening' ? Number(o.port) : undefined;
        } catch {
          return undefined;
        }
      },
    });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const url = `http://127.0.0.1:${started.value}`;
  return {
    url,
    baseURL: `${url}/v1`,
    child: started.child,
    lines: started.lines,
    /** Stops chatd and removes its database; resolves with its exit code (0 expected). */
    async stop() {
      const r = await stopChild(started.child);
      rmSync(dir, { recursive: true, force: true });
      return r;
    },
  };
}
