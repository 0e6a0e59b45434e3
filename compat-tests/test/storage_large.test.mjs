// A 1 GiB object streamed up and down through supabase-js/fetch while the server's peak
// memory (VmHWM of its process) stays flat.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, SERVICE_KEY } from '../lib/server.mjs';
import { userClient } from './storage_helpers.mjs';

const SIZE = 1024 * 1024 * 1024;
const peakKiB = (pid) => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);

function generated(size) {
  // Deterministic pseudo-random bytes, produced lazily.
  let sent = 0;
  const block = crypto.randomBytes(1 << 20);
  const hash = crypto.createHash('sha256');
  const stream = new ReadableStream({
    pull(ctrl) {
      if (sent >= size) {
        ctrl.close();
        return;
      }
      const n = Math.min(block.length, size - sent);
      block[0] = (sent >> 20) & 0xff; // vary each MiB
      const chunk = Buffer.from(block.subarray(0, n));
      hash.update(chunk);
      ctrl.enqueue(chunk);
      sent += n;
    },
  });
  return { stream, digest: () => hash.digest('hex') };
}

test('1 GiB upload and download stream with flat server memory', { timeout: 600_000 }, async () => {
  const server = await startServer({ toml: '[storage]\nfile_size_limit = 2147483648\n' });
  try {
    const svc = userClient(SERVICE_KEY, server.url).storage;
    assert.equal((await svc.createBucket('large')).error, null);
    // Warm up, then take the baseline peak.
    await svc.from('large').upload('warm.bin', Buffer.alloc(1 << 20));
    await (await svc.from('large').download('warm.bin')).data.arrayBuffer();
    const before = peakKiB(server.proc.pid);

    const src = generated(SIZE);
    const up = await fetch(`${server.url}/storage/v1/object/large/huge.bin`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${SERVICE_KEY}`, 'content-type': 'application/octet-stream' },
      body: src.stream,
      duplex: 'half',
    });
    assert.equal(up.status, 200, await up.clone().text());
    const info = await svc.from('large').info('huge.bin');
    assert.equal(info.data.size, SIZE);

    const signed = await svc.from('large').createSignedUrl('huge.bin', 600);
    const res = await fetch(signed.data.signedUrl);
    assert.equal(res.headers.get('content-length'), String(SIZE));
    const h = crypto.createHash('sha256');
    let n = 0;
    for await (const chunk of res.body) {
      h.update(chunk);
      n += chunk.length;
    }
    assert.equal(n, SIZE);
    assert.equal(h.digest('hex'), src.digest());

    const after = peakKiB(server.proc.pid);
    const growthMiB = (after - before) / 1024;
    console.log(`server peak memory: before ${Math.round(before / 1024)} MiB, after ${Math.round(after / 1024)} MiB`);
    assert.ok(growthMiB < 64, `server peak memory grew by ${growthMiB.toFixed(1)} MiB for a 1 GiB transfer`);

    // A client that dies mid-upload leaves no object and no bytes.
    const ac = new AbortController();
    let sent = 0;
    const dying = new ReadableStream({
      pull(ctrl) {
        if (sent >= 24 * 1024 * 1024) {
          ac.abort();
          return;
        }
        ctrl.enqueue(Buffer.alloc(1 << 20, 1));
        sent += 1 << 20;
      },
    });
    await assert.rejects(fetch(`${server.url}/storage/v1/object/large/dies.bin`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${SERVICE_KEY}`, 'content-type': 'application/octet-stream' },
      body: dying,
      duplex: 'half',
      signal: ac.signal,
    }));
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await svc.from('large').exists('dies.bin')).data, false);

    // Over the limit while streaming: refused, nothing kept.
    const small = await startServerLimitCheck(server, svc);
    assert.equal(small, true);

    // On disk: exactly the bytes of the two live objects (warm.bin, huge.bin).
    await svc.from('large').remove(['warm.bin']);
    await new Promise((r) => setTimeout(r, 500));
    const files = [];
    const walk = (d) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(d, e.name));
        else files.push(join(d, e.name));
      }
    };
    walk(join(server.dataDir, 'storage'));
    assert.equal(files.length, 1, files.join('\n'));
    assert.equal(statSync(files[0]).size, SIZE);
  } finally {
    await server.stop();
  }
});

async function startServerLimitCheck(server, svc) {
  await svc.updateBucket('large', { public: false, fileSizeLimit: 1024 * 1024 });
  const src = generated(8 * 1024 * 1024);
  const r = await fetch(`${server.url}/storage/v1/object/large/over.bin`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${SERVICE_KEY}`, 'content-type': 'application/octet-stream' },
    body: src.stream,
    duplex: 'half',
  }).catch((e) => ({ status: 0, error: e }));
  // The server answers 413-in-body as soon as the limit passes (the client may also see
  // the connection close while it is still sending).
  if (r.status !== 0) {
    const j = await r.json();
    assert.equal(j.statusCode, '413');
  }
  return (await svc.from('large').exists('over.bin')).data === false;
}
