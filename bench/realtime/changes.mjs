// postgres_changes benchmark: S subscribers (service_role, no RLS work, or one user each with
// RLS) on a bench table; R rows inserted one by one; reports insert-to-delivery latency.
// usage: node --experimental-websocket bench/realtime/changes.mjs [subscribers] [rows] [rls|norls] [gap ms]
// env: OXIBASE_URL (default http://127.0.0.1:54321), OXIBASE_DB_URL (default the embedded
// superuser URL on 54322). Needs `npm ci --prefix compat-tests` (it borrows `pg` from there).
import { createRequire } from 'node:module';
import crypto from 'node:crypto';
const require = createRequire(new URL('../../compat-tests/package.json', import.meta.url));
const pg = require('pg');

const URL_ = process.env.OXIBASE_URL ?? 'http://127.0.0.1:54321';
const DB = process.env.OXIBASE_DB_URL ?? 'postgres://postgres:postgres@127.0.0.1:54322/postgres';
const SECRET = process.env.OXIBASE_JWT_SECRET ?? 'super-secret-jwt-token-with-at-least-32-characters-long';
const SUBS = Number(process.argv[2] ?? 20);
const ROWS = Number(process.argv[3] ?? 200);
const RLS = process.argv[4] === 'rls';
const GAP = Number(process.argv[5] ?? 0);

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
function jwt(claims) {
  const h = b64({ alg: 'HS256', typ: 'JWT' });
  const p = b64({ ...claims, exp: Math.floor(Date.now() / 1000) + 3600 });
  return `${h}.${p}.${crypto.createHmac('sha256', SECRET).update(`${h}.${p}`).digest('base64url')}`;
}

const db = new pg.Client({ connectionString: DB });
await db.connect();
await db.query(`
  create table if not exists public.rt_bench (id bigint generated always as identity primary key,
    owner uuid, sent double precision, body text);
  alter table public.rt_bench enable row level security;
  drop policy if exists rt_bench_all on public.rt_bench;
  create policy rt_bench_all on public.rt_bench for select to authenticated using (true);
  do $$ begin
    if not exists (select 1 from pg_publication_tables where pubname = 'supabase_realtime' and tablename = 'rt_bench')
    then alter publication supabase_realtime add table public.rt_bench; end if;
  end $$;`);

const key = jwt({ role: RLS ? 'authenticated' : 'service_role', sub: crypto.randomUUID() });
const wsUrl = `${URL_.replace(/^http/, 'ws')}/realtime/v1/websocket?apikey=${key}&vsn=2.0.0`;
const lat = [];
let got = 0;
let resolveAll;
const all = new Promise((r) => (resolveAll = r));
const sockets = [];
for (let i = 0; i < SUBS; i++) {
  const ws = new WebSocket(wsUrl);
  await new Promise((r, j) => ((ws.onopen = r), (ws.onerror = j)));
  const token = RLS ? jwt({ role: 'authenticated', sub: crypto.randomUUID() }) : key;
  await new Promise((resolve) => {
    ws.onmessage = (ev) => {
      const [, ref, , event, payload] = JSON.parse(ev.data);
      if (event === 'phx_reply' && ref === '1') resolve();
      if (event === 'postgres_changes') {
        lat.push(Date.now() - payload.data.record.sent);
        if (++got === SUBS * ROWS) resolveAll();
      }
    };
    ws.send(JSON.stringify(['1', '1', `realtime:bench-${i}`, 'phx_join', {
      config: { postgres_changes: [{ event: 'INSERT', schema: 'public', table: 'rt_bench' }] },
      access_token: token,
    }]));
  });
  sockets.push(ws);
}
const start = Date.now();
for (let i = 0; i < ROWS; i++) {
  await db.query('insert into public.rt_bench (sent, body) values ($1, $2)', [Date.now(), `row ${i}`]);
  if (GAP) await new Promise((r) => setTimeout(r, GAP));
}
const r = await Promise.race([all, new Promise((res) => setTimeout(res, 60_000, 'timeout'))]);
lat.sort((a, b) => a - b);
const pct = (p) => lat[Math.min(lat.length - 1, Math.floor((lat.length * p) / 100))];
console.log(JSON.stringify({
  subscribers: SUBS, rows: ROWS, rls: RLS, delivered: got, expected: SUBS * ROWS, timed_out: r === 'timeout',
  seconds: (Date.now() - start) / 1000, latency_ms: { p50: pct(50), p95: pct(95), p99: pct(99), max: lat.at(-1) },
}));
for (const ws of sockets) ws.close();
await db.query('drop table public.rt_bench');
await db.end();
