// Image transformations through supabase-js and plain HTTP.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { URL, anon, service } from '../lib/env.mjs';
import { makeUser, makePng, imageSize, uniq } from './storage_helpers.mjs';

const svc = service();

test('render: authenticated, public and signed transforms; formats; bounds; RLS', async () => {
  const bucket = uniq('img');
  assert.equal((await svc.storage.createBucket(bucket, { public: true })).error, null);
  const st = svc.storage.from(bucket);
  const png = await makePng(400, 200);
  assert.equal((await st.upload('p/pic.png', png, { contentType: 'image/png' })).error, null);

  const cover = await st.download('p/pic.png', { transform: { width: 100, height: 100 } });
  assert.equal(cover.error, null);
  assert.equal(cover.data.type, 'image/png');
  assert.deepEqual(imageSize(Buffer.from(await cover.data.arrayBuffer())), { w: 100, h: 100 });

  const contain = await st.download('p/pic.png', { transform: { width: 100, height: 100, resize: 'contain' } });
  assert.deepEqual(imageSize(Buffer.from(await contain.data.arrayBuffer())), { w: 100, h: 50 });

  // JPEG out, then a JPEG source keeps JPEG ("origin").
  const toJpeg = await fetch(`${URL}/storage/v1/render/image/public/${bucket}/p/pic.png?width=80&format=jpeg&quality=60`);
  assert.equal(toJpeg.status, 200);
  assert.equal(toJpeg.headers.get('content-type'), 'image/jpeg');
  const jpeg = Buffer.from(await toJpeg.arrayBuffer());
  assert.deepEqual(imageSize(jpeg), { w: 80, h: 40 });
  await st.upload('p/pic.jpg', jpeg, { contentType: 'image/jpeg' });
  const j2 = await st.download('p/pic.jpg', { transform: { width: 20, height: 20 } });
  assert.equal(j2.data.type, 'image/jpeg');

  // WebP when the client accepts it.
  const webp = await fetch(`${URL}/storage/v1/render/image/public/${bucket}/p/pic.png?width=10`, { headers: { Accept: 'image/webp,*/*' } });
  assert.equal(webp.headers.get('content-type'), 'image/webp');

  const pub = svc.storage.from(bucket).getPublicUrl('p/pic.png', { transform: { width: 30, height: 30 } }).data.publicUrl;
  assert.match(pub, /\/render\/image\/public\//);
  assert.equal((await fetch(pub)).status, 200);

  const signed = await st.createSignedUrl('p/pic.png', 60, { transform: { width: 200, height: 200, quality: 60 } });
  assert.equal(signed.error, null);
  const r = await fetch(signed.data.signedUrl);
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('x-transformations'), 'height:200,width:200,resizing_type:fill,quality:60');
  assert.ok(Number(r.headers.get('content-length')) > 0);
  // The token's transformation wins over query parameters.
  const forced = await fetch(`${signed.data.signedUrl}&width=5`);
  assert.deepEqual(imageSize(Buffer.from(await forced.arrayBuffer())), { w: 200, h: 200 });

  // Not an image, bad parameters, missing object.
  await st.upload('p/t.txt', Buffer.from('text'));
  const notImg = await fetch(`${URL}/storage/v1/render/image/public/${bucket}/p/t.txt?width=10`);
  assert.equal(notImg.status, 400);
  assert.equal((await fetch(`${URL}/storage/v1/render/image/public/${bucket}/p/pic.png?width=99999`)).status, 400);
  assert.equal((await fetch(`${URL}/storage/v1/render/image/public/${bucket}/p/none.png?width=10`)).status, 400);

  // RLS: another user cannot render someone's chat-files image.
  const a = await makeUser('ra');
  const b = await makeUser('rb');
  await a.client.storage.from('chat-files').upload(`${a.id}/i.png`, png, { contentType: 'image/png' });
  assert.equal((await a.client.storage.from('chat-files').download(`${a.id}/i.png`, { transform: { width: 10 } })).error, null);
  const denied = await b.client.storage.from('chat-files').download(`${a.id}/i.png`, { transform: { width: 10 } });
  assert.equal(denied.error.statusCode, '404');
  assert.equal((await anon().storage.from('chat-files').download(`${a.id}/i.png`, { transform: { width: 10 } })).error.statusCode, '404');
});
