// The compat harness: start the built binary once, run every test file against it with
// node's test runner, stop it. Tests that need their own server use lib/server.mjs.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { startServer } from './lib/server.mjs';

const server = await startServer();
const SOLO = ['soak.test.mjs'];
let code = 1;
// `npm test` runs both parts; `npm test -- python` only the Python one. The Python part starts
// its own oxibase, so it runs beside the node part; its output is printed after the node part's.
const python = !process.argv[2] || process.argv[2] === 'python' ? runPython() : null;
try {
  const files = readdirSync('test')
    .filter((f) => f.endsWith('.test.mjs'))
    .filter((f) => !process.argv[2] || f.includes(process.argv[2]));
  // Two lanes side by side: the files on the shared server (they import lib/env.mjs) one after
  // another, and beside them the files that start servers of their own. The soak measures
  // latency and memory under its own load, so it runs last, alone.
  const shared = files.filter((f) => readFileSync(`test/${f}`, 'utf8').includes('lib/env.mjs'));
  const solo = files.filter((f) => SOLO.includes(f));
  const own = files.filter((f) => !shared.includes(f) && !solo.includes(f));
  const [a, b] = await Promise.all([nodeTests(shared, false), nodeTests(own, true)]);
  process.stdout.write(b.output);
  const c = await nodeTests(solo, false);
  code = a.code || b.code || c.code;
  if (python) {
    const py = await python;
    process.stdout.write(py.output);
    code = py.code || code;
  }
} finally {
  const r = await server.stop();
  if (r && r.code !== 0) {
    console.error(`oxibase exited with ${JSON.stringify(r)} on SIGTERM; log:\n${server.logs()}`);
    code = code || 1;
  }
}
process.exit(code);

// Run test files with node's test runner, one after another, against the shared server;
// `buffered` keeps the output until the end (for the lane printed second).
function nodeTests(files, buffered) {
  if (!files.length) return { code: 0, output: '' };
  const child = spawn(process.execPath, ['--experimental-websocket', '--test', '--test-concurrency=1', '--test-force-exit', ...files.map((f) => `test/${f}`)], {
    stdio: ['ignore', buffered ? 'pipe' : 'inherit', buffered ? 'pipe' : 'inherit'],
    env: {
      ...process.env,
      OXIBASE_URL: server.url,
      OXIBASE_TEST_DB_URL: `postgres://postgres:postgres@127.0.0.1:${server.dbPort}/postgres`,
    },
  });
  const chunks = [];
  if (buffered) {
    child.stdout.on('data', (c) => chunks.push(c));
    child.stderr.on('data', (c) => chunks.push(c));
  }
  return new Promise((res) => child.once('close', (c) => res({ code: c ?? 1, output: Buffer.concat(chunks).toString() })));
}

// The Python part: pytest on the real supabase-py client (python/), which starts its own
// oxibase. The interpreter: $OXIBASE_PYTHON, else python/.venv (what .ci/run makes), else python3.
async function runPython() {
  const py = process.env.OXIBASE_PYTHON ?? (existsSync('python/.venv/bin/python') ? 'python/.venv/bin/python' : 'python3');
  if (spawnSync(py, ['-c', 'import supabase, pytest, pytest_asyncio'], { stdio: 'ignore' }).status !== 0) {
    console.error(`python compat tests: ${py} lacks the pinned packages; run\n` +
      '  python3 -m venv compat-tests/python/.venv && compat-tests/python/.venv/bin/pip install -r compat-tests/python/requirements.txt');
    return { code: 1, output: '' };
  }
  const child = spawn(py, ['-m', 'pytest', '-q', '-c', 'python/pytest.ini', '--rootdir', 'python'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const chunks = [];
  child.stdout.on('data', (c) => chunks.push(c));
  child.stderr.on('data', (c) => chunks.push(c));
  return new Promise((res) => child.once('close', (c) => res({ code: c ?? 1, output: Buffer.concat(chunks).toString() })));
}
