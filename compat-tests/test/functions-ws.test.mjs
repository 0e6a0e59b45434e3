// websocket-handler with real supabase-js users and the runtime's WebSocket: the token as a
// query parameter, join (RLS), presence, typing, messages sent over the socket and inserted
// through supabase-js, and the caller's own user_sessions rows.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { FunctionsHttpError } from '@supabase/supabase-js';
import { URL, anon } from '../lib/env.mjs';
import { sql } from '../lib/pg.mjs';

const sockets = [];
after(() => {
  for (const s of sockets) s.ws.close();
});

async function signedIn(label) {
  const sb = anon();
  const email = `ws-${label}-${randomUUID().slice(0, 8)}@example.com`;
  const { data, error } = await sb.auth.signUp({ email, password: 'hunter22' });
  assert.equal(error, null);
  return { sb, id: data.user.id, token: data.session.access_token };
}

const wsUrl = (query) => `${URL.replace(/^http/, 'ws')}/functions/v1/websocket-handler${query}`;

// A socket whose frames are queued; `next()` waits for the next one (5 s at most).
function open(token) {
  const ws = new WebSocket(wsUrl(`?token=${encodeURIComponent(token)}`));
  const queue = [];
  const waiting = [];
  ws.addEventListener('message', (e) => {
    const f = JSON.parse(e.data);
    if (waiting.length) waiting.shift()(f);
    else queue.push(f);
  });
  const s = {
    ws,
    send: (v) => ws.send(JSON.stringify(v)),
    next: () =>
      queue.length
        ? Promise.resolve(queue.shift())
        : new Promise((res, rej) => {
            const t = setTimeout(() => rej(new Error('no frame within 5 s')), 5000);
            waiting.push((f) => {
              clearTimeout(t);
              res(f);
            });
          }),
    async expect(type) {
      const f = await s.next();
      assert.equal(f.type, type, JSON.stringify(f));
      return f;
    },
    async silent(ms) {
      await new Promise((r) => setTimeout(r, ms));
      assert.deepEqual(queue, []);
    },
  };
  sockets.push(s);
  return new Promise((res, rej) => {
    ws.addEventListener('open', () => res(s), { once: true });
    ws.addEventListener('error', () => rej(new Error('socket refused')), { once: true });
  });
}

// The app shares nothing between users: let `metadata.members` read a conversation and its
// messages (idempotent: every test file shares one server).
async function sharePolicies() {
  await sql(`
    drop policy if exists ws_compat_conv_members on public.conversations;
    create policy ws_compat_conv_members on public.conversations for select to authenticated
      using (metadata->'members' ? (select auth.uid())::text);
    drop policy if exists ws_compat_msg_members_select on public.messages;
    create policy ws_compat_msg_members_select on public.messages for select to authenticated
      using (exists (select 1 from public.conversations c where c.id = conversation_id
                     and c.metadata->'members' ? (select auth.uid())::text));
    drop policy if exists ws_compat_msg_members_insert on public.messages;
    create policy ws_compat_msg_members_insert on public.messages for insert to authenticated
      with check (user_id = (select auth.uid()) and exists (
        select 1 from public.conversations c where c.id = conversation_id
         and c.metadata->'members' ? (select auth.uid())::text));`);
}

test('websocket-handler: refused without a user, 426 without an upgrade', async () => {
  await assert.rejects(
    new Promise((res, rej) => {
      const ws = new WebSocket(wsUrl(''));
      ws.addEventListener('open', () => res(ws.close()));
      ws.addEventListener('error', () => rej(new Error('refused')));
    }),
    /refused/,
  );
  const { sb } = await signedIn('plain');
  const r = await sb.functions.invoke('websocket-handler', { method: 'GET' });
  assert.ok(r.error instanceof FunctionsHttpError, String(r.error));
  assert.equal(r.error.context.status, 426);
  assert.equal((await r.error.context.json()).error.code, 'upgrade_required');
});

test('websocket-handler: two users join, see each other, type and exchange messages', async () => {
  await sharePolicies();
  const alice = await signedIn('alice');
  const bob = await signedIn('bob');
  const { data: conv, error } = await alice.sb
    .from('conversations')
    .insert({ title: 'ws', metadata: { members: [bob.id] } })
    .select()
    .single();
  assert.equal(error, null);

  const a = await open(alice.token);
  const b = await open(bob.token);
  a.send({ type: 'join', conversation_id: conv.id });
  assert.deepEqual((await a.expect('joined')).users, [alice.id]);
  b.send({ type: 'join', conversation_id: conv.id });
  const joined = await b.expect('joined');
  assert.deepEqual([...joined.users].sort(), [alice.id, bob.id].sort());
  const presence = await a.expect('presence');
  assert.equal(presence.conversation_id, conv.id);
  assert.deepEqual([...presence.users].sort(), [alice.id, bob.id].sort());

  // A stranger cannot join.
  const eve = await signedIn('eve');
  const e = await open(eve.token);
  e.send({ type: 'join', conversation_id: conv.id });
  assert.equal((await e.expect('error')).code, 'forbidden');

  b.send({ type: 'typing', conversation_id: conv.id, is_typing: true });
  assert.deepEqual(await a.expect('typing'), {
    type: 'typing', conversation_id: conv.id, user_id: bob.id, is_typing: true,
  });

  a.send({ type: 'message', conversation_id: conv.id, content: 'hi bob' });
  for (const s of [a, b]) {
    const m = (await s.expect('message')).message;
    assert.equal(m.content, 'hi bob');
    assert.equal(m.user_id, alice.id);
    assert.equal(m.role, 'user');
  }
  // The stored row is what supabase-js reads back.
  const { data: rows } = await bob.sb.from('messages').select('*').eq('conversation_id', conv.id);
  assert.deepEqual(rows.map((r) => r.content), ['hi bob']);

  // A row inserted through supabase-js reaches both sockets too.
  const ins = await bob.sb.from('messages').insert({ conversation_id: conv.id, role: 'user', content: 'via rest' });
  assert.equal(ins.error, null);
  for (const s of [a, b]) assert.equal((await s.expect('message')).message.content, 'via rest');

  a.send({ type: 'ping' });
  await a.expect('pong');
  b.send({ type: 'nonsense' });
  assert.equal((await b.expect('error')).code, 'unknown_type');
  await e.silent(200);

  // Each user reads their own open session.
  const { data: sessions } = await alice.sb.from('user_sessions').select('status, disconnected_at');
  assert.deepEqual(sessions, [{ status: 'online', disconnected_at: null }]);

  // Bob was typing: closing tells Alice he stopped, then he leaves the user list.
  b.ws.close();
  assert.deepEqual(await a.expect('typing'), {
    type: 'typing', conversation_id: conv.id, user_id: bob.id, is_typing: false,
  });
  assert.deepEqual((await a.expect('presence')).users, [alice.id]);
  for (let i = 0; i < 50; i++) {
    const { data } = await bob.sb.from('user_sessions').select('status');
    if (data[0]?.status === 'offline') return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail("bob's session was not closed");
});
