// The README's quick starts (examples/node with supabase-js, examples/python with the
// `supabase` PyPI client) run as child processes against the test server, as a new user
// would run them: each must finish every step and say so.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { URL, ANON_KEY } from '../lib/env.mjs';

const examples = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'examples');
// The Python compat tests' environment (.ci/run makes it, with the same supabase pin), else python3.
const venv = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'python', '.venv', 'bin', 'python');
const python = existsSync(venv) ? venv : 'python3';
const env = { ...process.env, SUPABASE_URL: URL, SUPABASE_ANON_KEY: ANON_KEY };

function run(cmd, args, cwd) {
  return new Promise((res) => {
    const started = Date.now();
    execFile(cmd, args, { cwd, env, timeout: 90_000 }, (error, stdout, stderr) =>
      res({ code: error ? (error.code ?? 1) : 0, stdout, stderr, ms: Date.now() - started }),
    );
  });
}

const STEPS = [
  /^ok {2}signed up/m,
  /^ok {2}inserted and read a conversation: \d+ visible to its owner, 0 to anyone else/m,
  /^ok {2}realtime delivered the new message: .*Hi there!/m,
  /^ok {2}uploaded and read back/m,
  /^ok {2}code-execution ran Python: stdout 45/m,
  /^All done\.$/m,
];

test('examples/node quick start (supabase-js)', { timeout: 180_000 }, async () => {
  const dir = join(examples, 'node');
  if (!existsSync(join(dir, 'node_modules'))) {
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: dir, stdio: 'inherit' });
  }
  // Node 20 has WebSocket behind a flag (22+ has it on).
  const r = await run(process.execPath, ['--experimental-websocket', 'quickstart.mjs'], dir);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  for (const s of STEPS) assert.match(r.stdout, s);
  assert.ok(r.ms < 60_000, `ran in ${r.ms} ms`);
});

test('examples/python quick start (supabase-py)', { timeout: 120_000 }, async () => {
  const probe = await run(python, ['-c', 'import supabase'], examples);
  assert.equal(
    probe.code,
    0,
    `the Python client is not installed: pip install -r examples/python/requirements.txt (.ci/run installs compat-tests/python/requirements.txt, the same pin, into compat-tests/python/.venv)\n${probe.stderr}`,
  );
  const r = await run(python, ['quickstart.py'], join(examples, 'python'));
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  for (const s of STEPS) assert.match(r.stdout, s);
  assert.ok(r.ms < 60_000, `ran in ${r.ms} ms`);
});
