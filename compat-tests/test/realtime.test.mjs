// Realtime through unmodified supabase-js: broadcast (self/ack, vsn 1.0.0 and 2.0.0, REST
// fallback, httpSend JSON and binary), presence, private channels authorized by RLS, and
// postgres_changes with filters and RLS.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { createClient } from '@supabase/supabase-js';
import { URL, ANON_KEY, SERVICE_KEY } from '../lib/env.mjs';
import { subscribed } from '../lib/helpers.mjs';
import { JWT_SECRET } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

const b64url = (b) => Buffer.from(b).toString('base64url');
function mint(claims) {
  const h = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const p = b64url(JSON.stringify(claims));
  const s = crypto.createHmac('sha256', JWT_SECRET).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${s}`;
}
const uniq = (p) => `${p}-${crypto.randomBytes(5).toString('hex')}`;
const opts = { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } };
const clients = [];

// The token is set before any join (as after a sign-in): a join pushed before the
// accessToken callback resolves carries the socket's apikey instead.
async function client({ vsn = '2.0.0', token, key = ANON_KEY } = {}) {
  const c = createClient(URL, key, {
    ...opts,
    ...(token ? { accessToken: async () => token } : {}),
    realtime: { vsn, heartbeatIntervalMs: 5000 },
  });
  clients.push(c);
  if (token) await c.realtime.setAuth(token);
  return c;
}

after(async () => {
  for (const c of clients) await c.removeAllChannels();
});

async function makeUser() {
  const id = crypto.randomUUID();
  await sql(`insert into auth.users (id, email, aud, role, created_at) values ($1, $2, 'authenticated', 'authenticated', now())`, [
    id,
    `rt-${id.slice(0, 8)}@realtime.test`,
  ]);
  const token = mint({ sub: id, role: 'authenticated', aud: 'authenticated', exp: Math.floor(Date.now() / 1000) + 3600 });
  return { id, token };
}


/** A queue of events with `next(ms)` that fails on timeout and `none(ms)` that fails on arrival. */
function inbox() {
  const items = [];
  let waiter = null;
  return {
    push(x) {
      if (waiter) {
        const w = waiter;
        waiter = null;
        w(x);
      } else items.push(x);
    },
    next(ms = 3000) {
      if (items.length) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => {
          waiter = null;
          reject(new Error('no event within timeout'));
        }, ms);
        waiter = (x) => {
          clearTimeout(t);
          resolve(x);
        };
      });
    },
    async none(ms = 400) {
      await new Promise((r) => setTimeout(r, ms));
      assert.deepEqual(items, [], 'no event expected');
    },
  };
}

for (const vsn of ['1.0.0', '2.0.0']) {
  test(`broadcast with self and ack (vsn ${vsn})`, async () => {
    const c = await client({ vsn });
    const name = uniq('room');
    const box = inbox();
    const ch = c.channel(name, { config: { broadcast: { self: true, ack: true } } });
    ch.on('broadcast', { event: 'ev' }, (m) => box.push(m));
    await subscribed(ch);
    assert.equal(await ch.send({ type: 'broadcast', event: 'ev', payload: { n: 1 } }), 'ok');
    const m = await box.next();
    assert.equal(m.event, 'ev');
    assert.deepEqual(m.payload, { n: 1 });

    // Another client without self: gets others' messages, not its own.
    const other = await client({ vsn });
    const box2 = inbox();
    const ch2 = other.channel(name, { config: { broadcast: { self: false } } });
    ch2.on('broadcast', { event: 'ev' }, (m) => box2.push(m));
    await subscribed(ch2);
    await ch2.send({ type: 'broadcast', event: 'ev', payload: { from: 2 } });
    assert.deepEqual((await box.next()).payload, { from: 2 });
    await box2.none();
  });
}

test('broadcast crosses protocol versions (1.0.0 <-> 2.0.0)', async () => {
  const name = uniq('mix');
  const v1 = await client({ vsn: '1.0.0' });
  const v2 = await client({ vsn: '2.0.0' });
  const b1 = inbox();
  const b2 = inbox();
  const c1 = v1.channel(name).on('broadcast', { event: 'x' }, (m) => b1.push(m));
  const c2 = v2.channel(name).on('broadcast', { event: 'x' }, (m) => b2.push(m));
  await subscribed(c1);
  await subscribed(c2);
  await c2.send({ type: 'broadcast', event: 'x', payload: { from: 'v2', u: 'é✓' } });
  assert.deepEqual((await b1.next()).payload, { from: 'v2', u: 'é✓' });
  await c1.send({ type: 'broadcast', event: 'x', payload: { from: 'v1' } });
  assert.deepEqual((await b2.next()).payload, { from: 'v1' });
});

test('httpSend: JSON and binary to a public channel; send() before join falls back to REST', async () => {
  const name = uniq('http');
  const c = await client();
  const box = inbox();
  const ch = c.channel(name, { config: { broadcast: { self: true } } });
  ch.on('broadcast', { event: '*' }, (m) => box.push(m));
  await subscribed(ch);
  assert.deepEqual(await ch.httpSend('json', { hello: 'public' }), { success: true });
  const j = await box.next();
  assert.equal(j.event, 'json');
  assert.deepEqual(j.payload, { hello: 'public' });
  assert.deepEqual(await ch.httpSend('bin', new Uint8Array([1, 2, 3, 250])), { success: true });
  const b = await box.next();
  assert.equal(b.event, 'bin');
  assert.deepEqual([...new Uint8Array(b.payload)], [1, 2, 3, 250]);

  // A sender that never joined: send() posts to /api/broadcast.
  const sender = (await client()).channel(name);
  assert.equal(await sender.send({ type: 'broadcast', event: 'rest', payload: { via: 'rest' } }), 'ok');
  const r = await box.next();
  assert.equal(r.event, 'rest');
  assert.deepEqual(r.payload, { via: 'rest' });
});

test('HTTP broadcast errors: bad content type, bad key, bad body', async () => {
  const base = `${URL}/realtime/v1/api/broadcast`;
  let r = await fetch(`${base}/t/events/e`, { method: 'POST', headers: { apikey: ANON_KEY, 'content-type': 'text/plain' }, body: 'x' });
  assert.equal(r.status, 415);
  r = await fetch(`${base}/t/events/e`, { method: 'POST', headers: { apikey: 'nope.nope.nope', 'content-type': 'application/json' }, body: '{}' });
  assert.equal(r.status, 401);
  r = await fetch(base, { method: 'POST', headers: { apikey: ANON_KEY, 'content-type': 'application/json' }, body: '{"messages":[{"topic":"t"}]}' });
  assert.equal(r.status, 422);
  r = await fetch(`${URL}/realtime/v1/websocket?vsn=2.0.0`);
  assert.equal(r.status, 400);
});

test('presence: state, join and leave across clients', async () => {
  const name = uniq('pres');
  const a = await client();
  const b = await client({ vsn: '1.0.0' });
  const joins = inbox();
  const leaves = inbox();
  const chA = a.channel(name, { config: { presence: { key: 'alice' } } });
  chA.on('presence', { event: 'join' }, (e) => joins.push(e)).on('presence', { event: 'leave' }, (e) => leaves.push(e));
  await subscribed(chA);
  assert.equal(await chA.track({ status: 'online' }), 'ok');
  const j1 = await joins.next();
  assert.equal(j1.key, 'alice');
  assert.equal(j1.newPresences[0].status, 'online');

  const chB = b.channel(name, { config: { presence: { key: 'bob' } } });
  const syncs = inbox();
  chB.on('presence', { event: 'sync' }, () => syncs.push(chB.presenceState()));
  await subscribed(chB);
  let st = await syncs.next();
  assert.deepEqual(Object.keys(st), ['alice']);
  await chB.track({ status: 'away' });
  const j2 = await joins.next();
  assert.equal(j2.key, 'bob');
  do st = await syncs.next();
  while (Object.keys(st).length < 2);
  assert.deepEqual(Object.keys(st).sort(), ['alice', 'bob']);
  assert.equal(st.bob[0].status, 'away');
  assert.ok(st.bob[0].presence_ref);

  await b.removeChannel(chB);
  const l = await leaves.next();
  assert.equal(l.key, 'bob');
  assert.deepEqual(Object.keys(chA.presenceState()), ['alice']);
  assert.equal(await chA.untrack(), 'ok');
  assert.equal((await leaves.next()).key, 'alice');
});

await sql(`
  drop policy if exists "rt compat read" on realtime.messages;
  drop policy if exists "rt compat write" on realtime.messages;
  create policy "rt compat read" on realtime.messages for select to authenticated
    using (realtime.topic() like 'rtc-%');
  create policy "rt compat write" on realtime.messages for insert to authenticated
    with check (realtime.topic() like 'rtc-%' and realtime.topic() not like 'rtc-ro-%');
`);

test('private channels: RLS on realtime.messages decides join, broadcast and httpSend', async () => {
  const user = await makeUser();
  const c = await client({ token: user.token });
  const name = uniq('rtc');
  const box = inbox();
  const ch = c.channel(name, { config: { private: true, broadcast: { self: true, ack: true } } });
  ch.on('broadcast', { event: '*' }, (m) => box.push(m));
  await subscribed(ch);
  assert.equal(await ch.send({ type: 'broadcast', event: 'ws', payload: { a: 1 } }), 'ok');
  assert.deepEqual((await box.next()).payload, { a: 1 });
  assert.deepEqual(await ch.httpSend('http', { b: 2 }), { success: true });
  assert.deepEqual((await box.next()).payload, { b: 2 });
  assert.deepEqual(await ch.httpSend('binary', new Uint8Array([7, 8])), { success: true });
  assert.deepEqual([...new Uint8Array((await box.next()).payload)], [7, 8]);

  // A public channel of the same name is another topic.
  const pub = (await client()).channel(name, { config: { broadcast: { self: true } } });
  const pubBox = inbox();
  pub.on('broadcast', { event: '*' }, (m) => pubBox.push(m));
  await subscribed(pub);
  await ch.httpSend('only-private', { c: 3 });
  await box.next();
  await pubBox.none();

  // Read-only topic: joins, but broadcasts are not acknowledged; httpSend is refused.
  const ro = (await client({ token: user.token })).channel(uniq('rtc-ro'), { config: { private: true, broadcast: { ack: true } } });
  await subscribed(ro);
  assert.equal(await ro.send({ type: 'broadcast', event: 'x', payload: {} }, { timeout: 500 }), 'timed out');
  await assert.rejects(ro.httpSend('x', { a: 1 }), /Unauthorized/);

  // No policy matches: the join fails with Supabase's reason; anon is refused too.
  const denied = (await client({ token: user.token })).channel(uniq('other'), { config: { private: true } });
  await assert.rejects(subscribed(denied), /You do not have permissions to read from this Channel topic/);
  const anonCh = (await client()).channel(uniq('rtc'), { config: { private: true } });
  await assert.rejects(subscribed(anonCh), /Unauthorized/);
});

test('private channel: service_role bypasses RLS', async () => {
  const c = await client({ key: SERVICE_KEY });
  await subscribed(c.channel(uniq('anything'), { config: { private: true } }));
});

test('join with an expired or forged token is refused with Supabase reasons', async () => {
  const expired = mint({ role: 'authenticated', sub: crypto.randomUUID(), exp: Math.floor(Date.now() / 1000) - 10 });
  await assert.rejects(subscribed((await client({ token: expired })).channel(uniq('x'))), /Token has expired/);
  const noExp = mint({ role: 'anon' });
  await assert.rejects(subscribed((await client({ token: noExp })).channel(uniq('x'))), /Fields `role` and `exp` are required/);
});

test('postgres_changes: INSERT/UPDATE/DELETE with filter, delivered only where RLS allows', async () => {
  const a = await makeUser();
  const b = await makeUser();
  const ca = await client({ token: a.token });
  const cb = await client({ token: b.token });
  const all = inbox();
  const filtered = inbox();
  const title = uniq('t');
  const ch = ca
    .channel(uniq('pg'))
    .on('postgres_changes', { event: '*', schema: 'public', table: 'conversations' }, (p) => all.push(p))
    .on('postgres_changes', { event: 'UPDATE', schema: 'public', table: 'conversations', filter: `title=eq.${title}-2` }, (p) =>
      filtered.push(p),
    );
  await subscribed(ch);

  // B's row: A must not see it.
  const { error: eb } = await cb.from('conversations').insert({ title: 'secret' });
  assert.equal(eb, null);
  // A's row.
  const { data: row, error } = await ca.from('conversations').insert({ title }).select().single();
  assert.equal(error, null);
  const ins = await all.next();
  assert.equal(ins.eventType, 'INSERT');
  assert.equal(ins.schema, 'public');
  assert.equal(ins.table, 'conversations');
  assert.equal(ins.new.id, row.id);
  assert.equal(ins.new.title, title);
  assert.equal(ins.new.archived, false);
  assert.deepEqual(ins.new.metadata, {});
  assert.match(ins.commit_timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

  await ca.from('conversations').update({ title: `${title}-2` }).eq('id', row.id);
  const up = await all.next();
  assert.equal(up.eventType, 'UPDATE');
  assert.equal(up.new.title, `${title}-2`);
  assert.equal(up.old.title, title);
  const f = await filtered.next();
  assert.equal(f.new.id, row.id);

  await ca.from('conversations').delete().eq('id', row.id);
  const del = await all.next();
  assert.equal(del.eventType, 'DELETE');
  // RLS table: a delete carries only the primary key.
  assert.deepEqual(del.old, { id: row.id });
  await all.none();
  await filtered.none(50);
});

test('postgres_changes: join reply echoes bindings; an unpublished table gets a system error', async () => {
  const c = await client({ key: SERVICE_KEY });
  const sys = inbox();
  const ch = c
    .channel(uniq('pg'))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'profiles' }, () => {})
    .on('system', {}, (m) => sys.push(m));
  await subscribed(ch);
  const m = await sys.next();
  assert.equal(m.status, 'error');
  assert.match(m.message, /Unable to subscribe to changes with given parameters/);
});

test('broadcast from the database: realtime.send reaches supabase-js (both vsn), replay on join', async () => {
  const name = uniq('rtc-db');
  const boxes = [];
  for (const vsn of ['1.0.0', '2.0.0']) {
    const box = inbox();
    const ch = (await client({ vsn })).channel(name).on('broadcast', { event: 'db' }, (m) => box.push(m));
    await subscribed(ch);
    boxes.push(box);
  }
  await sql(`select realtime.send($1::jsonb, 'db', $2, false)`, [JSON.stringify({ hello: 'db' }), name]);
  for (const box of boxes) {
    const m = await box.next();
    assert.equal(m.payload.hello, 'db');
    assert.ok(m.meta?.id || m.payload.id);
  }
  // Stored private broadcasts are replayed to a private channel that asks for them.
  await sql(`select realtime.send('{"n":1}'::jsonb, 'stored', $1)`, [name]);
  const user = await makeUser();
  const box = inbox();
  const ch = (await client({ token: user.token }))
    .channel(name, { config: { private: true, broadcast: { replay: { since: Date.now() - 60_000, limit: 5 } } } })
    .on('broadcast', { event: 'stored' }, (m) => box.push(m));
  await subscribed(ch);
  const r = await box.next();
  assert.equal(r.payload.n, 1);
  assert.equal(r.meta.replayed, true);
});

test('postgres_changes: chat messages of one conversation (filter + RLS through the parent)', async () => {
  const a = await makeUser();
  const ca = await client({ token: a.token });
  const { data: c1 } = await ca.from('conversations').insert({ title: 'one' }).select().single();
  const { data: c2 } = await ca.from('conversations').insert({ title: 'two' }).select().single();
  const box = inbox();
  const ch = ca
    .channel(uniq('chat'))
    .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages', filter: `conversation_id=eq.${c1.id}` }, (p) =>
      box.push(p),
    );
  await subscribed(ch);
  await ca.from('messages').insert({ conversation_id: c2.id, role: 'user', content: 'elsewhere' });
  const { error } = await ca.from('messages').insert({ conversation_id: c1.id, role: 'user', content: 'hi', metadata: { k: [1, 2] } });
  assert.equal(error, null);
  const m = await box.next();
  assert.equal(m.new.content, 'hi');
  assert.equal(m.new.conversation_id, c1.id);
  assert.deepEqual(m.new.metadata, { k: [1, 2] });
  await box.none();
});
