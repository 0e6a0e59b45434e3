// Client fail-over behind nginx: three oxibase processes on one database behind
// examples/scaleout/nginx.conf, K supabase-js clients subscribed to postgres_changes through
// nginx, rows inserted at a steady rate; one process is killed with SIGKILL. Prints, for the
// clients that were on it, the time until their channel was SUBSCRIBED again (through nginx,
// on a live process) and until their next change arrived, how many changes they missed in
// the gap (as in Supabase, changes committed while a client is away are not replayed), and
// checks the clients on the survivors missed nothing.
// usage: node --experimental-websocket bench/scaleout/failover.mjs [clients=9] [rows/s=20]
import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import { mkdtempSync, chmodSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(new URL('../../compat-tests/package.json', import.meta.url));
const { createClient } = require('@supabase/supabase-js');
const pg = require('pg');
const { startServer, freePort, ANON_KEY } = await import('../../compat-tests/lib/server.mjs');

const K = Number(process.argv[2] ?? 9);
const RATE = Number(process.argv[3] ?? 20);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const env = { OXIBASE_DB_POOL_SIZE: '4', OXIBASE_LOG: 'warn' };
const procs = [await startServer({ env })];
const dbUrl = `postgres://postgres:postgres@127.0.0.1:${procs[0].dbPort}/postgres`;
for (let i = 1; i < 3; i++) procs.push(await startServer({ env: { ...env, OXIBASE_DATABASE_URL: dbUrl } }));

// nginx with the example config, pointed at the three processes.
const dir = mkdtempSync(join(tmpdir(), 'oxibase-failover-'));
chmodSync(dir, 0o777);
const port = await freePort();
let conf = readFileSync(new URL('../../examples/scaleout/nginx.conf', import.meta.url), 'utf8').replace('listen 80;', `listen 127.0.0.1:${port};`);
const ups = conf.match(/10\.0\.0\.\d+:54321/g);
ups.forEach((u, i) => (conf = conf.replace(u, `127.0.0.1:${procs[i].port}`)));
writeFileSync(join(dir, 'oxibase.conf'), conf);
const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${dir}/${t};`).join(' ');
writeFileSync(
  join(dir, 'nginx.conf'),
  `daemon off; worker_processes 1; pid ${dir}/nginx.pid; error_log ${dir}/error.log warn;\n` +
    `events { worker_connections 1024; }\nhttp { access_log off; ${temp} include ${dir}/oxibase.conf; }\n`,
);
const nginx = spawn('nginx', ['-p', dir, '-e', `${dir}/error.log`, '-c', `${dir}/nginx.conf`], { stdio: 'ignore' });
const lb = `http://127.0.0.1:${port}`;
for (let i = 0; ; i++) {
  if ((await fetch(`${lb}/health`).catch(() => null))?.status === 200) break;
  if (i > 100) throw new Error('nginx did not start');
  await sleep(100);
}

const db = new pg.Client({ connectionString: dbUrl });
await db.connect();
await db.query(`drop table if exists public.bench_failover;
  create table public.bench_failover (id bigint primary key, at double precision not null);
  grant select on public.bench_failover to anon;
  alter publication supabase_realtime add table public.bench_failover;`);

const clients = [];
for (let k = 0; k < K; k++) {
  const c = { got: [], statuses: [], sb: createClient(lb, ANON_KEY, { auth: { persistSession: false } }) };
  clients.push(c);
  await new Promise((res) => {
    c.sb
      .channel(`failover-${k}`)
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'bench_failover' }, (e) => c.got.push({ id: e.new.id, t: performance.now() }))
      .subscribe((s) => {
        c.statuses.push({ s, t: performance.now() });
        if (s === 'SUBSCRIBED') res();
      });
  });
}
// Which process serves how many sockets (the one killed is the last started: an external one).
const socketsOn = async (p) => {
  const m = await (await fetch(`${p.url}/metrics`, { headers: { authorization: `Bearer ${(await import('../../compat-tests/lib/server.mjs')).SERVICE_KEY}` } })).text();
  return Number(m.match(/^oxibase_realtime_open\{kind="sockets"\} (\d+)/m)?.[1] ?? NaN);
};
const spread = await Promise.all(procs.map(socketsOn));

let id = 0;
let writing = true;
const writer = (async () => {
  const t0 = performance.now();
  while (writing) {
    await db.query('insert into public.bench_failover (id, at) values ($1, $2)', [id, performance.now()]);
    id++;
    const ahead = t0 + (id * 1000) / RATE - performance.now();
    if (ahead > 0) await sleep(ahead);
  }
})();
await sleep(2000);
const killedAt = performance.now();
const idAtKill = id;
await procs[2].kill();
await sleep(15_000);
writing = false;
await writer;
await sleep(1000);

const all = Array.from({ length: id }, (_, i) => i);
const report = { clients: K, rate: RATE, sockets_per_process_before: spread.join('/'), moved: [], stayed_complete: 0, stayed_incomplete: 0 };
for (const c of clients) {
  const lost = c.statuses.find((x) => x.t > killedAt && x.s !== 'SUBSCRIBED');
  const ids = new Set(c.got.map((g) => g.id));
  const dups = c.got.length - ids.size;
  if (!lost) {
    if (all.every((i) => ids.has(i)) && dups === 0) report.stayed_complete++;
    else report.stayed_incomplete++;
    continue;
  }
  const back = c.statuses.find((x) => x.t > lost.t && x.s === 'SUBSCRIBED');
  const next = c.got.find((g) => g.t > killedAt && g.id >= idAtKill);
  report.moved.push({
    resubscribed_ms: back ? Math.round(back.t - killedAt) : null,
    next_change_ms: next ? Math.round(next.t - killedAt) : null,
    missed: all.filter((i) => !ids.has(i)).length,
    duplicates: dups,
  });
}
console.log(JSON.stringify(report, null, 2));

for (const c of clients) await c.sb.removeAllChannels();
await db.end();
nginx.kill();
for (const p of procs) await p.stop();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
