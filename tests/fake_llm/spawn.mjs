// spawn.mjs: starts and stops the fake provider (server.mjs) for the node
// test files of this directory, each on its own ephemeral port.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const SERVER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'server.mjs');

// Resolves to { child, port, base } once the fake printed its port.
export async function startFake(args = []) {
  const child = spawn(process.execPath, [SERVER, '--port', '0', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(/^LISTENING (\d+)\n$/);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', (code) => reject(new Error(`fake exited with ${code}`)));
  });
  return { child, port, base: `http://127.0.0.1:${port}` };
}

// SIGTERM, resolved once it exited.
export function stopFake(f) {
  return new Promise((resolve) => {
    if (f.child.exitCode !== null) return resolve();
    f.child.on('exit', resolve);
    f.child.kill('SIGTERM');
  });
}
