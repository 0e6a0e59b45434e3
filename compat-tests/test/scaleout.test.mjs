// Scale-out: three oxibase processes on ONE PostgreSQL and ONE S3 bucket (a local moto
// server), each reached by its own supabase-js clients, as behind a load balancer that sends
// each request anywhere. Process A runs the embedded PostgreSQL; B and C are pointed at it
// with OXIBASE_DATABASE_URL, as every process would be at an external database.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, chmodSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@supabase/supabase-js';
import { startServer, freePort, ANON_KEY, SERVICE_KEY, GENEROUS_AUTH_LIMITS } from '../lib/server.mjs';
import { subscribed, skipWithoutMoto } from '../lib/helpers.mjs';
import { sql as sqlOn } from '../lib/pg.mjs';

const skip = skipWithoutMoto();

// The same settings on every process, as a deployment would have them.
const TOML = `
[auth]
# Reuse of a rotated refresh token is detected at once (no grace period), so the test
# needs no wait.
refresh_token_reuse_interval = 0

${GENEROUS_AUTH_LIMITS}password_failures_per_account = 4

[functions]
code_max_concurrent = 1
code_queue_timeout_ms = 500
`;

const opts = { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } };
let moto;
let s3;
let motoEnv;
let dbUrl;
const procs = {}; // name -> server
const clients = [];

function client(proc, { key = ANON_KEY, token } = {}) {
  const c = createClient(procs[proc].url, key, {
    ...opts,
    ...(token ? { accessToken: async () => token } : {}),
    realtime: { heartbeatIntervalMs: 5000 },
  });
  clients.push(c);
  return c;
}
const sql = (text, params = []) => sqlOn(text, params, dbUrl);
const uniq = (p) => `${p}-${crypto.randomBytes(5).toString('hex')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  if (skip) return;
  const motoPort = await freePort();
  moto = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(motoPort)], { stdio: 'ignore' });
  s3 = `http://127.0.0.1:${motoPort}`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${s3}/`)).status < 500) break;
    } catch {}
    if (i > 150) throw new Error('moto did not start');
    await sleep(100);
  }
  assert.equal((await fetch(`${s3}/oxi-scale`, { method: 'PUT' })).status, 200);
  const env = {
    OXIBASE_STORAGE_URL: 's3://oxi-scale/shared',
    AWS_ENDPOINT_URL: s3,
    AWS_ACCESS_KEY_ID: 'test',
    AWS_SECRET_ACCESS_KEY: 'test',
    AWS_REGION: 'us-east-1',
  };
  procs.A = await startServer({ toml: TOML, env });
  dbUrl = `postgres://postgres:postgres@127.0.0.1:${procs.A.dbPort}/postgres`;
  motoEnv = env;
  const ext = { ...env, OXIBASE_DATABASE_URL: dbUrl };
  // B and C start together, as a rolling deployment might start them.
  [procs.B, procs.C] = await Promise.all([startServer({ toml: TOML, env: ext }), startServer({ toml: TOML, env: ext })]);
  await sql(`
    create table if not exists public.scaleout_ticks (id bigint primary key, note text);
    grant select on public.scaleout_ticks to anon, authenticated;
    grant all on public.scaleout_ticks to service_role;
    alter publication supabase_realtime add table public.scaleout_ticks;`);
});

after(async () => {
  for (const c of clients) await c.removeAllChannels().catch(() => {});
  for (const p of Object.values(procs)) await p.stop();
  if (moto) moto.kill();
});


/** Resolves when `check()` holds (polled), fails after `ms` with `what`. */
async function until(what, check, ms = 15_000) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) assert.fail(`not within ${ms} ms: ${what}`);
    await sleep(25);
  }
}

async function signUp(proc, label) {
  const sb = client(proc);
  const email = `${label}-${crypto.randomUUID().slice(0, 8)}@scale.test`;
  const { data, error } = await sb.auth.signUp({ email, password: 'hunter22' });
  assert.equal(error, null);
  return { email, id: data.user.id, session: data.session, token: data.session.access_token };
}

test('auth: a session made on A refreshes on B; a reused refresh token is caught on C', { skip, timeout: 60_000 }, async () => {
  const u = await signUp('A', 'refresh');
  const t0 = u.session.refresh_token;
  const onB = await client('B').auth.refreshSession({ refresh_token: t0 });
  assert.equal(onB.error, null);
  assert.equal(onB.data.user.id, u.id);
  const t1 = onB.data.session.refresh_token;
  assert.notEqual(t1, t0);
  // The access token minted by B is good on C.
  const { data: me, error: meErr } = await client('C').auth.getUser(onB.data.session.access_token);
  assert.equal(meErr, null);
  assert.equal(me.user.id, u.id);
  const onA = await client('A').auth.refreshSession({ refresh_token: t1 });
  assert.equal(onA.error, null);
  const t2 = onA.data.session.refresh_token;
  // t0 again, on a third process: reuse, and the whole session is revoked.
  const reused = await client('C').auth.refreshSession({ refresh_token: t0 });
  assert.equal(reused.error?.code, 'refresh_token_already_used', JSON.stringify(reused.error));
  const after = await client('B').auth.refreshSession({ refresh_token: t2 });
  assert.ok(after.error, 'the session is revoked everywhere');
});

test('auth: rate limits count hits on every process together', { skip, timeout: 60_000 }, async () => {
  const u = await signUp('C', 'limits');
  const wrong = (proc) => client(proc).auth.signInWithPassword({ email: u.email, password: 'wrong-password' });
  // The limit is 4 failures per account: two on A and two on B...
  for (const p of ['A', 'A', 'B', 'B']) {
    const r = await wrong(p);
    assert.equal(r.error?.status, 400, `${p}: ${JSON.stringify(r.error)}`);
  }
  // ...so C refuses the fifth attempt, even with the right password.
  const r = await client('C').auth.signInWithPassword({ email: u.email, password: 'hunter22' });
  assert.equal(r.error?.status, 429, JSON.stringify(r.error));
  assert.equal(r.error?.code, 'over_request_rate_limit');
});

test('realtime: postgres_changes reach subscribers on every process', { skip, timeout: 60_000 }, async () => {
  const got = { A: [], B: [], C: [] };
  for (const p of Object.keys(got)) {
    const ch = client(p)
      .channel(uniq('pg'))
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'scaleout_ticks' }, (e) => got[p].push(e.new.id));
    await subscribed(ch, 10_000);
  }
  const svc = client('B', { key: SERVICE_KEY });
  const { error } = await svc.from('scaleout_ticks').insert([{ id: 1, note: 'one' }, { id: 2, note: 'two' }]);
  assert.equal(error, null);
  await until('every process delivered both rows', () => Object.values(got).every((g) => g.length >= 2));
  await sleep(300);
  for (const [p, g] of Object.entries(got)) assert.deepEqual(g, [1, 2], p);
});

test('realtime: broadcast and presence span processes', { skip, timeout: 60_000 }, async () => {
  const name = uniq('room');
  const heard = { A: [], C: [] };
  const chans = {};
  for (const p of ['A', 'C']) {
    chans[p] = client(p)
      .channel(name, { config: { presence: { key: `user-${p}` } } })
      .on('broadcast', { event: 'ev' }, (m) => heard[p].push(m.payload))
      .on('presence', { event: 'sync' }, () => {});
    await subscribed(chans[p], 10_000);
  }
  const chB = client('B').channel(name);
  await subscribed(chB, 10_000);
  assert.equal(await chB.send({ type: 'broadcast', event: 'ev', payload: { from: 'B' } }), 'ok');
  await until('A and C heard B', () => heard.A.length && heard.C.length);
  assert.deepEqual([heard.A, heard.C], [[{ from: 'B' }], [{ from: 'B' }]]);
  // Sent over HTTP to B (a sender that never joined), and from SQL (realtime.send): each
  // reaches the subscribers on A and C once.
  assert.equal(await client('B').channel(name).send({ type: 'broadcast', event: 'ev', payload: { from: 'rest' } }), 'ok');
  await sql(`select realtime.send('{"from": "sql"}'::jsonb, 'ev', $1, false)`, [name]);
  await until('A and C heard the HTTP and SQL broadcasts', () => heard.A.length >= 3 && heard.C.length >= 3);
  await sleep(300);
  for (const h of [heard.A, heard.C]) assert.deepEqual(h.slice(1).map((m) => m.from).sort(), ['rest', 'sql']);

  assert.equal(await chans.A.track({ on: 'A' }), 'ok');
  assert.equal(await chans.C.track({ on: 'C' }), 'ok');
  const keys = (ch) => Object.keys(ch.presenceState()).sort();
  await until('A sees C present and C sees A', () => keys(chans.A).length === 2 && keys(chans.C).length === 2);
  assert.deepEqual(keys(chans.A), ['user-A', 'user-C']);
  assert.equal(chans.A.presenceState()['user-C'][0].on, 'C');
  // C leaves: A sees it go.
  await chans.C.untrack();
  await until('A sees C leave', () => keys(chans.A).length === 1);
  assert.deepEqual(keys(chans.A), ['user-A']);
});

/** A websocket-handler socket whose frames queue up; `next(type)` waits for one of that type. */
function wsOpen(proc, token) {
  const url = `${procs[proc].url.replace(/^http/, 'ws')}/functions/v1/websocket-handler?token=${encodeURIComponent(token)}`;
  const ws = new WebSocket(url);
  const frames = [];
  ws.addEventListener('message', (e) => frames.push(JSON.parse(e.data)));
  const s = {
    ws,
    send: (v) => ws.send(JSON.stringify(v)),
    async next(type, match = () => true) {
      let found;
      await until(`a ${type} frame on ${proc}`, () => {
        const i = frames.findIndex((f) => f.type === type && match(f));
        if (i >= 0) found = frames.splice(i, 1)[0];
        return i >= 0;
      });
      return found;
    },
  };
  return new Promise((res, rej) => {
    ws.addEventListener('open', () => res(s), { once: true });
    ws.addEventListener('error', () => rej(new Error('socket refused')), { once: true });
  });
}

test('websocket-handler: presence, typing and messages between sockets on different processes', { skip, timeout: 60_000 }, async () => {
  await sql(`
    drop policy if exists scale_conv on public.conversations;
    create policy scale_conv on public.conversations for select to authenticated
      using (metadata->'members' ? (select auth.uid())::text);
    drop policy if exists scale_msg_sel on public.messages;
    create policy scale_msg_sel on public.messages for select to authenticated
      using (exists (select 1 from public.conversations c where c.id = conversation_id
                     and c.metadata->'members' ? (select auth.uid())::text));
    drop policy if exists scale_msg_ins on public.messages;
    create policy scale_msg_ins on public.messages for insert to authenticated
      with check (user_id = (select auth.uid()) and exists (
        select 1 from public.conversations c where c.id = conversation_id
         and c.metadata->'members' ? (select auth.uid())::text));`);
  const alice = await signUp('A', 'ws-alice');
  const bob = await signUp('C', 'ws-bob');
  const { data: conv, error } = await client('A', { token: alice.token })
    .from('conversations')
    .insert({ title: 'scale', metadata: { members: [bob.id] } })
    .select()
    .single();
  assert.equal(error, null);
  const a = await wsOpen('A', alice.token);
  const b = await wsOpen('C', bob.token);
  try {
    a.send({ type: 'join', conversation_id: conv.id });
    assert.deepEqual((await a.next('joined')).users, [alice.id]);
    b.send({ type: 'join', conversation_id: conv.id });
    await b.next('joined');
    // Each side sees both users (presence announced across processes).
    const both = [alice.id, bob.id].sort();
    await a.next('presence', (f) => [...f.users].sort().join() === both.join());
    await until('bob sees alice', async () => {
      b.send({ type: 'join', conversation_id: conv.id });
      const f = await b.next('joined');
      return [...f.users].sort().join() === both.join();
    });
    a.send({ type: 'typing', conversation_id: conv.id, is_typing: true });
    const typing = await b.next('typing');
    assert.deepEqual([typing.user_id, typing.is_typing], [alice.id, true]);
    b.send({ type: 'message', conversation_id: conv.id, content: 'hello from C' });
    const m = await a.next('message');
    assert.equal(m.message.content, 'hello from C');
    assert.equal(m.message.user_id, bob.id);
    // Both sessions are open in user_sessions, each under its own process's server id.
    const rows = (await sql(`select user_id::text, server_id from public.user_sessions
                              where user_id in ($1, $2) and disconnected_at is null`, [alice.id, bob.id])).rows;
    assert.equal(rows.length, 2);
    assert.notEqual(rows[0].server_id, rows[1].server_id);
    // Bob's socket closes: alice sees him leave.
    b.ws.close();
    await a.next('presence', (f) => f.users.length === 1 && f.users[0] === alice.id);
  } finally {
    a.ws.close();
    b.ws.close();
  }
});

test('storage: a TUS upload created on A continues on B and finishes on C, in the shared S3 bucket', { skip, timeout: 120_000 }, async () => {
  const svc = client('A', { key: SERVICE_KEY });
  assert.equal((await svc.storage.createBucket('scale-tus')).error, null);
  const CHUNK = 6 * 1024 * 1024;
  const data = crypto.randomBytes(CHUNK + 54321);
  const meta = Object.entries({ bucketName: 'scale-tus', objectName: 'big.bin', contentType: 'application/octet-stream' })
    .map(([k, v]) => `${k} ${Buffer.from(v).toString('base64')}`)
    .join(',');
  const h = { Authorization: `Bearer ${SERVICE_KEY}`, 'Tus-Resumable': '1.0.0' };
  const made = await fetch(`${procs.A.url}/storage/v1/upload/resumable`, {
    method: 'POST',
    headers: { ...h, 'Upload-Length': String(data.length), 'Upload-Metadata': meta },
  });
  assert.equal(made.status, 201);
  const path = new URL(made.headers.get('location'), procs.A.url).pathname;
  const patch = (proc, offset, body) =>
    fetch(`${procs[proc].url}${path}`, {
      method: 'PATCH',
      headers: { ...h, 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
      body,
    });
  const first = await patch('B', 0, data.subarray(0, CHUNK));
  assert.equal(first.status, 204);
  const headC = await fetch(`${procs.C.url}${path}`, { method: 'HEAD', headers: h });
  assert.equal(headC.status, 200);
  assert.equal(headC.headers.get('upload-offset'), String(CHUNK));
  const last = await patch('C', CHUNK, data.subarray(CHUNK));
  assert.equal(last.status, 204);
  assert.equal(last.headers.get('upload-offset'), String(data.length));
  const { data: blob, error } = await client('B', { key: SERVICE_KEY }).storage.from('scale-tus').download('big.bin');
  assert.equal(error, null);
  assert.ok(Buffer.from(await blob.arrayBuffer()).equals(data));
  // A signed URL made by one process is honoured by another (one shared secret).
  const signed = await client('A', { key: SERVICE_KEY }).storage.from('scale-tus').createSignedUrl('big.bin', 60);
  assert.equal(signed.error, null);
  const viaC = await fetch(signed.data.signedUrl.replace(procs.A.url, procs.C.url), { headers: { Range: 'bytes=0-9' } });
  assert.equal(viaC.status, 206);
  assert.ok(Buffer.from(await viaC.arrayBuffer()).equals(data.subarray(0, 10)));
  // The bytes are in the one S3 bucket every process uses.
  const listing = await (await fetch(`${s3}/oxi-scale?list-type=2&prefix=shared/objects/`)).text();
  assert.match(listing, /<Size>6345777<\/Size>/, listing);
});

test('code-execution: capacity is per process (A saturated, B still runs)', { skip, timeout: 60_000 }, async () => {
  const hog = await signUp('A', 'hog');
  const other = await signUp('A', 'other');
  const run = (proc, u, body) => client(proc, { token: u.token }).functions.invoke('code-execution', { body });
  // A's only runner spins for 4.5 s; the other user asks A meanwhile (once the run has
  // surely taken the runner), then B.
  const spinning = run('A', hog, { language: 'javascript', code: 'const t = Date.now(); while (Date.now() - t < 4500) {}', timeout_ms: 5000 });
  await sleep(1500);
  const refused = await run('A', other, { language: 'javascript', code: 'console.log(1)' });
  assert.equal(refused.error?.context?.status, 503, String(refused.error));
  assert.equal((await refused.error.context.json()).error.code, 'too_many_runs');
  const elsewhere = await run('B', other, { language: 'javascript', code: 'console.log(6 * 7)' });
  assert.equal(elsewhere.error, null, String(elsewhere.error));
  assert.equal(elsewhere.data.stdout.trim(), '42');
  assert.equal((await spinning).error, null);
});

function hasNginx() {
  try {
    execFileSync('nginx', ['-v'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** nginx running examples/scaleout/nginx.conf in front of A, B and C; its URL and process. */
async function startNginx() {
  const dir = mkdtempSync(join(tmpdir(), 'oxibase-nginx-'));
  chmodSync(dir, 0o777); // workers run as an unprivileged user
  const example = readFileSync(new URL('../../examples/scaleout/nginx.conf', import.meta.url), 'utf8');
  const port = await freePort();
  const upstreams = example.match(/^ *server 10\.0\.0\.\d+:54321 .*$/gm);
  assert.equal(upstreams?.length, 3, 'the example lists three upstream servers');
  let conf = example.replace(/listen 80;/, `listen 127.0.0.1:${port};`);
  ['A', 'B', 'C'].forEach((p, i) => (conf = conf.replace(upstreams[i], upstreams[i].replace(/10\.0\.0\.\d+:54321/, `127.0.0.1:${procs[p].port}`))));
  assert.ok(conf.includes(`listen 127.0.0.1:${port};`));
  writeFileSync(join(dir, 'oxibase.conf'), conf);
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `${t}_temp_path ${dir}/${t};`).join('\n  ');
  writeFileSync(
    join(dir, 'nginx.conf'),
    `daemon off;\nworker_processes 1;\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log warn;\n` +
      `events { worker_connections 1024; }\nhttp {\n  access_log off;\n  ${temp}\n  include ${dir}/oxibase.conf;\n}\n`,
  );
  const proc = spawn('nginx', ['-p', dir, '-e', `${dir}/error.log`, '-c', `${dir}/nginx.conf`], { stdio: 'ignore' });
  const url = `http://127.0.0.1:${port}`;
  await until('nginx answers', async () => (await fetch(`${url}/health`).catch(() => null))?.status === 200);
  return { url, proc, dir };
}

/** API requests (not /metrics itself) a process has served so far. */
async function served(proc) {
  const text = await (await fetch(`${procs[proc].url}/metrics`, { headers: { authorization: `Bearer ${SERVICE_KEY}` } })).text();
  let n = 0;
  for (const m of text.matchAll(/^oxibase_http_requests_total\{([^}]*)\} (\d+)/gm)) if (/api="(rest|auth|storage|realtime|functions)"/.test(m[1])) n += Number(m[2]);
  return n;
}

test('behind nginx (examples/scaleout/nginx.conf): one supabase-js client, its requests spread over every process', { skip: skip || (hasNginx() || process.env.CI ? false : 'nginx not installed'), timeout: 120_000 }, async () => {
  const lb = await startNginx();
  try {
    const before = { A: await served('A'), B: await served('B'), C: await served('C') };
    const sb = createClient(lb.url, ANON_KEY, opts);
    clients.push(sb);
    const email = `lb-${crypto.randomUUID().slice(0, 8)}@scale.test`;
    const { data, error } = await sb.auth.signUp({ email, password: 'hunter22' });
    assert.equal(error, null);
    let token = data.session.refresh_token;
    for (let i = 0; i < 4; i++) {
      const r = await sb.auth.refreshSession({ refresh_token: token });
      assert.equal(r.error, null, `refresh ${i}`);
      token = r.data.session.refresh_token;
    }
    // A realtime socket through nginx (WebSocket upgrade), rows inserted through it too.
    const seen = [];
    const ch = sb.channel(uniq('lb')).on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'scaleout_ticks' }, (e) => seen.push(e.new.id));
    await subscribed(ch, 10_000);
    const svc = createClient(lb.url, SERVICE_KEY, opts);
    for (let id = 500; id < 506; id++) assert.equal((await svc.from('scaleout_ticks').insert({ id, note: 'lb' })).error, null);
    await until('the socket behind nginx got every row', () => seen.length >= 6);
    assert.deepEqual(seen, [500, 501, 502, 503, 504, 505]);
    // A TUS upload in three requests, wherever nginx sends each.
    assert.equal((await svc.storage.createBucket('scale-lb')).error, null);
    const data2 = crypto.randomBytes(2 * 6 * 1024 * 1024 + 999);
    const h = { Authorization: `Bearer ${SERVICE_KEY}`, 'Tus-Resumable': '1.0.0' };
    const meta = `bucketName ${Buffer.from('scale-lb').toString('base64')},objectName ${Buffer.from('lb.bin').toString('base64')}`;
    const made = await fetch(`${lb.url}/storage/v1/upload/resumable`, { method: 'POST', headers: { ...h, 'Upload-Length': String(data2.length), 'Upload-Metadata': meta } });
    assert.equal(made.status, 201);
    const at = new URL(made.headers.get('location'), lb.url).toString();
    for (let off = 0; off < data2.length; off += 6 * 1024 * 1024) {
      const body = data2.subarray(off, off + 6 * 1024 * 1024);
      const r = await fetch(at, { method: 'PATCH', headers: { ...h, 'Upload-Offset': String(off), 'Content-Type': 'application/offset+octet-stream' }, body });
      assert.equal(r.status, 204, `PATCH at ${off}`);
    }
    const { data: blob } = await svc.storage.from('scale-lb').download('lb.bin');
    assert.ok(Buffer.from(await blob.arrayBuffer()).equals(data2));
    // No stickiness: every process served some of it.
    for (const p of ['A', 'B', 'C']) assert.ok((await served(p)) > before[p], `${p} served none of the requests`);
  } finally {
    lb.proc.kill();
    rmSync(lb.dir, { recursive: true, force: true });
  }
});

test('kill -9 of one process under change traffic: subscribers on the survivors get every change once', { skip, timeout: 120_000 }, async () => {
  const table = 'scaleout_ticks';
  const got = {};
  const subscribe = async (label, proc) => {
    got[label] = [];
    const ch = client(proc)
      .channel(uniq('kill'))
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table }, (e) => e.new.id >= 1000 && got[label].push(e.new.id));
    await subscribed(ch, 10_000);
  };
  for (const p of ['A', 'B', 'C']) {
    await subscribe(`${p}1`, p);
    await subscribe(`${p}2`, p);
  }
  // A websocket-handler session open on C when it dies.
  const wsUser = await signUp('C', 'ws-dies');
  const onC = await wsOpen('C', wsUser.token);
  const openOn = async () =>
    (await sql(`select count(*)::int n from public.user_sessions where user_id = $1 and disconnected_at is null`, [wsUser.id])).rows[0].n;
  assert.equal(await openOn(), 1);
  const ourSlots = async () =>
    (await sql(`select active from pg_replication_slots where slot_name like 'oxibase\\_rt\\_%'`)).rows;
  const slotsBefore = await ourSlots();
  assert.equal(slotsBefore.filter((x) => x.active).length, 3, 'one streaming slot per process');
  const writer = client('A', { key: SERVICE_KEY });
  const N = 300;
  for (let i = 0; i < N; i += 5) {
    const rows = [0, 1, 2, 3, 4].map((k) => ({ id: 1000 + i + k, note: `n${i + k}` }));
    const { error } = await writer.from(table).insert(rows);
    assert.equal(error, null);
    if (i === 100) await procs.C.kill();
    await sleep(10);
  }
  const want = Array.from({ length: N }, (_, i) => 1000 + i);
  const survivors = ['A1', 'A2', 'B1', 'B2'];
  await until('every survivor got every change', () => survivors.every((s) => got[s].length >= N), 30_000);
  await sleep(500);
  for (const s of survivors) assert.deepEqual(got[s], want, `${s}: every change once, in commit order`);
  // The dead process's slot is persistent (a restart of PostgreSQL loses nothing), so it
  // stays, inactive, until a capture starts on this machine and sweeps it.
  const afterKill = await ourSlots();
  assert.equal(afterKill.filter((x) => x.active).length, 2, 'the survivors keep streaming');
  // The dead process's websocket-handler session is closed by the next sweep, which every
  // process runs at start (and each minute): start a fourth process.
  onC.ws.close();
  procs.D = await startServer({ toml: TOML, env: { ...motoEnv, OXIBASE_DATABASE_URL: dbUrl } });
  await until('the dead process left no open websocket-handler session', async () => (await openOn()) === 0);
  // A subscriber on the fourth process starts its capture, which drops the dead one's slot.
  await subscribe('D1', 'D');
  await until('the dead process left no slot', async () => {
    const r = await ourSlots();
    return r.length === 3 && r.every((x) => x.active);
  });
  delete procs.C;
});
