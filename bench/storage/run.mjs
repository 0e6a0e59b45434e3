// Storage throughput benchmark (not part of CI).
//
//   cargo build --release && node bench/storage/run.mjs
//   (OXIBASE_BIN=path to pick another binary; BENCH_SMALL_N / BENCH_LARGE_N to resize)
//
// Starts a private oxibase (local-file storage), then for 100 KiB and 100 MiB objects
// measures upload and download throughput over HTTP (service key, raw bodies, several
// requests in flight for the small ones) next to a plain file copy of the same bytes on
// the same disk, and reports the server's peak memory (VmHWM) before and after.
import crypto from 'node:crypto';
import { readFileSync, writeFileSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const lib = resolve(here, '..', '..', 'compat-tests', 'lib', 'server.mjs');
if (!process.env.OXIBASE_BIN) {
  const rel = resolve(here, '..', '..', 'target', 'release', 'oxibase');
  try {
    readFileSync(rel, { flag: 'r' }).length;
    process.env.OXIBASE_BIN = rel;
  } catch {}
}
const { startServer, SERVICE_KEY } = await import(lib);

const KiB = 1024;
const MiB = 1024 * KiB;
const SMALL = 100 * KiB;
const LARGE = 100 * MiB;
const SMALL_N = Number(process.env.BENCH_SMALL_N ?? 500);
const LARGE_N = Number(process.env.BENCH_LARGE_N ?? 3);
const CONCURRENCY = 8;

const peak = (pid) => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;
const mbps = (bytes, ms) => (bytes / MiB / (ms / 1000)).toFixed(1);

async function pool(n, f) {
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < n) await f(next++);
  }));
}

function plainCopy(size, n) {
  const dir = mkdtempSync(join(tmpdir(), 'oxibase-bench-copy-'));
  try {
    const src = join(dir, 'src');
    writeFileSync(src, crypto.randomBytes(size));
    const t0 = performance.now();
    for (let i = 0; i < n; i++) copyFileSync(src, join(dir, `dst-${i}`));
    const write = performance.now() - t0;
    const t1 = performance.now();
    for (let i = 0; i < n; i++) readFileSync(join(dir, `dst-${i}`));
    const read = performance.now() - t1;
    return { write, read };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const server = await startServer({ toml: '[storage]\nfile_size_limit = 1073741824\n' });
const base = `${server.url}/storage/v1`;
const auth = { Authorization: `Bearer ${SERVICE_KEY}` };
const rows = [];
try {
  await fetch(`${base}/bucket`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'bench' }) });
  const peakStart = peak(server.proc.pid);
  for (const [label, size, n] of [['100 KiB', SMALL, SMALL_N], ['100 MiB', LARGE, LARGE_N]]) {
    const body = crypto.randomBytes(size);
    const t0 = performance.now();
    await pool(n, async (i) => {
      const r = await fetch(`${base}/object/bench/${label.replace(' ', '')}/${i}`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/octet-stream' },
        body,
      });
      if (r.status !== 200) throw new Error(`upload ${r.status}: ${await r.text()}`);
    });
    const up = performance.now() - t0;
    const t1 = performance.now();
    await pool(n, async (i) => {
      const r = await fetch(`${base}/object/bench/${label.replace(' ', '')}/${i}`, { headers: auth });
      let got = 0;
      for await (const c of r.body) got += c.length;
      if (got !== size) throw new Error(`download got ${got}`);
    });
    const down = performance.now() - t1;
    const copy = plainCopy(size, n);
    rows.push({
      object: label,
      count: n,
      'upload MiB/s': mbps(size * n, up),
      'download MiB/s': mbps(size * n, down),
      'plain copy MiB/s': mbps(size * n, copy.write),
      'plain read MiB/s': mbps(size * n, copy.read),
      'upload req/s': (n / (up / 1000)).toFixed(0),
    });
  }
  const peakEnd = peak(server.proc.pid);
  console.table(rows);
  console.log(`server peak memory (VmHWM): ${peakStart.toFixed(1)} MiB after start, ${peakEnd.toFixed(1)} MiB after the run`);
  console.log(`binary: ${process.env.OXIBASE_BIN ?? 'target/debug/oxibase'}`);
} finally {
  await server.stop();
}
