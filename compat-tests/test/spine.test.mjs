import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { URL, ANON_KEY, SERVICE_KEY } from '../lib/env.mjs';
import { binaryPath, startServer } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

test('health answers 200 {"status":"ok"}', async () => {
  const r = await fetch(`${URL}/health`);
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), { status: 'ok' });
});

test('CORS preflight echoes the requested headers and allows the methods', async () => {
  const r = await fetch(`${URL}/rest/v1/todos`, {
    method: 'OPTIONS',
    headers: {
      Origin: 'http://localhost:3000',
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': 'apikey, authorization, x-client-info, content-type, prefer',
    },
  });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('access-control-allow-origin'), 'http://localhost:3000');
  assert.match(r.headers.get('access-control-allow-methods'), /POST/);
  assert.match(r.headers.get('access-control-allow-headers'), /x-client-info/);
  const g = await fetch(`${URL}/health`, { headers: { Origin: 'http://example.test' } });
  assert.equal(g.headers.get('access-control-allow-origin'), 'http://example.test');
  assert.match(g.headers.get('access-control-expose-headers'), /Content-Range/);
});

test('`oxibase keys` prints the well-known local keys', () => {
  const out = execFileSync(binaryPath(), ['keys'], { env: { ...process.env, OXIBASE_JWT_SECRET: '' } }).toString();
  assert.ok(out.includes(ANON_KEY), out);
  assert.ok(out.includes(SERVICE_KEY), out);
  assert.match(out, /DB URL: postgresql:\/\/postgres:postgres@127\.0\.0\.1:54322\/postgres/);
});

test('unknown paths get 404 and every response carries a request id', async () => {
  const r = await fetch(`${URL}/nope`);
  assert.equal(r.status, 404);
  assert.ok(r.headers.get('x-request-id'));
});

test('a non-loopback bind with the well-known secret is refused', () => {
  let err;
  try {
    execFileSync(binaryPath(), ['serve', '--bind', '0.0.0.0', '--port', '1'], { stdio: 'pipe', env: { ...process.env, OXIBASE_JWT_SECRET: '' } });
  } catch (e) {
    err = e;
  }
  assert.ok(err, 'expected a failure');
  assert.equal(err.status, 2);
  assert.match(err.stderr.toString(), /refusing to listen on 0\.0\.0\.0/);
});

test('a second oxibase on the same data dir refuses with a clear message', async () => {
  const first = await startServer();
  try {
    let err;
    try {
      execFileSync(binaryPath(), ['serve', '--port', '0', '--db-port', String(first.dbPort + 1)], {
        stdio: 'pipe',
        env: { ...process.env, OXIBASE_DATA_DIR: first.dataDir },
        timeout: 20_000,
      });
    } catch (e) {
      err = e;
    }
    assert.ok(err, 'expected the second instance to fail');
    assert.match(err.stderr.toString(), /in use by another oxibase/);
  } finally {
    await first.stop();
  }
});

test('the eight tables exist with RLS enabled and forced', async () => {
  const { rows } = await sql(
    `select relname, relrowsecurity, relforcerowsecurity from pg_class
     where relnamespace = 'public'::regnamespace and relkind = 'r' order by relname`,
  );
  const want = ['api_usage', 'code_executions', 'conversations', 'file_uploads', 'messages', 'profiles', 'user_sessions', 'visualizations'];
  for (const t of want) {
    const r = rows.find((x) => x.relname === t);
    assert.ok(r, `missing table ${t}`);
    assert.equal(r.relrowsecurity, true, `${t} RLS enabled`);
    assert.equal(r.relforcerowsecurity, true, `${t} RLS forced`);
  }
  const b = await sql(`select id, public, file_size_limit from storage.buckets where id in ('chat-files','avatars') order by id`);
  assert.deepEqual(b.rows.map((r) => [r.id, r.public, Number(r.file_size_limit)]), [['avatars', true, 2097152], ['chat-files', false, 10485760]]);
});

test('restart keeps data; kill -9 then start again works', async () => {
  const s1 = await startServer();
  const dir = s1.dataDir;
  const db = (s) => `postgres://postgres:postgres@127.0.0.1:${s.dbPort}/postgres`;
  await sql(`create table public.survivor (id int primary key, note text); insert into survivor values (1, 'kept')`, [], db(s1));
  await s1.stop({ keep: true });
  const s2 = await startServer({ dataDir: dir });
  assert.deepEqual((await sql('select note from survivor', [], db(s2))).rows, [{ note: 'kept' }]);
  await sql(`insert into survivor values (2, 'after restart')`, [], db(s2));
  await s2.kill(); // kill -9: its postgres child is orphaned and must be recovered from
  const s3 = await startServer({ dataDir: dir });
  const h = await fetch(`${s3.url}/health`);
  assert.equal(h.status, 200);
  assert.equal((await sql('select count(*)::int as n from survivor', [], db(s3))).rows[0].n, 2);
  await s3.stop({ keep: true });
  const migrations = await (async () => {
    const s4 = await startServer({ dataDir: dir });
    try {
      return (await sql('select count(*)::int as n from oxibase.schema_migrations', [], db(s4))).rows[0].n;
    } finally {
      await s4.stop();
    }
  })();
  assert.ok(migrations >= 2, 'migrations recorded once each, idempotent across restarts');
});

test('a tampered JWT is rejected, not treated as anon', async () => {
  const parts = ANON_KEY.split('.');
  const payload = Buffer.from(JSON.stringify({ iss: 'supabase-demo', role: 'service_role', exp: 1983812996 })).toString('base64url');
  const forged = `${parts[0]}.${payload}.${parts[2]}`;
  const r = await fetch(`${URL}/rest/v1/profiles`, { headers: { apikey: ANON_KEY, Authorization: `Bearer ${forged}` } });
  assert.equal(r.status, 401);
  const body = await r.json();
  assert.ok(body.code && body.message, JSON.stringify(body));
  const expired = await fetch(`${URL}/rest/v1/profiles`, {
    headers: { Authorization: 'Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.' },
  });
  assert.equal(expired.status, 401, 'alg none is rejected');
});

test('a malformed config file gets one clear message and exit code 2', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oxibase-badcfg-'));
  const f = join(dir, 'bad.toml');
  writeFileSync(f, 'port = "not a number"\n');
  let err;
  try {
    execFileSync(binaryPath(), ['serve', '--config', f], { stdio: 'pipe' });
  } catch (e) {
    err = e;
  }
  assert.ok(err);
  assert.equal(err.status, 2);
  assert.match(err.stderr.toString(), /invalid config file .*bad\.toml/);
  assert.doesNotMatch(err.stderr.toString(), /panicked/);
});

test('config --dump shows merged settings with secrets hidden', () => {
  const out = execFileSync(binaryPath(), ['config', '--dump'], {
    env: { ...process.env, OXIBASE_PORT: '6000', OXIBASE_JWT_SECRET: 'a-custom-secret-that-is-at-least-32-chars' },
  }).toString();
  assert.match(out, /^port = 6000$/m);
  assert.match(out, /^jwt_secret = "\*\*\*"$/m);
  assert.doesNotMatch(out, /a-custom-secret/);
});

test('a refused streaming upload gets its answer, not a reset (lingering close)', async () => {
  // fetch streams a FormData body; the server refuses on the bad token before reading it.
  for (const path of ['/rest/v1/anything', '/storage/v1/object/chat-files/x.txt', '/functions/v1/file-upload']) {
    let answered = 0;
    for (let i = 0; i < 40; i++) {
      const form = new FormData();
      form.append('file', new Blob(['hi'.repeat(1000)], { type: 'text/plain' }), 'a.txt');
      let r;
      try {
        r = await fetch(`${URL}${path}`, {
          method: 'POST',
          body: form,
          headers: { Authorization: 'Bearer not.a.jwt', apikey: ANON_KEY },
        });
      } catch (e) {
        // Say which request broke and how (a reset shows as the cause's code).
        throw new Error(`${path}, request ${i + 1}: ${e.message} (${e.cause?.code ?? e.cause?.message ?? 'no cause'})`);
      }
      assert.ok(r.status === 400 || r.status === 401, `${path}, request ${i + 1}: ${r.status}`);
      await r.arrayBuffer();
      answered++;
    }
    assert.equal(answered, 40, path);
  }
});
