// Storage through unmodified supabase-js: buckets, objects, RLS, signed/public URLs, limits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { URL, anon, service } from '../lib/env.mjs';
import { makeUser, mintToken, uniq, raw } from './storage_helpers.mjs';

const S = `${URL}/storage/v1`;
const svc = service();

async function newBucket(opts = { public: false }) {
  const name = uniq('b');
  const { data, error } = await svc.storage.createBucket(name, opts);
  assert.equal(error, null);
  assert.deepEqual(data, { name });
  return name;
}

test('buckets: create, get (exact shape), list with options, update, empty, delete', async () => {
  const name = await newBucket({ public: false, fileSizeLimit: '1mb', allowedMimeTypes: ['image/*'] });
  const { data: b, error } = await svc.storage.getBucket(name);
  assert.equal(error, null);
  assert.deepEqual(Object.keys(b).sort(), [
    'allowed_mime_types', 'created_at', 'file_size_limit', 'id', 'name', 'owner', 'public', 'updated_at',
  ]);
  assert.equal(b.file_size_limit, 1000000);
  assert.deepEqual(b.allowed_mime_types, ['image/*']);
  assert.equal(b.public, false);
  assert.match(b.created_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);

  const dup = await svc.storage.createBucket(name);
  assert.equal(dup.error.message, 'The resource already exists');
  assert.equal(dup.error.statusCode, '409');

  const prefix = uniq('lst');
  for (const s of ['c', 'a', 'b']) await svc.storage.createBucket(`${prefix}-${s}`);
  const { data: page } = await svc.storage.listBuckets({ search: prefix, limit: 2, offset: 1, sortColumn: 'name', sortOrder: 'desc' });
  assert.deepEqual(page.map((x) => x.name), [`${prefix}-b`, `${prefix}-a`]);

  const up = await svc.storage.updateBucket(name, { public: true });
  assert.deepEqual(up.data, { message: 'Successfully updated' });
  const after = (await svc.storage.getBucket(name)).data;
  assert.equal(after.public, true);
  assert.equal(after.file_size_limit, 1000000, 'partial update keeps the limit');

  const file = Buffer.from('x');
  assert.equal((await svc.storage.from(name).upload('a/x.png', file, { contentType: 'image/png' })).error, null);
  const notEmpty = await svc.storage.deleteBucket(name);
  assert.equal(notEmpty.error.statusCode, '409');
  const emptied = await svc.storage.emptyBucket(name);
  assert.deepEqual(emptied.data, { message: 'Empty bucket has been queued. Completion may take up to an hour.' });
  const del = await svc.storage.deleteBucket(name);
  assert.deepEqual(del.data, { message: 'Successfully deleted' });
  const gone = await svc.storage.getBucket(name);
  assert.equal(gone.error.message, 'Bucket not found');
  assert.equal(gone.error.statusCode, '404');
  assert.equal((await svc.storage.updateBucket(uniq('nope'), { public: true })).error.message, 'Bucket not found');
});

test('buckets: RLS on storage.buckets applies to users and anon', async () => {
  const u = await makeUser('bk');
  const r = await u.client.storage.createBucket(uniq('mine'));
  assert.equal(r.error.statusCode, '403');
  assert.match(r.error.message, /row-level security/);
  const { data } = await anon().storage.listBuckets();
  assert.deepEqual(data, []);
  assert.equal((await anon().storage.getBucket('avatars')).error.message, 'Bucket not found');
  const bad = await svc.storage.createBucket('bad/name');
  assert.equal(bad.error.message, 'Bucket name invalid');
});

test('objects: upload raw and multipart, download, info, exists, update, upsert, metadata', async () => {
  const bucket = await newBucket();
  const st = svc.storage.from(bucket);
  const up = await st.upload('docs/hello.txt', Buffer.from('hello world'), { metadata: { k: 'v' } });
  assert.equal(up.error, null);
  assert.equal(up.data.path, 'docs/hello.txt');
  assert.equal(up.data.fullPath, `${bucket}/docs/hello.txt`);
  assert.ok(up.data.id);

  const dl = await st.download('docs/hello.txt');
  assert.equal(await dl.data.text(), 'hello world');
  assert.equal(dl.data.type, 'text/plain;charset=utf-8');

  const blob = new Blob([new Uint8Array([1, 2, 3])], { type: 'image/png' });
  assert.equal((await st.upload('img/p.png', blob, { cacheControl: '60' })).error, null);
  const info = await st.info('img/p.png');
  assert.equal(info.error, null);
  assert.equal(info.data.size, 3);
  assert.equal(info.data.contentType, 'image/png');
  assert.equal(info.data.cacheControl, 'max-age=60');
  assert.deepEqual((await st.info('docs/hello.txt')).data.metadata, { k: 'v' });
  // Multipart carries metadata as a form field (raw bodies use x-metadata).
  const blob2 = new Blob(['form'], { type: 'text/plain' });
  assert.equal((await st.upload('docs/form.txt', blob2, { metadata: { via: 'form' } })).error, null);
  assert.deepEqual((await st.info('docs/form.txt')).data.metadata, { via: 'form' });
  assert.equal((await st.info('img/p.png')).data.metadata && Object.keys((await st.info('img/p.png')).data.metadata).length, 0);

  const conflict = await st.upload('docs/hello.txt', Buffer.from('again'));
  assert.equal(conflict.error.message, 'The resource already exists');
  assert.equal(conflict.error.statusCode, '409');
  assert.equal((await st.upload('docs/hello.txt', Buffer.from('upserted'), { upsert: true })).error, null);
  assert.equal(await (await st.download('docs/hello.txt')).data.text(), 'upserted');
  assert.equal((await st.update('docs/hello.txt', Buffer.from('updated'))).error, null);
  assert.equal(await (await st.download('docs/hello.txt')).data.text(), 'updated');

  assert.equal((await st.exists('docs/hello.txt')).data, true);
  assert.equal((await st.exists('docs/nope.txt')).data, false);
  const missing = await st.download('docs/nope.txt');
  assert.equal(missing.error.statusCode, '404');
  const nb = await svc.storage.from(uniq('missing')).upload('a.txt', Buffer.from('x'));
  assert.equal(nb.error.message, 'Bucket not found');
});

test('objects: list folders, search, sort, list v2 with cursor pages', async () => {
  const bucket = await newBucket();
  const st = svc.storage.from(bucket);
  for (const p of ['f/a.txt', 'f/b.txt', 'f/sub/c.txt', 'f/sub/d.txt', 'top.txt', 'f/zz.txt']) {
    assert.equal((await st.upload(p, Buffer.from(p))).error, null);
  }
  const { data } = await st.list('f');
  assert.deepEqual(data.map((e) => e.name), ['a.txt', 'b.txt', 'sub', 'zz.txt']);
  const folder = data.find((e) => e.name === 'sub');
  assert.equal(folder.id, null);
  assert.equal(data[0].metadata.size, 'f/a.txt'.length);
  assert.deepEqual((await st.list('f', { search: 'b' })).data.map((e) => e.name), ['b.txt']);
  assert.deepEqual(
    (await st.list('f', { limit: 2, offset: 1, sortBy: { column: 'name', order: 'desc' } })).data.map((e) => e.name),
    ['sub', 'b.txt'],
  );
  const root = await st.list();
  assert.deepEqual(root.data.map((e) => e.name), ['f', 'top.txt']);

  const v2 = await st.listV2({ with_delimiter: true });
  assert.deepEqual(v2.data.folders.map((f) => [f.key, f.name]), [['f', 'f/']]);
  assert.deepEqual(v2.data.objects.map((o) => o.name), ['top.txt']);
  const names = [];
  let cursor;
  let pages = 0;
  for (;;) {
    const r = await st.listV2({ prefix: 'f/', limit: 2, ...(cursor ? { cursor } : {}), sortBy: { column: 'created_at', order: 'desc' } });
    assert.equal(r.error, null);
    names.push(...r.data.objects.map((o) => o.name));
    pages++;
    if (!r.data.hasNext) break;
    cursor = r.data.nextCursor;
  }
  assert.equal(pages, 3);
  const forged = Buffer.from(JSON.stringify({ c: 'created_at', o: 'asc', n: 'x', k: "'; drop table x; --" })).toString('base64url');
  const bad = await st.listV2({ prefix: 'f/', cursor: forged });
  assert.equal(bad.error.statusCode, '400');
  assert.equal((await st.listV2({ cursor: 'not base64 json' })).error.statusCode, '400');
  assert.deepEqual(names, ['f/zz.txt', 'f/sub/d.txt', 'f/sub/c.txt', 'f/b.txt', 'f/a.txt']);
});

test('objects: remove many, move and copy within and across buckets', async () => {
  const b1 = await newBucket();
  const b2 = await newBucket();
  const st = svc.storage.from(b1);
  for (const p of ['m/1.txt', 'm/2.txt', 'm/3.txt']) await st.upload(p, Buffer.from(p));
  const rm = await st.remove(['m/1.txt', 'm/2.txt', 'm/none.txt']);
  assert.deepEqual(rm.data.map((o) => o.name).sort(), ['m/1.txt', 'm/2.txt']);
  assert.equal((await st.exists('m/1.txt')).data, false);

  assert.deepEqual((await st.move('m/3.txt', 'n/3.txt')).data, { message: 'Successfully moved' });
  assert.equal(await (await st.download('n/3.txt')).data.text(), 'm/3.txt');
  assert.equal((await st.exists('m/3.txt')).data, false);
  const mv2 = await st.move('n/3.txt', 'x/3.txt', { destinationBucket: b2 });
  assert.equal(mv2.error, null);
  assert.equal(await (await svc.storage.from(b2).download('x/3.txt')).data.text(), 'm/3.txt');
  assert.equal((await st.move('nope.txt', 'nope2.txt')).error.statusCode, '404');

  const cp = await svc.storage.from(b2).copy('x/3.txt', 'y/copy.txt');
  assert.equal(cp.data.path, `${b2}/y/copy.txt`);
  const cp2 = await svc.storage.from(b2).copy('x/3.txt', 'z/copy.txt', { destinationBucket: b1 });
  assert.equal(cp2.data.path, `${b1}/z/copy.txt`);
  assert.equal(await (await st.download('z/copy.txt')).data.text(), 'm/3.txt');
  // The copy is independent of its source.
  await svc.storage.from(b2).remove(['x/3.txt']);
  assert.equal(await (await st.download('z/copy.txt')).data.text(), 'm/3.txt');
});

test('RLS: chat-files is per-user, avatars readable by anyone', async () => {
  const a = await makeUser('a');
  const b = await makeUser('b');
  const pa = `${a.id}/note.txt`;
  const up = await a.client.storage.from('chat-files').upload(pa, Buffer.from('secret of A'), { contentType: 'text/plain' });
  assert.equal(up.error, null);
  assert.equal(await (await a.client.storage.from('chat-files').download(pa)).data.text(), 'secret of A');

  const bs = b.client.storage.from('chat-files');
  assert.equal((await bs.download(pa)).error.statusCode, '404');
  assert.deepEqual((await bs.list(a.id)).data, []);
  assert.equal((await bs.info(pa)).error.statusCode, '404');
  const over = await bs.upload(pa, Buffer.from('B was here'), { upsert: true, contentType: 'text/plain' });
  assert.equal(over.error.statusCode, '403');
  assert.equal((await bs.update(pa, Buffer.from('B'), { contentType: 'text/plain' })).error.statusCode, '403');
  const rm = await bs.remove([pa]);
  assert.deepEqual(rm.data, []);
  assert.equal((await bs.move(pa, `${b.id}/stolen.txt`)).error.statusCode, '404');
  assert.equal((await bs.createSignedUrl(pa, 60)).error.statusCode, '404');
  const intoA = await bs.upload(`${a.id}/planted.txt`, Buffer.from('x'), { contentType: 'text/plain' });
  assert.equal(intoA.error.statusCode, '403');
  assert.equal(await (await a.client.storage.from('chat-files').download(pa)).data.text(), 'secret of A');
  assert.deepEqual((await a.client.storage.from('chat-files').list(a.id)).data.map((o) => o.name), ['note.txt']);

  // Owner columns come from the JWT.
  const { sql } = await import('../lib/pg.mjs');
  const row = (await sql('select owner::text, owner_id from storage.objects where bucket_id = $1 and name = $2', ['chat-files', pa])).rows[0];
  assert.deepEqual(row, { owner: a.id, owner_id: a.id });

  // Anonymous: no chat-files, but avatars read publicly.
  assert.equal((await anon().storage.from('chat-files').download(pa)).error.statusCode, '404');
  const av = `${a.id}/me.png`;
  assert.equal((await a.client.storage.from('avatars').upload(av, Buffer.from([137, 80]), { contentType: 'image/png' })).error, null);
  assert.equal((await anon().storage.from('avatars').download(av)).error, null);
  const pub = anon().storage.from('avatars').getPublicUrl(av).data.publicUrl;
  const r = await fetch(pub);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'image/png');
  assert.equal((await anon().storage.from('avatars').upload(`${a.id}/x.png`, Buffer.from('x'), { contentType: 'image/png' })).error.statusCode, '403');
  assert.equal((await b.client.storage.from('avatars').remove([av])).data.length, 0);
  // Public URLs of a private bucket do not work.
  assert.equal((await fetch(`${S}/object/public/chat-files/${pa}`)).status, 400);
});

test('downloads: ranges, ETag / If-None-Match, Last-Modified, ?download= attachment', async () => {
  const bucket = await newBucket({ public: true });
  const body = Buffer.from('0123456789abcdefghij');
  await svc.storage.from(bucket).upload('r/data.bin', body, { contentType: 'application/octet-stream' });
  const url = svc.storage.from(bucket).getPublicUrl('r/data.bin').data.publicUrl;
  const full = await fetch(url);
  assert.equal(full.status, 200);
  assert.equal(full.headers.get('accept-ranges'), 'bytes');
  const etag = full.headers.get('etag');
  assert.match(etag, /^"[0-9a-f]{32}"$/);
  assert.ok(full.headers.get('last-modified'));
  const part = await fetch(url, { headers: { Range: 'bytes=2-5' } });
  assert.equal(part.status, 206);
  assert.equal(part.headers.get('content-range'), 'bytes 2-5/20');
  assert.equal(await part.text(), '2345');
  const tail = await fetch(url, { headers: { Range: 'bytes=-3' } });
  assert.equal(await tail.text(), 'hij');
  const bad = await fetch(url, { headers: { Range: 'bytes=50-' } });
  assert.equal(bad.status, 416);
  assert.equal(bad.headers.get('content-range'), 'bytes */20');
  const nm = await fetch(url, { headers: { 'If-None-Match': etag } });
  assert.equal(nm.status, 304);
  const ims = await fetch(url, { headers: { 'If-Modified-Since': full.headers.get('last-modified') } });
  assert.equal(ims.status, 304);
  const att = await fetch(`${url}?download=`);
  assert.match(att.headers.get('content-disposition'), /^attachment; filename=data\.bin; filename\*=UTF-8''data\.bin$/);
  const named = await fetch(svc.storage.from(bucket).getPublicUrl('r/data.bin', { download: 'x.bin' }).data.publicUrl);
  assert.match(named.headers.get('content-disposition'), /^attachment; filename=x\.bin; filename\*=UTF-8''x\.bin$/);
  const head = await fetch(`${S}/object/${bucket}/r/data.bin`, { method: 'HEAD', headers: { Authorization: `Bearer ${(await import('../lib/env.mjs')).SERVICE_KEY}` } });
  assert.equal(head.status, 200);
  assert.equal(head.headers.get('content-length'), '20');
});

test('signed URLs: one and many, plain HTTP, expiry, tampering, other paths', async () => {
  const bucket = await newBucket();
  const st = svc.storage.from(bucket);
  await st.upload('s/a.txt', Buffer.from('AAA'));
  await st.upload('s/b.txt', Buffer.from('BBB'));
  const one = await st.createSignedUrl('s/a.txt', 60);
  assert.equal(one.error, null);
  assert.ok(one.data.signedUrl.startsWith(`${S}/object/sign/${bucket}/s/a.txt?token=`));
  const r = await fetch(one.data.signedUrl);
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'AAA');
  const dl = await st.createSignedUrl('s/a.txt', 60, { download: 'named.txt' });
  assert.match((await fetch(dl.data.signedUrl)).headers.get('content-disposition'), /named\.txt/);

  const token = new globalThis.URL(one.data.signedUrl).searchParams.get('token');
  const other = await fetch(`${S}/object/sign/${bucket}/s/b.txt?token=${token}`);
  assert.equal(other.status, 400);
  assert.equal((await other.json()).message, 'Invalid signature');
  const tampered = token.slice(0, -3) + (token.endsWith('AAA') ? 'BBB' : 'AAA');
  assert.equal((await fetch(`${S}/object/sign/${bucket}/s/a.txt?token=${tampered}`)).status, 400);
  // A user's access token is not a signed-URL token.
  const u = await makeUser('sig');
  assert.equal((await fetch(`${S}/object/sign/${bucket}/s/a.txt?token=${u.token}`)).status, 400);
  // Forged claims with the wrong secret.
  const forged = mintToken({ url: `${bucket}/s/a.txt`, typ: 'storage-download', exp: 9999999999 }, 'x'.repeat(40));
  assert.equal((await fetch(`${S}/object/sign/${bucket}/s/a.txt?token=${forged}`)).status, 400);

  const short = await st.createSignedUrl('s/a.txt', 1);
  await new Promise((res) => setTimeout(res, 2100));
  const expired = await fetch(short.data.signedUrl);
  assert.equal(expired.status, 400);
  assert.equal((await expired.json()).message, 'The provided token has expired.');

  const many = await st.createSignedUrls(['s/a.txt', 's/b.txt', 's/none.txt'], 60);
  assert.equal(many.data.length, 3);
  assert.equal(await (await fetch(many.data[1].signedUrl)).text(), 'BBB');
  assert.equal(many.data[2].signedUrl, null);
  assert.ok(many.data[2].error);

  const su = await st.createSignedUploadUrl('s/up.txt');
  assert.equal(su.error, null);
  const put = await st.uploadToSignedUrl('s/up.txt', su.data.token, Buffer.from('via signed upload'));
  assert.equal(put.error, null);
  assert.equal(put.data.path, 's/up.txt');
  const again = await st.uploadToSignedUrl('s/up.txt', su.data.token, Buffer.from('twice'));
  assert.equal(again.error.statusCode, '409');
  // An upload token only uploads to its own path, and a download token never uploads.
  assert.equal((await st.uploadToSignedUrl('s/elsewhere.txt', su.data.token, Buffer.from('x'))).error.statusCode, '400');
  assert.equal((await st.uploadToSignedUrl('s/a.txt', token, Buffer.from('x'))).error.statusCode, '400');
  const sup = await st.createSignedUploadUrl('s/up.txt', { upsert: true });
  assert.equal((await st.uploadToSignedUrl('s/up.txt', sup.data.token, Buffer.from('v2'))).error, null);
  assert.equal(await (await st.download('s/up.txt')).data.text(), 'v2');
  // A user may only sign uploads they could do themselves.
  assert.equal((await u.client.storage.from('chat-files').createSignedUploadUrl('someone-else/x.txt')).error.statusCode, '403');
});

test('limits: per-bucket size (413), MIME types with wildcards (415), chat-files limits', async () => {
  const lim = await newBucket({ public: false, fileSizeLimit: '1kb', allowedMimeTypes: ['image/*', 'text/plain'] });
  const st = svc.storage.from(lim);
  const big = await st.upload('big.png', Buffer.alloc(1001), { contentType: 'image/png' });
  assert.equal(big.error.message, 'The object exceeded the maximum allowed size');
  assert.equal(big.error.statusCode, '413');
  assert.equal((await st.upload('ok.png', Buffer.alloc(1000), { contentType: 'image/png' })).error, null);
  const mime = await st.upload('x.pdf', Buffer.from('%PDF'), { contentType: 'application/pdf' });
  assert.equal(mime.error.message, 'mime type application/pdf is not supported');
  assert.equal(mime.error.statusCode, '415');
  assert.equal((await st.upload('t.txt', Buffer.from('t'), { contentType: 'text/plain;charset=UTF-8' })).error, null);
  // Multipart over the limit (no Content-Length for the file): rejected while streaming.
  const blob = new Blob([new Uint8Array(5000)], { type: 'image/png' });
  assert.equal((await st.upload('big2.png', blob)).error.statusCode, '413');
  assert.equal((await st.exists('big.png')).data, false);
  assert.equal((await st.exists('big2.png')).data, false);

  const u = await makeUser('lim');
  const cf = u.client.storage.from('chat-files');
  assert.equal((await cf.upload(`${u.id}/v.mp4`, Buffer.from('x'), { contentType: 'video/mp4' })).error.statusCode, '415');
  assert.equal((await u.client.storage.from('avatars').upload(`${u.id}/a.txt`, Buffer.from('x'), { contentType: 'text/plain' })).error.statusCode, '415');
  const tooBig = await cf.upload(`${u.id}/big.bin`, Buffer.alloc(10 * 1024 * 1024 + 1), { contentType: 'application/octet-stream' });
  assert.equal(tooBig.error.statusCode, '413');
});

test('bad input: traversal, NUL, overlong keys, bad JSON, bad tokens', async () => {
  const { SERVICE_KEY } = await import('../lib/env.mjs');
  const h = { Authorization: `Bearer ${SERVICE_KEY}` };
  for (const p of ['../etc/passwd', '%2e%2e/%2e%2e/etc/passwd', 'a/%2E%2E/b', '%2Fabs', 'a%00b', 'a//b', 'x'.repeat(1025)]) {
    // Raw requests: fetch would normalize `..` away before it reaches the server.
    const r = await raw('POST', `/storage/v1/object/chat-files/${p}`, { ...h, 'content-type': 'text/plain' }, 'x');
    assert.equal(r.status, 400, p);
    assert.equal(JSON.parse(r.body).code, 'InvalidKey', p);
    const g = await raw('GET', `/storage/v1/object/chat-files/${p}`, h);
    assert.equal(g.status, 400, p);
    assert.equal(JSON.parse(g.body).code, 'InvalidKey', p);
  }
  const badJson = await fetch(`${S}/bucket`, { method: 'POST', headers: { ...h, 'content-type': 'application/json' }, body: '{nope' });
  assert.equal(badJson.status, 400);
  assert.ok((await badJson.json()).message);
  const badJwt = await fetch(`${S}/bucket`, { headers: { Authorization: 'Bearer not.a.jwt' } });
  assert.equal(badJwt.status, 400);
  assert.equal((await badJwt.json()).statusCode, '403');
  // As Supabase Storage: no credentials at all is refused, not anon.
  const none = await fetch(`${S}/bucket`);
  assert.equal(none.status, 400);
  assert.equal((await none.json()).message, 'Invalid Compact JWS');
  const expired = mintToken({ role: 'authenticated', sub: crypto.randomUUID(), exp: 1000 });
  const ex = await fetch(`${S}/bucket`, { headers: { Authorization: `Bearer ${expired}` } });
  assert.equal((await ex.json()).statusCode, '403');
  const nf = await fetch(`${S}/nothing/here`, { headers: h });
  assert.equal(nf.status, 404);
  const mv = await fetch(`${S}/object/move`, { method: 'POST', headers: { ...h, 'content-type': 'application/json' }, body: JSON.stringify({ bucketId: 'chat-files', sourceKey: 'a', destinationKey: '../../x' }) });
  assert.equal((await mv.json()).code, 'InvalidKey');
});

test('concurrent writers of one key: one version wins whole, nothing half-written', async () => {
  const bucket = await newBucket();
  const st = svc.storage.from(bucket);
  const bodies = Array.from({ length: 6 }, (_, i) => Buffer.alloc(200_000 + i, 65 + i));
  const rs = await Promise.all(bodies.map((b) => st.upload('race.bin', b, { upsert: true, contentType: 'application/octet-stream' })));
  for (const r of rs) assert.equal(r.error, null);
  const got = Buffer.from(await (await st.download('race.bin')).data.arrayBuffer());
  assert.ok(bodies.some((b) => b.equals(got)), 'content is exactly one of the writes');
  const creates = await Promise.all([1, 2, 3].map((i) => st.upload('once.txt', Buffer.from(`w${i}`))));
  assert.equal(creates.filter((r) => r.error === null).length, 1);
  assert.equal(creates.filter((r) => r.error?.statusCode === '409').length, 2);
});
