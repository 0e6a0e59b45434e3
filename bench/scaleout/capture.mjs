// Change-capture cost with one logical slot per process, at P processes on one database.
//
// Starts P oxibase processes (the first with the embedded PostgreSQL, the others pointed at
// it with OXIBASE_DATABASE_URL), subscribes one postgres_changes socket per process to
// INSERTs on a scratch table, then measures CPU time (utime+stime from /proc/<pid>/stat) of
// every oxibase process, of the PostgreSQL backends that read the slots, and of PostgreSQL
// in all (postmaster's live children plus what it reaped), in three phases:
//   idle    no writes: the cost of polling P slots;
//   changes R single-row inserts at a steady rate: the cost of P slots decoding each change;
//   notify  the same number of NOTIFYs on the realtime fan-out channel, each the size of one
//           change message, to a topic nobody joined: what an elected capturer fanning its
//           changes out to the other processes would make each of them and PostgreSQL pay.
// usage: node --experimental-websocket bench/scaleout/capture.mjs [processes=3] [rows=2000] [rows/s=200]
// env: OXIBASE_BIN (default target/debug, else target/release). Needs compat-tests' packages.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const require = createRequire(new URL('../../compat-tests/package.json', import.meta.url));
const { createClient } = require('@supabase/supabase-js');
const pg = require('pg');
const { startServer, ANON_KEY } = await import('../../compat-tests/lib/server.mjs');

const P = Number(process.argv[2] ?? 3);
const ROWS = Number(process.argv[3] ?? 2000);
const RATE = Number(process.argv[4] ?? 200);
const IDLE_S = 10;
const TICK = 100; // CLK_TCK on Linux
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function cpuOf(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // fields 14..17 of stat(5), counted from after the command name (field 3 is f[0])
    return { own: (Number(f[11]) + Number(f[12])) / TICK, reaped: (Number(f[13]) + Number(f[14])) / TICK };
  } catch {
    return { own: 0, reaped: 0 };
  }
}
const childrenOf = (ppid) =>
  readFileSync(`/proc/${ppid}/task/${ppid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);

// Flags/env > file: fsync on, as in production (with fsync off every process's capture also
// writes a WAL flush marker each poll, which the other slots then decode).
const env = { OXIBASE_DB_FSYNC: 'true', OXIBASE_DB_POOL_SIZE: '4', OXIBASE_LOG: 'warn' };
const procs = [await startServer({ env })];
const dbUrl = `postgres://postgres:postgres@127.0.0.1:${procs[0].dbPort}/postgres`;
for (let i = 1; i < P; i++) procs.push(await startServer({ env: { ...env, OXIBASE_DATABASE_URL: dbUrl } }));
const postmaster = Number(readFileSync(join(procs[0].dataDir, 'pg', 'postmaster.pid'), 'utf8').split('\n')[0]);

const db = new pg.Client({ connectionString: dbUrl });
await db.connect();
await db.query(`drop table if exists public.bench_capture;
  create table public.bench_capture (id bigint primary key, body text not null);
  grant select on public.bench_capture to anon;
  alter publication supabase_realtime add table public.bench_capture;`);

const got = procs.map(() => 0);
const clients = [];
for (const [i, p] of procs.entries()) {
  const c = createClient(p.url, ANON_KEY, { auth: { persistSession: false }, realtime: { heartbeatIntervalMs: 15000 } });
  clients.push(c);
  await new Promise((res, rej) => {
    c.channel(`bench-${i}`)
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'bench_capture' }, () => got[i]++)
      .subscribe((s, e) => (s === 'SUBSCRIBED' ? res() : s !== 'CLOSED' && rej(e ?? new Error(s))));
  });
}
const writerPid = (await db.query('select pg_backend_pid() pid')).rows[0].pid;
const slotPids = (await db.query(`select active_pid from pg_replication_slots where active_pid is not null`)).rows.map((r) => r.active_pid);
if (slotPids.length !== P) throw new Error(`expected ${P} slots, found ${slotPids.length}`);

function snapshot() {
  const pm = cpuOf(postmaster);
  let pgAll = pm.own + pm.reaped;
  for (const c of childrenOf(postmaster)) pgAll += cpuOf(c).own;
  return {
    ox: procs.map((p) => cpuOf(p.proc.pid).own),
    slots: slotPids.map((pid) => cpuOf(pid).own),
    pgAll,
    writer: cpuOf(writerPid).own,
    at: performance.now(),
  };
}
const sum = (xs) => xs.reduce((t, x) => t + x, 0);
/** CPU seconds spent between two snapshots, by part. */
function spent(a, b) {
  return {
    wall: (b.at - a.at) / 1000,
    ox: b.ox.map((x, i) => x - a.ox[i]),
    slots: sum(b.slots) - sum(a.slots),
    pg: b.pgAll - a.pgAll - (b.writer - a.writer),
    writer: b.writer - a.writer,
  };
}
const msPerS = (s, wall) => `${((s * 1000) / wall).toFixed(1)} ms/s`;
/** Per row, beyond what the same wall time costs at idle (the slots' polling). */
function perRow(d, idle, n) {
  const net = (s, idleS) => `${(((s - (idleS * d.wall) / idle.wall) * 1e6) / n).toFixed(0)} µs`;
  return {
    wall_s: d.wall.toFixed(1),
    oxibase_each: d.ox.map((x, i) => net(x, idle.ox[i])).join(', '),
    oxibase_all: net(sum(d.ox), sum(idle.ox)),
    slot_backends_all: net(d.slots, idle.slots),
    postgres_all_but_writer: net(d.pg, idle.pg),
    writer_backend: net(d.writer, 0),
  };
}

const body = 'x'.repeat(200);
const result = { processes: P, rows: ROWS, rate: RATE };

await sleep(2000);
let a = snapshot();
await sleep(IDLE_S * 1000);
const idle = spent(a, snapshot());
result.idle = {
  oxibase_each: idle.ox.map((x) => msPerS(x, idle.wall)).join(', '),
  slot_backends_all: msPerS(idle.slots, idle.wall),
  postgres_all: msPerS(idle.pg, idle.wall),
};

a = snapshot();
const t0 = performance.now();
for (let i = 0; i < ROWS; i++) {
  await db.query('insert into public.bench_capture (id, body) values ($1, $2)', [i, body]);
  const ahead = t0 + ((i + 1) * 1000) / RATE - performance.now();
  if (ahead > 0) await sleep(ahead);
}
const deadline = Date.now() + 120_000;
while (got.some((g) => g < ROWS) && Date.now() < deadline) await sleep(50);
result.changes_per_row = { ...perRow(spent(a, snapshot()), idle, ROWS), delivered: got.join('/') };

// One fan-out message per change, shaped and sized like realtime's own (a JSON broadcast to
// a topic no socket joined, from an origin no process has).
const payload = JSON.stringify({
  o: 'bench',
  t: 'bench-nobody',
  p: false,
  v: { type: 'broadcast', event: 'postgres_changes', payload: { data: { table: 'bench_capture', type: 'INSERT', record: { id: 1, body } } } },
});
a = snapshot();
const t1 = performance.now();
for (let i = 0; i < ROWS; i++) {
  await db.query(`select pg_notify('oxibase_realtime', $1)`, [payload]);
  const ahead = t1 + ((i + 1) * 1000) / RATE - performance.now();
  if (ahead > 0) await sleep(ahead);
}
await sleep(1000);
result.notify_per_message = perRow(spent(a, snapshot()), idle, ROWS);

console.log(JSON.stringify(result, null, 2));
for (const c of clients) await c.removeAllChannels();
await db.end();
for (const p of procs.reverse()) await p.stop();
process.exit(0);
