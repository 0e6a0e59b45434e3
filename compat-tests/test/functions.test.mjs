// /functions/v1 through real supabase-js `functions.invoke`: file-upload with FormData as a
// signed-in user (upload, list, delete, the stored object through the Storage client), the
// gateway's errors as FunctionsHttpError, and the api_usage rows the caller can read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { FunctionsHttpError } from '@supabase/supabase-js';
import { anon } from '../lib/env.mjs';
import { sql } from '../lib/pg.mjs';

const MAX = 10 * 1024 * 1024;

async function signedIn(label) {
  const sb = anon();
  const email = `fn-${label}-${randomUUID().slice(0, 8)}@example.com`;
  const { data, error } = await sb.auth.signUp({ email, password: 'hunter22' });
  assert.equal(error, null);
  assert.ok(data.session, 'signed in after sign-up');
  return { sb, id: data.user.id };
}

function fileForm(name, type, content, fields = {}) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, v);
  form.append('file', new Blob([content], { type }), name);
  return form;
}

async function expectHttpError(result, status, code) {
  assert.equal(result.data, null);
  assert.ok(result.error instanceof FunctionsHttpError, String(result.error));
  assert.equal(result.error.context.status, status);
  const body = await result.error.context.json();
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, 'string');
  assert.deepEqual(Object.keys(body), ['error']);
}

test('file-upload: upload with a conversation, read it back, list, delete', async () => {
  const { sb, id: uid } = await signedIn('a');
  const { data: conv, error: convErr } = await sb.from('conversations').insert({ title: 'files' }).select().single();
  assert.equal(convErr, null);
  const text = '# Hello\n\nfrom supabase-js é\n';

  const { data: up, error } = await sb.functions.invoke('file-upload', {
    body: fileForm('hello world.md', 'text/markdown', text, { conversation_id: conv.id }),
  });
  assert.equal(error, null);
  assert.deepEqual(Object.keys(up).sort(), [
    'bucket', 'conversation_id', 'created_at', 'id', 'mime_type', 'name', 'path', 'signed_url', 'size_bytes',
  ]);
  assert.equal(up.bucket, 'chat-files');
  assert.equal(up.name, 'hello world.md');
  assert.equal(up.mime_type, 'text/markdown');
  assert.equal(up.size_bytes, Buffer.byteLength(text));
  assert.equal(up.conversation_id, conv.id);
  assert.match(up.path, new RegExp(`^${uid}/[0-9a-f-]{36}-hello_world\\.md$`));

  // The signed URL works without credentials; the Storage client sees the same object.
  const viaUrl = await fetch(up.signed_url);
  assert.equal(viaUrl.status, 200);
  assert.equal(await viaUrl.text(), text);
  const { data: blob, error: dlErr } = await sb.storage.from('chat-files').download(up.path);
  assert.equal(dlErr, null);
  assert.equal(await blob.text(), text);

  // A second file (PNG by its bytes); listing is newest first, filterable by conversation.
  const png = Buffer.from('89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489', 'hex');
  const second = await sb.functions.invoke('file-upload', { body: fileForm('dot.png', 'image/png', png) });
  assert.equal(second.error, null);
  assert.equal(second.data.mime_type, 'image/png');
  const all = await sb.functions.invoke('file-upload', { method: 'GET' });
  assert.equal(all.error, null);
  assert.deepEqual(all.data.map((f) => f.id), [second.data.id, up.id]);
  const inConv = await sb.functions.invoke(`file-upload?conversation_id=${conv.id}`, { method: 'GET' });
  assert.deepEqual(inConv.data.map((f) => f.id), [up.id]);

  // Another user sees none of it and cannot delete it.
  const other = await signedIn('b');
  const theirs = await other.sb.functions.invoke('file-upload', { method: 'GET' });
  assert.deepEqual(theirs.data, []);
  await expectHttpError(await other.sb.functions.invoke(`file-upload?id=${up.id}`, { method: 'DELETE' }), 404, 'not_found');
  const { error: otherDl } = await other.sb.storage.from('chat-files').download(up.path);
  assert.ok(otherDl, 'storage RLS keeps the object private');

  // DELETE removes the row and the object together.
  const del = await sb.functions.invoke(`file-upload?id=${up.id}`, { method: 'DELETE' });
  assert.equal(del.error, null);
  assert.equal(del.data.deleted, true);
  const { rows } = await sql('select count(*)::int as n from storage.objects where bucket_id = $1 and name = $2', [
    'chat-files',
    up.path,
  ]);
  assert.equal(rows[0].n, 0);
  const after = await sb.functions.invoke('file-upload', { method: 'GET' });
  assert.deepEqual(after.data.map((f) => f.id), [second.data.id]);

  // Every call is in api_usage, and the caller reads only their own rows.
  const { data: usage, error: usageErr } = await sb.from('api_usage').select('endpoint, status_code, user_id');
  assert.equal(usageErr, null);
  assert.ok(usage.length >= 6, JSON.stringify(usage));
  assert.ok(usage.every((u) => u.user_id === uid && u.endpoint === 'file-upload'));
  assert.deepEqual(usage.map((u) => u.status_code).filter((s) => s === 201).length, 2);
});

test('file-upload: refused files are FunctionsHttpErrors and leave nothing behind', async () => {
  const { sb, id: uid } = await signedIn('c');
  // A PNG name with text bytes.
  await expectHttpError(
    await sb.functions.invoke('file-upload', { body: fileForm('photo.png', 'image/png', 'not an image') }),
    415,
    'unsupported_media_type',
  );
  // Binary bytes under a text name.
  await expectHttpError(
    await sb.functions.invoke('file-upload', { body: fileForm('data.csv', 'text/csv', Buffer.from([0x61, 0, 0xff])) }),
    415,
    'unsupported_media_type',
  );
  // Over 10 MB.
  await expectHttpError(
    await sb.functions.invoke('file-upload', { body: fileForm('big.txt', 'text/plain', Buffer.alloc(MAX + 1, 0x61)) }),
    413,
    'payload_too_large',
  );
  // No file field.
  const empty = new FormData();
  empty.append('conversation_id', randomUUID());
  await expectHttpError(await sb.functions.invoke('file-upload', { body: empty }), 400, 'invalid_request');
  // A conversation that does not exist: the already stored object is removed again.
  await expectHttpError(
    await sb.functions.invoke('file-upload', {
      body: fileForm('a.txt', 'text/plain', 'hi', { conversation_id: randomUUID() }),
    }),
    404,
    'not_found',
  );
  const { rows } = await sql(
    `select (select count(*)::int from storage.objects where bucket_id = 'chat-files' and name like $1 || '/%') as objects,
            (select count(*)::int from public.file_uploads where user_id = $1::uuid) as uploads`,
    [uid],
  );
  assert.deepEqual(rows[0], { objects: 0, uploads: 0 });
});

test('gateway: anon gets 401, unknown functions 404, chat-completion and code-execution check their body', async () => {
  await expectHttpError(
    await anon().functions.invoke('file-upload', { body: fileForm('a.txt', 'text/plain', 'hi') }),
    401,
    'unauthorized',
  );
  await expectHttpError(await anon().functions.invoke('chat-completion', { body: {} }), 401, 'unauthorized');
  const { sb } = await signedIn('d');
  await expectHttpError(await sb.functions.invoke('no-such-function', { body: {} }), 404, 'not_found');
  await expectHttpError(await sb.functions.invoke('chat-completion', { body: {} }), 400, 'invalid_request');
  await expectHttpError(await sb.functions.invoke('code-execution', { body: {} }), 400, 'invalid_request');
});
