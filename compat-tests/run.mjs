// The compat harness: start the built binary once, run every test file against it with
// node's test runner, stop it. Tests that need their own server use lib/server.mjs.
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { startServer } from './lib/server.mjs';

const server = await startServer();
let code = 1;
try {
  const files = readdirSync('test')
    .filter((f) => f.endsWith('.test.mjs'))
    .filter((f) => !process.argv[2] || f.includes(process.argv[2]))
    .map((f) => `test/${f}`);
  const child = spawn(process.execPath, ['--experimental-websocket', '--test', '--test-concurrency=1', '--test-force-exit', ...files], {
    stdio: 'inherit',
    env: {
      ...process.env,
      OXIBASE_URL: server.url,
      OXIBASE_TEST_DB_URL: `postgres://postgres:postgres@127.0.0.1:${server.dbPort}/postgres`,
    },
  });
  code = await new Promise((res) => child.once('exit', (c) => res(c ?? 1)));
} finally {
  const r = await server.stop();
  if (r && r.code !== 0) {
    console.error(`oxibase exited with ${JSON.stringify(r)} on SIGTERM; log:\n${server.logs()}`);
    code = code || 1;
  }
}
process.exit(code);
