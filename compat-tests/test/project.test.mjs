// A Supabase project folder run unchanged (tests/fixtures/projects/notes, written to the
// shapes real projects use), seen through supabase-js as the project's app would see it:
// the seeded user signs in, the profile trigger, RLS, an embed through a foreign key, a view,
// an RPC with an enum argument, realtime on the published table, config.toml's buckets with
// their limits and seeded objects, and `enable_signup = false`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient } from '@supabase/supabase-js';
import { startServer, ANON_KEY, SERVICE_KEY } from '../lib/server.mjs';

const project = resolve(
  dirname(fileURLToPath(import.meta.url)),
  '..', '..', 'tests', 'fixtures', 'projects', 'notes',
);
const opts = { auth: { persistSession: false, autoRefreshToken: false } };
let srv;

before(async () => {
  srv = await startServer({
    env: { OXIBASE_PROJECT: project, NOTES_SITE_URL: 'http://localhost:3000' },
  });
});

after(async () => {
  await srv?.stop();
});

async function ada() {
  const c = createClient(srv.url, ANON_KEY, opts);
  const { data, error } = await c.auth.signInWithPassword({
    email: 'ada@notes.test',
    password: 'password123',
  });
  assert.equal(error, null);
  assert.equal(data.user.email, 'ada@notes.test');
  return c;
}

test('the seeded user, RLS, an embed, a view and an RPC with an enum', async () => {
  const anon = createClient(srv.url, ANON_KEY, opts);
  const pub = await anon.from('notes').select('title, status').order('id');
  assert.equal(pub.error, null);
  assert.deepEqual(pub.data, [{ title: 'Hello', status: 'published' }]);

  const c = await ada();
  const mine = await c.from('notes').select('title, profiles(username)').order('id');
  assert.equal(mine.error, null);
  assert.deepEqual(mine.data, [
    { title: 'Hello', profiles: { username: 'ada' } },
    { title: 'Secret', profiles: { username: 'ada' } },
  ]);
  const view = await anon.from('published_notes').select('title');
  assert.deepEqual(view.data, [{ title: 'Hello' }]);
  const n = await anon.rpc('count_notes', { wanted: 'published' });
  assert.equal(n.error, null);
  assert.equal(n.data, 1);
  const bad = await anon.rpc('count_notes', { wanted: 'nope' });
  assert.equal(bad.error.code, '22P02');
  // The owner default comes from auth.uid(); the insert policy checks it.
  const ins = await c.from('notes').insert({ title: 'New' }).select('title, status').single();
  assert.equal(ins.error, null);
  assert.deepEqual(ins.data, { title: 'New', status: 'draft' });
  const forged = await c
    .from('notes')
    .insert({ title: 'Forged', owner: '00000000-0000-4000-8000-00000000dead' });
  assert.equal(forged.error.code, '42501');
});

test('realtime delivers inserts on the table the migration published', async () => {
  const c = await ada();
  const got = new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error('no postgres_changes within 10 s')), 10_000);
    c.channel('notes')
      .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'notes' }, (p) => {
        clearTimeout(t);
        res(p);
      })
      .subscribe(async (status) => {
        if (status === 'SUBSCRIBED') {
          const { error } = await c.from('notes').insert({ title: 'Live' });
          if (error) rej(error);
        }
      });
  });
  const p = await got;
  assert.equal(p.new.title, 'Live');
  await c.removeAllChannels();
});

test('config.toml buckets exist with their limits and seeded objects', async () => {
  const admin = createClient(srv.url, SERVICE_KEY, opts);
  const b = await admin.storage.getBucket('avatars');
  assert.equal(b.error, null);
  assert.equal(b.data.public, true);
  assert.equal(b.data.file_size_limit, 1024 * 1024);
  assert.deepEqual(b.data.allowed_mime_types, ['image/png', 'image/jpeg', 'text/plain']);
  const priv = await admin.storage.getBucket('private-docs');
  assert.equal(priv.data.public, false);

  const anon = createClient(srv.url, ANON_KEY, opts);
  const hello = await anon.storage.from('avatars').download('defaults/hello.txt');
  assert.equal(hello.error, null);
  assert.match(await hello.data.text(), /\S/);

  const c = await ada();
  const gif = await c.storage
    .from('avatars')
    .upload('ada/a.gif', new Blob(['GIF89a'], { type: 'image/gif' }));
  assert.ok(gif.error, 'a type outside allowed_mime_types is refused');
  const big = await c.storage
    .from('avatars')
    .upload('ada/big.txt', new Blob([new Uint8Array(1024 * 1024 + 1)], { type: 'text/plain' }));
  assert.ok(big.error, 'over the bucket file_size_limit is refused');
  const ok = await c.storage
    .from('avatars')
    .upload('ada/note.txt', new Blob(['hi'], { type: 'text/plain' }));
  assert.equal(ok.error, null);
});

test('enable_signup = false refuses sign-ups', async () => {
  const anon = createClient(srv.url, ANON_KEY, opts);
  const { error } = await anon.auth.signUp({ email: 'new@notes.test', password: 'password123' });
  assert.equal(error.code, 'signup_disabled');
  assert.equal(error.status, 422);
});
