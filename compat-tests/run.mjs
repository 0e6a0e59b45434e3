// The compat harness: start the built binary once, run every test file against it with
// node's test runner, stop it. Tests that need their own server use lib/server.mjs.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { startServer } from './lib/server.mjs';

const server = await startServer();
let code = 1;
try {
  const files = readdirSync('test')
    .filter((f) => f.endsWith('.test.mjs'))
    .filter((f) => !process.argv[2] || f.includes(process.argv[2]))
    .map((f) => `test/${f}`);
  const child = files.length && spawn(process.execPath, ['--experimental-websocket', '--test', '--test-concurrency=1', '--test-force-exit', ...files], {
    stdio: 'inherit',
    env: {
      ...process.env,
      OXIBASE_URL: server.url,
      OXIBASE_TEST_DB_URL: `postgres://postgres:postgres@127.0.0.1:${server.dbPort}/postgres`,
    },
  });
  code = files.length ? await new Promise((res) => child.once('exit', (c) => res(c ?? 1))) : 0;
  // `npm test` runs both parts; `npm test -- python` only the Python one
  if (!process.argv[2] || process.argv[2] === 'python') code = (await runPython()) || code;
} finally {
  const r = await server.stop();
  if (r && r.code !== 0) {
    console.error(`oxibase exited with ${JSON.stringify(r)} on SIGTERM; log:\n${server.logs()}`);
    code = code || 1;
  }
}
process.exit(code);

// The Python part: pytest on the real supabase-py client (python/), which starts its own
// oxibase. The interpreter: $OXIBASE_PYTHON, else python/.venv (what .ci/run makes), else python3.
async function runPython() {
  const py = process.env.OXIBASE_PYTHON ?? (existsSync('python/.venv/bin/python') ? 'python/.venv/bin/python' : 'python3');
  if (spawnSync(py, ['-c', 'import supabase, pytest, pytest_asyncio'], { stdio: 'ignore' }).status !== 0) {
    console.error(`python compat tests: ${py} lacks the pinned packages; run\n` +
      '  python3 -m venv compat-tests/python/.venv && compat-tests/python/.venv/bin/pip install -r compat-tests/python/requirements.txt');
    return 1;
  }
  const child = spawn(py, ['-m', 'pytest', '-q', '-c', 'python/pytest.ini', '--rootdir', 'python'], { stdio: 'inherit' });
  return new Promise((res) => child.once('exit', (c) => res(c ?? 1)));
}
