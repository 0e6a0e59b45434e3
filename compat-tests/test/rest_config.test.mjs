// /rest/v1 with non-default config on a private server: extra exposed schemas selected by
// Accept-Profile/Content-Profile (supabase.schema()), max_rows, plans off by default,
// tx=rollback ignored unless allowed, and PostGIS GeoJSON when the extension exists.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '@supabase/supabase-js';
import { startServer, SERVICE_KEY, ANON_KEY } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

let srv;
let db;
let dbUrl;
const opts = { auth: { persistSession: false, autoRefreshToken: false } };

before(async () => {
  srv = await startServer({ toml: '[rest]\nschemas = ["public", "rx_other"]\nmax_rows = 3\n' });
  dbUrl = `postgres://postgres:postgres@127.0.0.1:${srv.dbPort}/postgres`;
  await sql(
    `create schema if not exists rx_other;
     grant usage on schema rx_other to anon, authenticated, service_role;
     create table rx_other.things (id int primary key, name text);
     insert into rx_other.things select i, 'other ' || i from generate_series(1, 5) i;
     create table public.things (id int primary key, name text);
     insert into public.things values (1, 'public 1');
     grant all on all tables in schema rx_other to anon, service_role;
     grant all on public.things to anon, service_role;
     create function rx_other.hello(name text) returns text language sql as $$ select 'hello ' || name $$;
     grant execute on function rx_other.hello(text) to anon, service_role;
     notify pgrst, 'reload schema';`,
    [],
    dbUrl,
  );
  db = createClient(srv.url, SERVICE_KEY, opts);
  for (let i = 0; i < 50; i++) {
    const { error } = await db.schema('rx_other').from('things').select('id').limit(1);
    if (!error) break;
    await new Promise((r) => setTimeout(r, 100));
  }
});

after(async () => {
  await srv?.stop();
});

test('schema() selects the exposed schema for reads, writes and rpc', async () => {
  const pub = await db.from('things').select('name');
  assert.deepEqual(pub.data, [{ name: 'public 1' }]);
  const other = await db.schema('rx_other').from('things').select('name').eq('id', 2);
  assert.deepEqual(other.data, [{ name: 'other 2' }]);
  const ins = await db.schema('rx_other').from('things').insert({ id: 9, name: 'nine' }).select();
  assert.equal(ins.status, 201);
  assert.deepEqual(ins.data, [{ id: 9, name: 'nine' }]);
  const rpc = await db.schema('rx_other').rpc('hello', { name: 'x' });
  assert.equal(rpc.data, 'hello x');
  const bad = await db.schema('auth').from('users').select('*');
  assert.equal(bad.status, 406);
  assert.equal(bad.error.code, 'PGRST106');
  assert.equal(bad.error.message, 'The schema must be one of the following: public, rx_other');
});

test('max_rows caps reads, Content-Range shows the cap', async () => {
  const r = await db.schema('rx_other').from('things').select('id', { count: 'exact' }).order('id');
  assert.equal(r.data.length, 3);
  assert.equal(r.count, 6);
  assert.equal(r.status, 206);
});

test('plans are off by default; tx=rollback is ignored unless allowed', async () => {
  const plan = await db.from('things').select('id').explain();
  assert.equal(plan.status, 406);
  await db.from('things').insert({ id: 2, name: 'kept' }).rollback();
  const kept = await db.from('things').select('name').eq('id', 2);
  assert.deepEqual(kept.data, [{ name: 'kept' }]);
});

test('GeoJSON output through PostGIS', async (t) => {
  const have = await sql(`select 1 from pg_available_extensions where name = 'postgis'`, [], dbUrl);
  if (have.rowCount === 0) return t.skip('PostGIS is not installed');
  await sql(
    `create extension if not exists postgis schema extensions;
     create table public.places (id int primary key, name text, geom extensions.geometry(Point, 4326));
     insert into public.places values (1, 'origin', extensions.st_setsrid(extensions.st_makepoint(1, 2), 4326));
     grant all on public.places to anon, service_role;
     notify pgrst, 'reload schema';`,
    [],
    dbUrl,
  );
  let r;
  for (let i = 0; i < 50; i++) {
    r = await createClient(srv.url, ANON_KEY, opts).from('places').select('name, geom').geojson();
    if (!r.error) break;
    await new Promise((res) => setTimeout(res, 100));
  }
  assert.equal(r.error, null, JSON.stringify(r.error));
  assert.equal(r.data.type, 'FeatureCollection');
  assert.deepEqual(r.data.features[0].geometry, { type: 'Point', coordinates: [1, 2] });
  assert.deepEqual(r.data.features[0].properties, { name: 'origin' });
});
