// TUS resumable uploads (the protocol tus-js-client speaks to Supabase), resumed after a
// client abort and after a server restart, on a private server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { mkdtempSync, chmodSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, freePort, SERVICE_KEY } from '../lib/server.mjs';
import { makeUser, userClient } from './storage_helpers.mjs';

const CHUNK = 6 * 1024 * 1024;
const meta = (o) => Object.entries(o).map(([k, v]) => `${k} ${Buffer.from(v).toString('base64')}`).join(',');

async function create(base, token, bucket, name, length, extra = {}) {
  const r = await fetch(`${base}/storage/v1/upload/resumable`, {
    method: 'POST',
    headers: {
      Authorization: `Bearer ${token}`,
      'Tus-Resumable': '1.0.0',
      'Upload-Length': String(length),
      'Upload-Metadata': meta({ bucketName: bucket, objectName: name, contentType: 'application/octet-stream', cacheControl: '3600', ...extra }),
      'x-upsert': 'true',
    },
  });
  return r;
}

const patch = (url, token, offset, body, signal) =>
  fetch(url, {
    method: 'PATCH',
    headers: {
      Authorization: `Bearer ${token}`,
      'Tus-Resumable': '1.0.0',
      'Upload-Offset': String(offset),
      'Content-Type': 'application/offset+octet-stream',
    },
    body,
    duplex: 'half',
    signal,
  });

const head = (url, token) =>
  fetch(url, { method: 'HEAD', headers: { Authorization: `Bearer ${token}`, 'Tus-Resumable': '1.0.0' } });

test('TUS: 6 MB chunks, aborted chunk, server restart, then completion under RLS', { timeout: 240_000 }, async () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'oxibase-tus-'));
  chmodSync(dataDir, 0o755);
  const ports = { port: await freePort(), dbPort: await freePort() };
  let server = await startServer({ dataDir, ports });
  const dbUrl = `postgres://postgres:postgres@127.0.0.1:${ports.dbPort}/postgres`;
  try {
    const opt = await fetch(`${server.url}/storage/v1/upload/resumable`, { method: 'OPTIONS' });
    assert.equal(opt.status, 204);
    assert.match(opt.headers.get('tus-extension'), /creation/);

    const u = await makeUser('tus', dbUrl);
    const other = await makeUser('tus-other', dbUrl);
    const data = crypto.randomBytes(2 * CHUNK + 12345);
    const name = `${u.id}/big.bin`;
    // Only into one's own folder (RLS insert check at creation).
    assert.equal((await create(server.url, u.token, 'chat-files', `${other.id}/x.bin`, 10)).status, 403);
    // Bucket limit (chat-files: 10 MiB) checked against Upload-Length... so use service on a big bucket.
    const tooBig = await create(server.url, u.token, 'chat-files', name, 11 * 1024 * 1024);
    assert.equal(tooBig.status, 413);
    // Metadata that would become a header is checked.
    assert.equal((await create(server.url, u.token, 'chat-files', `${u.id}/h.txt`, 3, { contentType: 'text/plain\r\nx-evil: 1' })).status, 400);
    assert.equal((await create(server.url, u.token, 'chat-files', `${u.id}/../../x`, 3)).status, 400);

    const svc = userClient(SERVICE_KEY, server.url);
    assert.equal((await svc.storage.createBucket('tus-big', { public: false })).error, null);
    const c = await create(server.url, SERVICE_KEY, 'tus-big', 'data/big.bin', data.length);
    assert.equal(c.status, 201);
    const url = new globalThis.URL(c.headers.get('location'), server.url).toString();
    assert.equal(c.headers.get('tus-resumable'), '1.0.0');

    assert.equal((await patch(url, SERVICE_KEY, 0, data.subarray(0, CHUNK))).status, 204);
    // A wrong offset is refused.
    assert.equal((await patch(url, SERVICE_KEY, 5, data.subarray(5, 10))).status, 409);
    // Another user cannot see or touch it.
    assert.equal((await head(url, other.token)).status, 404);

    // The client dies in the middle of the second chunk: nothing of it is kept.
    const ac = new AbortController();
    let sent = 0;
    const partial = new ReadableStream({
      pull(ctrl) {
        if (sent >= CHUNK / 2) {
          ac.abort();
          return;
        }
        ctrl.enqueue(data.subarray(CHUNK + sent, CHUNK + sent + 65536));
        sent += 65536;
      },
    });
    await assert.rejects(patch(url, SERVICE_KEY, CHUNK, partial, ac.signal));
    await new Promise((r) => setTimeout(r, 300));
    let h = await head(url, SERVICE_KEY);
    assert.equal(h.status, 200);
    assert.equal(h.headers.get('upload-offset'), String(CHUNK));
    assert.equal(h.headers.get('upload-length'), String(data.length));

    // The server restarts; the upload resumes where it was.
    await server.stop({ keep: true });
    server = await startServer({ dataDir, ports });
    h = await head(url, SERVICE_KEY);
    assert.equal(h.headers.get('upload-offset'), String(CHUNK));
    assert.equal((await patch(url, SERVICE_KEY, CHUNK, data.subarray(CHUNK, 2 * CHUNK))).status, 204);
    const last = await patch(url, SERVICE_KEY, 2 * CHUNK, data.subarray(2 * CHUNK));
    assert.equal(last.status, 204);
    assert.equal(last.headers.get('upload-offset'), String(data.length));
    // Finished: the upload is gone and the object is whole.
    assert.equal((await head(url, SERVICE_KEY)).status, 404);
    const dl = await svc.storage.from('tus-big').download('data/big.bin');
    assert.equal(dl.error, null);
    const got = Buffer.from(await dl.data.arrayBuffer());
    assert.equal(got.length, data.length);
    assert.ok(got.equals(data));
    const info = await svc.storage.from('tus-big').info('data/big.bin');
    assert.equal(info.data.cacheControl, 'max-age=3600');

    // A user's own resumable upload into chat-files, with creation-with-upload.
    const small = Buffer.from('small resumable');
    const r = await fetch(`${server.url}/storage/v1/upload/resumable`, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${u.token}`,
        'Tus-Resumable': '1.0.0',
        'Upload-Length': String(small.length),
        'Upload-Metadata': meta({ bucketName: 'chat-files', objectName: `${u.id}/s.txt`, contentType: 'text/plain' }),
        'Content-Type': 'application/offset+octet-stream',
      },
      body: small,
    });
    assert.equal(r.status, 201);
    assert.equal(r.headers.get('upload-offset'), String(small.length));
    const sdl = await userClient(u.token, server.url).storage.from('chat-files').download(`${u.id}/s.txt`);
    assert.equal(sdl.error, null);
    assert.equal(await sdl.data.text(), 'small resumable');
    // Terminate.
    const t = await create(server.url, u.token, 'chat-files', `${u.id}/t.txt`, 5);
    const turl = new globalThis.URL(t.headers.get('location'), server.url).toString();
    const del = await fetch(turl, { method: 'DELETE', headers: { Authorization: `Bearer ${u.token}`, 'Tus-Resumable': '1.0.0' } });
    assert.equal(del.status, 204);
    assert.equal((await head(turl, u.token)).status, 404);
  } finally {
    await server.stop({ keep: true });
    rmSync(dataDir, { recursive: true, force: true });
  }
});
