// The S3 backend (object_store "aws") against a real S3-compatible server run locally:
// moto (`pip install 'moto[server]'`), started by this test.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { spawn } from 'node:child_process';
import { startServer, freePort, SERVICE_KEY } from '../lib/server.mjs';
import { userClient } from './storage_helpers.mjs';
import { skipWithoutMoto } from '../lib/helpers.mjs';


test('S3 backend: buckets of bytes in moto, multipart uploads, ranges, copy, delete', { timeout: 180_000, skip: skipWithoutMoto() }, async () => {
  const motoPort = await freePort();
  const moto = spawn('moto_server', ['-H', '127.0.0.1', '-p', String(motoPort)], { stdio: 'ignore' });
  const s3 = `http://127.0.0.1:${motoPort}`;
  let server;
  try {
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${s3}/`)).status < 500) break;
      } catch {}
      if (i > 100) throw new Error('moto did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal((await fetch(`${s3}/oxi-bytes`, { method: 'PUT' })).status, 200);
    server = await startServer({
      env: {
        OXIBASE_STORAGE_URL: 's3://oxi-bytes/prefix',
        AWS_ENDPOINT_URL: s3,
        AWS_ACCESS_KEY_ID: 'test',
        AWS_SECRET_ACCESS_KEY: 'test',
        AWS_REGION: 'us-east-1',
      },
    });
    const svc = userClient(SERVICE_KEY, server.url).storage;
    assert.equal((await svc.createBucket('s3b')).error, null);
    const st = svc.from('s3b');
    const small = Buffer.from('small object in S3');
    assert.equal((await st.upload('a/small.txt', small)).error, null);
    const big = crypto.randomBytes(12 * 1024 * 1024 + 7);
    assert.equal((await st.upload('a/big.bin', big, { contentType: 'application/octet-stream' })).error, null);

    // The bytes are really in the S3 bucket, under the prefix.
    const listing = await (await fetch(`${s3}/oxi-bytes?list-type=2&prefix=prefix/objects/`)).text();
    assert.equal((listing.match(/<Key>prefix\/objects\//g) || []).length, 2, listing);

    assert.equal(await (await st.download('a/small.txt')).data.text(), small.toString());
    const got = Buffer.from(await (await st.download('a/big.bin')).data.arrayBuffer());
    assert.ok(got.equals(big));
    const pub = await st.createSignedUrl('a/big.bin', 60);
    const part = await fetch(pub.data.signedUrl, { headers: { Range: 'bytes=10-19' } });
    assert.equal(part.status, 206);
    assert.ok(Buffer.from(await part.arrayBuffer()).equals(big.subarray(10, 20)));

    assert.equal((await st.copy('a/small.txt', 'b/copy.txt')).error, null);
    assert.equal(await (await st.download('b/copy.txt')).data.text(), small.toString());
    assert.equal((await st.update('a/small.txt', Buffer.from('v2'))).error, null);
    assert.equal(await (await st.download('a/small.txt')).data.text(), 'v2');
    await st.remove(['a/big.bin', 'a/small.txt', 'b/copy.txt']);
    // Old versions and removed objects leave no bytes behind.
    for (let i = 0; i < 50; i++) {
      const l = await (await fetch(`${s3}/oxi-bytes?list-type=2&prefix=prefix/objects/`)).text();
      if (!l.includes('<Key>')) break;
      await new Promise((r) => setTimeout(r, 100));
      if (i === 49) assert.fail(`bytes left in S3: ${l}`);
    }
  } finally {
    if (server) await server.stop();
    moto.kill();
  }
});
