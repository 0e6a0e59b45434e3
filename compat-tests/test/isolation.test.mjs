// The isolation matrix: users A and B, anon and service_role, through real supabase-js,
// against every app table (select/insert/update/delete of own and other's rows, and rows
// that reference another user's conversation or message), the RPCs in `public`, both
// buckets, realtime (postgres_changes, private and public broadcast) and the four
// functions. Each cell is "ok <status>" (allowed, rows came back), "none <status>" (allowed
// but nothing visible or touched: RLS hid the rows) or "refused <status> <code>". The whole
// matrix is printed, then compared with the expected one written out below.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { createClient, FunctionsHttpError } from '@supabase/supabase-js';
import { URL, ANON_KEY, SERVICE_KEY } from '../lib/env.mjs';
import { JWT_SECRET } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

const b64url = (b) => Buffer.from(b).toString('base64url');
function mint(claims) {
  const h = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const p = b64url(JSON.stringify(claims));
  const s = crypto.createHmac('sha256', JWT_SECRET).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${s}`;
}
const rand = () => crypto.randomBytes(4).toString('hex');
const opts = { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } };
const clients = [];
const sockets = [];
after(async () => {
  for (const c of clients) await c.removeAllChannels();
  for (const s of sockets) s.close();
  await sql(`drop policy if exists "isolation own topic" on realtime.messages;
             drop policy if exists "isolation own topic send" on realtime.messages;`);
});

async function client({ token, key = ANON_KEY } = {}) {
  const c = createClient(URL, key, {
    ...opts,
    ...(token ? { accessToken: async () => token } : {}),
    realtime: { heartbeatIntervalMs: 5000 },
  });
  clients.push(c);
  if (token) await c.realtime.setAuth(token);
  return c;
}

async function makeUser(label) {
  const id = crypto.randomUUID();
  await sql(`insert into auth.users (id, email, aud, role, created_at) values ($1, $2, 'authenticated', 'authenticated', now())`, [
    id,
    `${label}-${id.slice(0, 8)}@isolation.test`,
  ]);
  const token = mint({ sub: id, role: 'authenticated', aud: 'authenticated', exp: Math.floor(Date.now() / 1000) + 3600 });
  return { id, token, sb: await client({ token }) };
}

// ------------------------------------------------------------------ outcomes

/** A PostgREST answer: rows back → ok, none → none, an error → refused with its code. */
function rest({ data, error, status }) {
  if (error) return `refused ${status} ${error.code}`;
  const rows = Array.isArray(data) ? data : data == null ? [] : [data];
  return `${rows.length ? 'ok' : 'none'} ${status}`;
}

/** A storage answer. */
function storage({ data, error }) {
  if (error) return `refused ${error.statusCode ?? error.status}`;
  if (Array.isArray(data)) return data.length ? 'ok' : 'none';
  return 'ok';
}

/** A functions.invoke answer. */
async function fn({ data, error }) {
  if (error instanceof FunctionsHttpError) {
    const body = await error.context.json().catch(() => ({}));
    return `refused ${error.context.status} ${body?.error?.code ?? '?'}`;
  }
  if (error) return `refused ${error.name}`;
  if (Array.isArray(data)) return data.length ? 'ok' : 'none';
  return 'ok';
}

/** Subscribe: 'ok' on SUBSCRIBED, 'refused' on an error status. */
function subscribe(channel) {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve('refused (timeout)'), 5000);
    channel.subscribe((status) => {
      if (status === 'SUBSCRIBED') {
        clearTimeout(t);
        resolve('ok');
      } else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT' || status === 'CLOSED') {
        clearTimeout(t);
        resolve('refused');
      }
    });
  });
}

const wsUrl = (token) =>
  `${URL.replace(/^http/, 'ws')}/functions/v1/websocket-handler?token=${encodeURIComponent(token)}&apikey=${ANON_KEY}`;

/** websocket-handler: open (or 'refused' at the handshake), send one join, read the answer. */
function wsJoin(token, conversationId) {
  return new Promise((resolve) => {
    const ws = new WebSocket(wsUrl(token));
    sockets.push(ws);
    const t = setTimeout(() => resolve('refused (timeout)'), 5000);
    ws.addEventListener('error', () => {
      clearTimeout(t);
      resolve('refused handshake');
    });
    ws.addEventListener('open', () => ws.send(JSON.stringify({ type: 'join', conversation_id: conversationId })));
    ws.addEventListener('message', (e) => {
      const f = JSON.parse(e.data);
      if (f.type === 'joined' || f.type === 'error') {
        clearTimeout(t);
        ws.close();
        resolve(f.type === 'joined' ? 'ok' : `refused ${f.code}`);
      }
    });
  });
}

// ------------------------------------------------------------------ the expected matrix

// [actor, resource, operation, expected]. "own" = a row of the actor; "B's" = the other user's.
const T = 'refused 403 42501'; // RLS refused the new row (PostgREST's shape for a user)
const EXPECTED = [
  // --- tables: what the spec's policy table allows an owner, nothing of the other's
  ['A', 'profiles', 'select own', 'ok 200'],
  ['A', 'profiles', "select B's", 'none 200'],
  ['A', 'profiles', 'insert own', T],
  ['A', 'profiles', 'update own', 'ok 200'],
  ['A', 'profiles', "update B's", 'none 200'],
  ['A', 'profiles', "delete B's", 'none 200'],
  ['A', 'profiles', 'delete own', 'none 200'],
  ['A', 'conversations', 'select own', 'ok 200'],
  ['A', 'conversations', "select B's", 'none 200'],
  ['A', 'conversations', 'insert own', 'ok 201'],
  ['A', 'conversations', 'insert as B', T],
  ['A', 'conversations', 'update own', 'ok 200'],
  ['A', 'conversations', "update B's", 'none 200'],
  ['A', 'conversations', "update own: user_id = B", T],
  ['A', 'conversations', "delete B's", 'none 200'],
  ['A', 'conversations', 'delete own', 'ok 200'],
  ['A', 'messages', 'select own', 'ok 200'],
  ['A', 'messages', "select B's", 'none 200'],
  ['A', 'messages', 'insert own', 'ok 201'],
  ['A', 'messages', 'insert as B', T],
  ['A', 'messages', 'update own', 'ok 200'],
  ['A', 'messages', "update B's", 'none 200'],
  ['A', 'messages', "delete B's", 'none 200'],
  ['A', 'messages', 'delete own', 'ok 200'],
  ['A', 'code_executions', 'select own', 'ok 200'],
  ['A', 'code_executions', "select B's", 'none 200'],
  ['A', 'code_executions', 'insert own', 'ok 201'],
  ['A', 'code_executions', 'insert as B', T],
  ['A', 'code_executions', 'update own', 'none 200'],
  ['A', 'code_executions', "update B's", 'none 200'],
  ['A', 'code_executions', "delete B's", 'none 200'],
  ['A', 'code_executions', 'delete own', 'none 200'],
  ['A', 'file_uploads', 'select own', 'ok 200'],
  ['A', 'file_uploads', "select B's", 'none 200'],
  ['A', 'file_uploads', 'insert own', 'ok 201'],
  ['A', 'file_uploads', 'insert as B', T],
  ['A', 'file_uploads', 'update own', 'none 200'],
  ['A', 'file_uploads', "update B's", 'none 200'],
  ['A', 'file_uploads', "delete B's", 'none 200'],
  ['A', 'file_uploads', 'delete own', 'ok 200'],
  ['A', 'visualizations', 'select own', 'ok 200'],
  ['A', 'visualizations', "select B's", 'none 200'],
  ['A', 'visualizations', 'insert own', 'ok 201'],
  ['A', 'visualizations', 'insert as B', T],
  ['A', 'visualizations', 'update own', 'ok 200'],
  ['A', 'visualizations', "update B's", 'none 200'],
  ['A', 'visualizations', "delete B's", 'none 200'],
  ['A', 'visualizations', 'delete own', 'ok 200'],
  ['A', 'user_sessions', 'select own', 'ok 200'],
  ['A', 'user_sessions', "select B's", 'none 200'],
  ['A', 'user_sessions', 'insert own', T],
  ['A', 'user_sessions', 'update own', 'none 200'],
  ['A', 'user_sessions', "update B's", 'none 200'],
  ['A', 'user_sessions', "delete B's", 'none 200'],
  ['A', 'user_sessions', 'delete own', 'none 200'],
  ['A', 'api_usage', 'select own', 'ok 200'],
  ['A', 'api_usage', "select B's", 'none 200'],
  ['A', 'api_usage', 'insert own', T],
  ['A', 'api_usage', 'update own', 'none 200'],
  ['A', 'api_usage', "update B's", 'none 200'],
  ['A', 'api_usage', "delete B's", 'none 200'],
  ['A', 'api_usage', 'delete own', 'none 200'],
  // --- rows pointing at another user's conversation or message, or at a random id: the
  // same RLS refusal (no 409 23503 telling which ids exist), and B's path stays B's.
  ['A', 'messages', "insert into B's conversation", T],
  ['A', 'messages', 'insert into a random conversation', T],
  ['A', 'messages', "update own: move into B's conversation", T],
  ['A', 'code_executions', "insert with B's conversation", T],
  ['A', 'code_executions', 'insert with a random conversation', T],
  ['A', 'code_executions', "insert with B's message", T],
  ['A', 'code_executions', 'insert with a random message', T],
  ['A', 'file_uploads', "insert with B's conversation", T],
  ['A', 'file_uploads', 'insert with a random conversation', T],
  ['A', 'file_uploads', "insert with B's recorded path", T],
  ['A', 'file_uploads', "insert with a path in B's folder", T],
  ['A', 'file_uploads', "insert with own/../B's path", T],
  ['B', 'file_uploads', 'insert the path A tried', 'ok 201'],
  ['A', 'visualizations', "insert with B's conversation", T],
  ['A', 'visualizations', 'insert with a random conversation', T],
  ['A', 'visualizations', "insert with B's message", T],
  ['A', 'visualizations', 'insert with a random message', T],
  ['A', 'visualizations', "update own: B's conversation", T],
  ['A', 'visualizations', "update own: B's message", T],
  ['B', 'conversations', "delete own (A's rows stay)", 'ok 200'],
  // --- anon: sees nothing, writes nothing
  ...['profiles', 'conversations', 'messages', 'code_executions', 'file_uploads', 'visualizations', 'user_sessions', 'api_usage'].flatMap(
    (t) => [
      ['anon', t, 'select all', 'none 200'],
      ['anon', t, "update A's", 'none 200'],
      ['anon', t, "delete A's", 'none 200'],
    ],
  ),
  ['anon', 'conversations', "insert for A", 'refused 401 42501'],
  ['anon', 'messages', "insert into A's conversation", 'refused 401 42501'],
  // --- service_role: everything
  ['service', 'conversations', "select B's", 'ok 200'],
  ['service', 'messages', "select B's", 'ok 200'],
  ['service', 'api_usage', "select B's", 'ok 200'],
  ['service', 'code_executions', 'insert for B', 'ok 201'],
  // --- RPCs and views in public: only the two trigger functions, which cannot be called
  ['-', 'public', 'functions; views', 'handle_new_user set_updated_at; none'],
  ['A', 'rpc', 'handle_new_user', 'refused 400 42804'],
  ['anon', 'rpc', 'handle_new_user', 'refused 400 42804'],
  ['A', 'rpc', 'set_updated_at', 'refused 400 42804'],
  // --- storage
  ['A', 'chat-files', 'upload own folder', 'ok'],
  ['A', 'chat-files', "upload B's folder", 'refused 403'],
  ['A', 'chat-files', "overwrite B's object", 'refused 403'],
  ['A', 'chat-files', 'download own', 'ok'],
  ['A', 'chat-files', "download B's", 'refused 404'],
  ['A', 'chat-files', "list B's folder", 'none'],
  ['A', 'chat-files', "remove B's", 'none'],
  ['A', 'chat-files', "signed URL of B's", 'refused 404'],
  ['anon', 'chat-files', "download A's", 'refused 404'],
  ['anon', 'chat-files', "public URL of A's", 'refused 400'],
  ['service', 'chat-files', "download B's", 'ok'],
  ['A', 'avatars', 'upload own folder', 'ok'],
  ['A', 'avatars', "upload B's folder", 'refused 403'],
  ['A', 'avatars', "download B's", 'ok'],
  ['A', 'avatars', "remove B's", 'none'],
  ['anon', 'avatars', "public URL of B's", 'ok 200'],
  ['anon', 'avatars', 'upload', 'refused 403'],
  // --- realtime
  ['A', 'realtime', "postgres_changes: messages of B's conversation", 'none'],
  ['A', 'realtime', 'postgres_changes: messages of own conversation', 'ok'],
  ['B', 'realtime', 'postgres_changes: messages of own conversation', 'ok'],
  ['A', 'realtime', 'private channel: own topic', 'ok'],
  ['A', 'realtime', "private channel: B's topic", 'refused'],
  ['anon', 'realtime', "private channel: A's topic", 'refused'],
  ['service', 'realtime', "private channel: B's topic", 'ok'],
  ['A', 'realtime', 'public broadcast', 'ok'],
  ['anon', 'realtime', 'public broadcast', 'ok'],
  // --- functions
  ['A', 'code-execution', 'own conversation', 'ok'],
  ['A', 'code-execution', "B's conversation", 'refused 404 conversation_not_found'],
  ['A', 'code-execution', 'a random conversation', 'refused 404 conversation_not_found'],
  ['A', 'code-execution', "B's message", 'refused 404 message_not_found'],
  ['anon', 'code-execution', 'run', 'refused 401 unauthorized'],
  ['A', 'chat-completion', "B's conversation", 'refused 404 conversation_not_found'],
  ['A', 'chat-completion', 'a random conversation', 'refused 404 conversation_not_found'],
  ['anon', 'chat-completion', 'call', 'refused 401 unauthorized'],
  ['A', 'file-upload', 'upload to own conversation', 'ok'],
  ['A', 'file-upload', "upload to B's conversation", 'refused 404 not_found'],
  ['A', 'file-upload', "list B's conversation", 'none'],
  ['A', 'file-upload', "delete B's upload", 'refused 404 not_found'],
  ['anon', 'file-upload', 'list', 'refused 401 unauthorized'],
  ['A', 'websocket-handler', 'join own conversation', 'ok'],
  ['A', 'websocket-handler', "join B's conversation", 'refused forbidden'],
  ['anon', 'websocket-handler', 'connect', 'refused handshake'],
];

// ------------------------------------------------------------------ the run

test('isolation matrix: users, anon and service_role against every table, bucket, channel and function', async () => {
  const A = await makeUser('a');
  const B = await makeUser('b');
  const anonSb = await client();
  const svc = await client({ key: SERVICE_KEY });
  const ids = {};
  // Fixtures as the superuser: one row of each table for each user.
  for (const [who, u] of [['A', A], ['B', B]]) {
    const r = (
      await sql(
        `with c as (insert into public.conversations (user_id, title) values ($1, 'iso') returning id),
              m as (insert into public.messages (conversation_id, user_id, role, content)
                    select id, $1, 'user', 'hi' from c returning id),
              e as (insert into public.code_executions (user_id, conversation_id, language, code, status)
                    select $1, id, 'python', '1', 'success' from c returning id),
              f as (insert into public.file_uploads (user_id, bucket, path, name)
                    values ($1, 'chat-files', $1 || '/recorded.txt', 'recorded.txt') returning id),
              v as (insert into public.visualizations (user_id, conversation_id, config)
                    select $1, id, '{}' from c returning id),
              s as (insert into public.user_sessions (user_id) values ($1) returning id),
              a as (insert into public.api_usage (user_id, endpoint) values ($1, 'iso') returning id)
         select (select id from c) conversations, (select id from m) messages,
                (select id from e) code_executions, (select id from f) file_uploads,
                (select id from v) visualizations, (select id from s) user_sessions,
                (select id from a) api_usage`,
        [u.id],
      )
    ).rows[0];
    ids[who] = { ...r, profiles: u.id };
  }
  const random = crypto.randomUUID();
  const cells = new Map();
  const put = (actor, resource, op, outcome) => cells.set(`${actor}|${resource}|${op}`, outcome);

  // --- tables
  const newRow = {
    profiles: (u) => ({ id: u.id }),
    conversations: (u) => ({ title: 'new', user_id: u.id }),
    messages: (u) => ({ conversation_id: ids.A.conversations, role: 'user', content: 'x', user_id: u.id }),
    code_executions: (u) => ({ language: 'python', code: '1', status: 'success', user_id: u.id }),
    file_uploads: (u) => ({ bucket: 'chat-files', path: `${u.id}/new-${rand()}.txt`, name: 'n', user_id: u.id }),
    visualizations: (u) => ({ config: {}, user_id: u.id }),
    user_sessions: (u) => ({ user_id: u.id }),
    api_usage: (u) => ({ user_id: u.id, endpoint: 'x' }),
  };
  const change = {
    profiles: { full_name: 'changed' },
    conversations: { title: 'changed' },
    messages: { content: 'changed' },
    code_executions: { stdout: 'changed' },
    file_uploads: { name: 'changed' },
    visualizations: { title: 'changed' },
    user_sessions: { status: 'away' },
    api_usage: { endpoint: 'changed' },
  };
  const tables = Object.keys(newRow);
  for (const t of tables) {
    put('A', t, 'select own', rest(await A.sb.from(t).select('id').eq('id', ids.A[t])));
    put('A', t, "select B's", rest(await A.sb.from(t).select('id').eq('id', ids.B[t])));
    put('A', t, 'insert own', rest(await A.sb.from(t).insert(newRow[t](A)).select('id')));
    if (!['profiles', 'user_sessions', 'api_usage'].includes(t)) {
      put('A', t, 'insert as B', rest(await A.sb.from(t).insert(newRow[t](B)).select('id')));
    }
    put('A', t, 'update own', rest(await A.sb.from(t).update(change[t]).eq('id', ids.A[t]).select('id')));
    put('A', t, "update B's", rest(await A.sb.from(t).update(change[t]).eq('id', ids.B[t]).select('id')));
    put('A', t, "delete B's", rest(await A.sb.from(t).delete().eq('id', ids.B[t]).select('id')));
    put('anon', t, 'select all', rest(await anonSb.from(t).select('id')));
    put('anon', t, "update A's", rest(await anonSb.from(t).update(change[t]).eq('id', ids.A[t]).select('id')));
    put('anon', t, "delete A's", rest(await anonSb.from(t).delete().eq('id', ids.A[t]).select('id')));
  }
  put('A', 'conversations', 'update own: user_id = B', rest(await A.sb.from('conversations').update({ user_id: B.id }).eq('id', ids.A.conversations).select('id')));
  put('anon', 'conversations', 'insert for A', rest(await anonSb.from('conversations').insert({ user_id: A.id, title: 'x' })));
  put('anon', 'messages', "insert into A's conversation", rest(await anonSb.from('messages').insert({ conversation_id: ids.A.conversations, user_id: A.id, role: 'user', content: 'x' })));
  put('service', 'conversations', "select B's", rest(await svc.from('conversations').select('id').eq('id', ids.B.conversations)));
  put('service', 'messages', "select B's", rest(await svc.from('messages').select('id').eq('id', ids.B.messages)));
  put('service', 'api_usage', "select B's", rest(await svc.from('api_usage').select('id').eq('id', ids.B.api_usage)));
  put('service', 'code_executions', 'insert for B', rest(await svc.from('code_executions').insert(newRow.code_executions(B)).select('id')));

  // --- references to B's conversation and message, and to random ids
  const ins = async (t, row) => rest(await A.sb.from(t).insert({ ...newRow[t](A), ...row }).select('id'));
  put('A', 'messages', "insert into B's conversation", await ins('messages', { conversation_id: ids.B.conversations }));
  put('A', 'messages', 'insert into a random conversation', await ins('messages', { conversation_id: random }));
  // (No RETURNING: a returned row must also pass the select policy, which would hide a hole.)
  put('A', 'messages', "update own: move into B's conversation", rest(await A.sb.from('messages').update({ conversation_id: ids.B.conversations }).eq('id', ids.A.messages)));
  for (const t of ['code_executions', 'file_uploads', 'visualizations']) {
    put('A', t, "insert with B's conversation", await ins(t, { conversation_id: ids.B.conversations }));
    put('A', t, 'insert with a random conversation', await ins(t, { conversation_id: random }));
    if (t !== 'file_uploads') {
      put('A', t, "insert with B's message", await ins(t, { message_id: ids.B.messages }));
      put('A', t, 'insert with a random message', await ins(t, { message_id: random }));
    }
  }
  const bPath = `${B.id}/wanted-${rand()}.txt`;
  put('A', 'file_uploads', "insert with B's recorded path", await ins('file_uploads', { path: `${B.id}/recorded.txt` }));
  put('A', 'file_uploads', "insert with a path in B's folder", await ins('file_uploads', { path: bPath }));
  put('A', 'file_uploads', "insert with own/../B's path", await ins('file_uploads', { path: `${A.id}/../${B.id}/x.txt` }));
  put('B', 'file_uploads', 'insert the path A tried', rest(await B.sb.from('file_uploads').insert({ ...newRow.file_uploads(B), path: bPath }).select('id')));
  put('A', 'visualizations', "update own: B's conversation", rest(await A.sb.from('visualizations').update({ conversation_id: ids.B.conversations }).eq('id', ids.A.visualizations).select('id')));
  put('A', 'visualizations', "update own: B's message", rest(await A.sb.from('visualizations').update({ message_id: ids.B.messages }).eq('id', ids.A.visualizations).select('id')));

  // --- RPCs and views
  const listed = (q) => sql(q).then((r) => r.rows.map((x) => x.name).join(' ') || 'none');
  const fns = await listed(`select p.proname as name from pg_proc p where p.pronamespace = 'public'::regnamespace order by 1`);
  const views = await listed(`select c.relname as name from pg_class c where c.relnamespace = 'public'::regnamespace and c.relkind in ('v', 'm') order by 1`);
  put('-', 'public', 'functions; views', `${fns}; ${views}`);
  put('A', 'rpc', 'handle_new_user', rest(await A.sb.rpc('handle_new_user')));
  put('anon', 'rpc', 'handle_new_user', rest(await anonSb.rpc('handle_new_user')));
  put('A', 'rpc', 'set_updated_at', rest(await A.sb.rpc('set_updated_at')));

  // --- storage
  const text = (s) => new Blob([s], { type: 'text/plain' });
  const png = new Blob([new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10])], { type: 'image/png' });
  const chat = (c) => c.storage.from('chat-files');
  const avatars = (c) => c.storage.from('avatars');
  const aFile = `${A.id}/a.txt`;
  const bFile = `${B.id}/b.txt`;
  const bAvatar = `${B.id}/b.png`;
  assert.equal((await chat(B.sb).upload(bFile, text('B'), { contentType: 'text/plain' })).error, null);
  assert.equal((await avatars(B.sb).upload(bAvatar, png, { contentType: 'image/png' })).error, null);
  put('A', 'chat-files', 'upload own folder', storage(await chat(A.sb).upload(aFile, text('A'), { contentType: 'text/plain' })));
  put('A', 'chat-files', "upload B's folder", storage(await chat(A.sb).upload(`${B.id}/planted.txt`, text('A'), { contentType: 'text/plain' })));
  put('A', 'chat-files', "overwrite B's object", storage(await chat(A.sb).upload(bFile, text('A'), { contentType: 'text/plain', upsert: true })));
  put('A', 'chat-files', 'download own', storage(await chat(A.sb).download(aFile)));
  put('A', 'chat-files', "download B's", storage(await chat(A.sb).download(bFile)));
  put('A', 'chat-files', "list B's folder", storage(await chat(A.sb).list(B.id)));
  put('A', 'chat-files', "remove B's", storage(await chat(A.sb).remove([bFile])));
  put('A', 'chat-files', "signed URL of B's", storage(await chat(A.sb).createSignedUrl(bFile, 60)));
  put('anon', 'chat-files', "download A's", storage(await chat(anonSb).download(aFile)));
  const privatePub = await fetch(chat(anonSb).getPublicUrl(aFile).data.publicUrl);
  put('anon', 'chat-files', "public URL of A's", privatePub.ok ? `ok ${privatePub.status}` : `refused ${privatePub.status}`);
  put('service', 'chat-files', "download B's", storage(await chat(svc).download(bFile)));
  put('A', 'avatars', 'upload own folder', storage(await avatars(A.sb).upload(`${A.id}/a.png`, png, { contentType: 'image/png' })));
  put('A', 'avatars', "upload B's folder", storage(await avatars(A.sb).upload(`${B.id}/x.png`, png, { contentType: 'image/png' })));
  put('A', 'avatars', "download B's", storage(await avatars(A.sb).download(bAvatar)));
  put('A', 'avatars', "remove B's", storage(await avatars(A.sb).remove([bAvatar])));
  const avatarPub = await fetch(avatars(anonSb).getPublicUrl(bAvatar).data.publicUrl);
  put('anon', 'avatars', "public URL of B's", avatarPub.ok ? `ok ${avatarPub.status}` : `refused ${avatarPub.status}`);
  put('anon', 'avatars', 'upload', storage(await avatars(anonSb).upload(`${A.id}/anon.png`, png, { contentType: 'image/png' })));

  // --- realtime: postgres_changes on messages. B's row is inserted before A's own; events
  // of one subscriber arrive in commit order, so once A has its own row, B's was not sent.
  const seen = { A: [], B: [] };
  const waiters = [];
  const note = (who) => (p) => {
    seen[who].push(p.new.conversation_id);
    for (const w of waiters.splice(0)) w();
  };
  const until = async (pred) => {
    const deadline = Date.now() + 5000;
    while (!pred() && Date.now() < deadline) await new Promise((r) => (waiters.push(r), setTimeout(r, 200)));
  };
  const aCh = A.sb.channel(`iso-changes-a-${rand()}`).on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages' }, note('A'));
  const bCh = B.sb.channel(`iso-changes-b-${rand()}`).on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages', filter: `conversation_id=eq.${ids.B.conversations}` }, note('B'));
  const aSpy = A.sb.channel(`iso-changes-spy-${rand()}`).on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages', filter: `conversation_id=eq.${ids.B.conversations}` }, note('A'));
  assert.equal(await subscribe(aCh), 'ok');
  assert.equal(await subscribe(bCh), 'ok');
  assert.equal(await subscribe(aSpy), 'ok');
  assert.equal((await B.sb.from('messages').insert({ conversation_id: ids.B.conversations, role: 'user', content: 'private to B' })).error, null);
  await until(() => seen.B.length > 0);
  assert.equal((await A.sb.from('messages').insert({ conversation_id: ids.A.conversations, role: 'user', content: 'of A' })).error, null);
  await until(() => seen.A.includes(ids.A.conversations));
  put('A', 'realtime', "postgres_changes: messages of B's conversation", seen.A.includes(ids.B.conversations) ? 'ok' : 'none');
  put('A', 'realtime', 'postgres_changes: messages of own conversation', seen.A.includes(ids.A.conversations) ? 'ok' : 'none');
  put('B', 'realtime', 'postgres_changes: messages of own conversation', seen.B.includes(ids.B.conversations) ? 'ok' : 'none');

  // Private channels: a policy on realtime.messages lets a user read and write the topic
  // `iso:<own id>` only.
  await sql(`
    drop policy if exists "isolation own topic" on realtime.messages;
    create policy "isolation own topic" on realtime.messages for select to authenticated
      using (realtime.topic() = 'iso:' || (select auth.uid())::text);
    drop policy if exists "isolation own topic send" on realtime.messages;
    create policy "isolation own topic send" on realtime.messages for insert to authenticated
      with check (realtime.topic() = 'iso:' || (select auth.uid())::text);`);
  const priv = { config: { private: true } };
  put('A', 'realtime', 'private channel: own topic', await subscribe((await client({ token: A.token })).channel(`iso:${A.id}`, priv)));
  put('A', 'realtime', "private channel: B's topic", await subscribe((await client({ token: A.token })).channel(`iso:${B.id}`, priv)));
  put('anon', 'realtime', "private channel: A's topic", await subscribe((await client()).channel(`iso:${A.id}`, priv)));
  put('service', 'realtime', "private channel: B's topic", await subscribe((await client({ key: SERVICE_KEY })).channel(`iso:${B.id}`, priv)));
  const room = `iso-public-${rand()}`;
  put('A', 'realtime', 'public broadcast', await subscribe((await client({ token: A.token })).channel(room)));
  put('anon', 'realtime', 'public broadcast', await subscribe((await client()).channel(room)));

  // --- functions
  const run = (sb, extra) => sb.functions.invoke('code-execution', { body: { language: 'python', code: 'print(1)', ...extra } });
  put('A', 'code-execution', 'own conversation', await fn(await run(A.sb, { conversation_id: ids.A.conversations })));
  put('A', 'code-execution', "B's conversation", await fn(await run(A.sb, { conversation_id: ids.B.conversations })));
  put('A', 'code-execution', 'a random conversation', await fn(await run(A.sb, { conversation_id: random })));
  put('A', 'code-execution', "B's message", await fn(await run(A.sb, { message_id: ids.B.messages })));
  put('anon', 'code-execution', 'run', await fn(await run(anonSb, {})));
  const chatBody = (conversation_id) => ({
    body: { provider: 'openai', model: 'gpt-4o-mini', api_key: 'sk-isolation', conversation_id, messages: [{ role: 'user', content: 'hi' }] },
  });
  put('A', 'chat-completion', "B's conversation", await fn(await A.sb.functions.invoke('chat-completion', chatBody(ids.B.conversations))));
  put('A', 'chat-completion', 'a random conversation', await fn(await A.sb.functions.invoke('chat-completion', chatBody(random))));
  put('anon', 'chat-completion', 'call', await fn(await anonSb.functions.invoke('chat-completion', chatBody(undefined))));
  const form = (conversation) => {
    const f = new FormData();
    f.append('file', new Blob(['hello'], { type: 'text/plain' }), 'hello.txt');
    if (conversation) f.append('conversation_id', conversation);
    return f;
  };
  put('A', 'file-upload', 'upload to own conversation', await fn(await A.sb.functions.invoke('file-upload', { body: form(ids.A.conversations) })));
  put('A', 'file-upload', "upload to B's conversation", await fn(await A.sb.functions.invoke('file-upload', { body: form(ids.B.conversations) })));
  put('A', 'file-upload', "list B's conversation", await fn(await A.sb.functions.invoke(`file-upload?conversation_id=${ids.B.conversations}`, { method: 'GET' })));
  put('A', 'file-upload', "delete B's upload", await fn(await A.sb.functions.invoke(`file-upload?id=${ids.B.file_uploads}`, { method: 'DELETE' })));
  put('anon', 'file-upload', 'list', await fn(await anonSb.functions.invoke('file-upload', { method: 'GET' })));
  put('A', 'websocket-handler', 'join own conversation', await wsJoin(A.token, ids.A.conversations));
  put('A', 'websocket-handler', "join B's conversation", await wsJoin(A.token, ids.B.conversations));
  put('anon', 'websocket-handler', 'connect', await wsJoin(ANON_KEY, ids.A.conversations));

  // --- deletes last (a conversation's delete cascades to its rows)
  for (const t of ['visualizations', 'code_executions', 'file_uploads', 'messages', 'api_usage', 'user_sessions', 'profiles', 'conversations']) {
    put('A', t, 'delete own', rest(await A.sb.from(t).delete().eq('id', ids.A[t]).select('id')));
  }
  const aRows = async () =>
    (await sql(`select (select count(*) from public.messages where user_id = $1) + (select count(*) from public.code_executions where user_id = $1)
                     + (select count(*) from public.file_uploads where user_id = $1) + (select count(*) from public.visualizations where user_id = $1) as n`, [A.id])).rows[0].n;
  const before = await aRows();
  const deleted = rest(await B.sb.from('conversations').delete().eq('id', ids.B.conversations).select('id'));
  put('B', 'conversations', "delete own (A's rows stay)", `${deleted}${(await aRows()) === before ? '' : "; A's rows went with it"}`);

  // --- the matrix
  const rows = EXPECTED.map(([actor, resource, op, want]) => [actor, resource, op, want, cells.get(`${actor}|${resource}|${op}`) ?? '(not run)']);
  const extra = [...cells.keys()].filter((k) => !EXPECTED.some(([a, r, o]) => `${a}|${r}|${o}` === k));
  const w = [0, 1, 2, 3].map((i) => Math.max(...rows.map((r) => r[i].length)));
  const line = (r) => r.map((c, i) => (i < 4 ? c.padEnd(w[i]) : c)).join(' | ');
  console.log(['', line(['actor', 'resource', 'operation', 'expected', 'actual']), ...rows.map((r) => `${r[3] === r[4] ? ' ' : '✗'} ${line(r)}`)].join('\n'));
  assert.deepEqual(extra, [], 'cells measured without an expected value');
  const wrong = rows.filter((r) => r[3] !== r[4]);
  assert.deepEqual(wrong, [], `${wrong.length} cells differ from the expected matrix`);
});
