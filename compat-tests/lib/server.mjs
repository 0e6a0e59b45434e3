// Starts the already-built oxibase binary on free ports with a temp data dir, and stops it.
// Builds nothing: run `cargo build` (or `cargo test`) first, or set OXIBASE_BIN.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync, rmSync, chmodSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

export const ANON_KEY =
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0';
export const SERVICE_KEY =
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU';
export const JWT_SECRET = 'super-secret-jwt-token-with-at-least-32-characters-long';

export const GENEROUS_AUTH_LIMITS = `[auth.rate_limit]
sign_in_sign_ups = 100000
token_verifications = 100000
token_refresh = 100000
anonymous_users = 100000
email_sent = 100000
sms_sent = 100000
`;

export function binaryPath() {
  if (process.env.OXIBASE_BIN) return process.env.OXIBASE_BIN;
  for (const profile of ['debug', 'release']) {
    const p = resolve(here, '..', '..', 'target', profile, 'oxibase');
    if (existsSync(p)) return p;
  }
  throw new Error('oxibase binary not found: run `cargo build` first or set OXIBASE_BIN');
}

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/**
 * Start a server. `toml` is extra config file text; `env` extra environment.
 * Resolves to { url, port, dbPort, dataDir, stop(), kill(), proc, logs() }.
 */
export async function startServer({ toml = '', env = {}, dataDir, ports } = {}) {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), 'oxibase-compat-'));
  chmodSync(dir, 0o755); // the postgres system user must enter it when we are root
  const port = ports?.port ?? (await freePort());
  const dbPort = ports?.dbPort ?? (await freePort());
  const configPath = join(dir, 'test.toml');
  // One server serves a whole file of tests, all from 127.0.0.1: the Supabase CLI's per-IP
  // auth limits (30 sign-ins per 5 minutes) would refuse them, so raise them unless the test
  // sets its own.
  const limits = /^\[auth\.rate_limit\]/m.test(toml) ? '' : GENEROUS_AUTH_LIMITS;
  writeFileSync(configPath, `db_fsync = false\nlog = "info"\n${toml}\n${limits}`);
  const proc = spawn(binaryPath(), ['serve', '--config', configPath], {
    env: {
      ...process.env,
      OXIBASE_PORT: String(port),
      OXIBASE_DB_PORT: String(dbPort),
      OXIBASE_DATA_DIR: dir,
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (d) => (out += d));
  proc.stderr.on('data', (d) => (out += d));
  const exited = new Promise((res) => proc.once('exit', (code, sig) => res({ code, sig })));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 90_000;
  for (;;) {
    const early = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 100))]);
    if (early) throw new Error(`oxibase exited early (${JSON.stringify(early)}):\n${out}`);
    try {
      const r = await fetch(`${url}/health`);
      if (r.status === 200) break;
    } catch {}
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      throw new Error(`oxibase not healthy after 90 s:\n${out}`);
    }
  }
  return {
    url,
    port,
    dbPort,
    dataDir: dir,
    proc,
    logs: () => out,
    exited,
    async stop({ keep = false } = {}) {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const r = await Promise.race([exited, new Promise((res) => setTimeout(() => res(null), 30_000))]);
      if (!r) proc.kill('SIGKILL');
      if (!keep && !dataDir) rmSync(dir, { recursive: true, force: true });
      return r;
    },
    kill() {
      proc.kill('SIGKILL');
      return exited;
    },
  };
}
