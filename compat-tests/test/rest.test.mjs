// /rest/v1 through real supabase-js: select grammar, filters, modifiers, mutations, rpc,
// media types, errors and RLS, on the fixture in fixtures/rest.sql.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createHmac, randomUUID } from 'node:crypto';
import { URL, anon, service, clientWith, ANON_KEY } from '../lib/env.mjs';
import { JWT_SECRET } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
function userToken(sub) {
  const h = b64({ alg: 'HS256', typ: 'JWT' });
  const p = b64({ sub, role: 'authenticated', aud: 'authenticated', exp: Math.floor(Date.now() / 1000) + 3600 });
  const s = createHmac('sha256', JWT_SECRET).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${s}`;
}
const asUser = (sub) => clientWith(ANON_KEY, { global: { headers: { Authorization: `Bearer ${userToken(sub)}` } } });

let db;
before(async () => {
  await sql(readFileSync(new globalThis.URL('../fixtures/rest.sql', import.meta.url), 'utf8'));
  await sql(`do $$ begin
    execute format('alter role authenticator in database %I set pgrst.db_aggregates_enabled = true', current_database());
    execute format('alter role authenticator in database %I set pgrst.db_plan_enabled = true', current_database());
    execute format('alter role authenticator in database %I set pgrst.db_tx_end = %L', current_database(), 'commit-allow-override');
  end $$`);
  await sql(`notify pgrst, 'reload schema'`);
  db = service();
  // Wait until the schema cache knows the fixture.
  for (let i = 0; i < 50; i++) {
    const { error } = await db.from('rx_books').select('id').limit(1);
    if (!error) break;
    await new Promise((r) => setTimeout(r, 100));
  }
});

test('select: columns, aliases, casts, json paths', async () => {
  const { data, error, status } = await db
    .from('rx_authors')
    .select('id, who:name, born::text, hugo:meta->awards->hugo, lang:meta->langs->>0')
    .eq('id', 1);
  assert.equal(error, null);
  assert.equal(status, 200);
  assert.deepEqual(data, [{ id: 1, who: 'Ursula Le Guin', born: '1929-10-21', hugo: 5, lang: 'en' }]);
});

test('embedding: many-to-one with hint, one-to-many ordered/limited, many-to-many, nested', async () => {
  const { data, error } = await db
    .from('rx_books')
    .select('title, author:rx_authors!author_id(name, books:rx_books!author_id(title)), rx_tags(label)')
    .eq('id', 1)
    .order('title', { referencedTable: 'author.books' })
    .single();
  assert.equal(error, null);
  assert.equal(data.author.name, 'Ursula Le Guin');
  assert.deepEqual(data.author.books.map((b) => b.title), ['The Dispossessed', 'The Left Hand of Darkness']);
  assert.deepEqual(data.rx_tags.map((t) => t.label).sort(), ['award', 'classic']);
  const r = await db
    .from('rx_authors')
    .select('name, rx_books!author_id(title, pages)')
    .eq('id', 2)
    .order('pages', { referencedTable: 'rx_books', ascending: false })
    .limit(1, { referencedTable: 'rx_books' });
  assert.deepEqual(r.data, [{ name: 'Stanislaw Lem', rx_books: [{ title: 'The Cyberiad', pages: 295 }] }]);
});

test('embedding: !inner filters parents, is.null anti-join, spread, computed field and relationship', async () => {
  const inner = await db.from('rx_books').select('id, rx_authors!author_id!inner(country)').eq('rx_authors.country', 'PL').order('id');
  assert.deepEqual(inner.data.map((b) => b.id), [3, 4]);
  const none = await db.from('rx_authors').select('name, rx_books!author_id()').is('rx_books', null);
  assert.deepEqual(none.data, [{ name: 'Nobody Yet' }]);
  const spread = await db.from('rx_books').select('title, ...rx_authors!author_id(author:name)').eq('id', 3);
  assert.deepEqual(spread.data, [{ title: 'Solaris', author: 'Stanislaw Lem' }]);
  const comp = await db.from('rx_books').select('id, rx_label').eq('id', 1);
  assert.deepEqual(comp.data, [{ id: 1, rx_label: 'The Dispossessed (387)' }]);
  const crel = await db.from('rx_authors').select('name, rx_coauthored(title)').eq('id', 2);
  assert.deepEqual(crel.data, [{ name: 'Stanislaw Lem', rx_coauthored: [{ title: 'The Dispossessed' }] }]);
  const view = await db.from('rx_books_view').select('title, rx_authors!author_id(name)').eq('id', 3);
  assert.deepEqual(view.data, [{ title: 'Solaris', rx_authors: { name: 'Stanislaw Lem' } }]);
});

test('embedding: !left keeps parents, range on an embed, three levels deep', async () => {
  const left = await db.from('rx_books').select('id, editor:rx_authors!editor_id!left(name)').in('id', [1, 2]).order('id');
  assert.deepEqual(left.data, [
    { id: 1, editor: { name: 'Stanislaw Lem' } },
    { id: 2, editor: null },
  ]);
  const ranged = await db
    .from('rx_authors')
    .select('id, rx_books!author_id(id)')
    .eq('id', 1)
    .order('id', { referencedTable: 'rx_books' })
    .range(1, 1, { referencedTable: 'rx_books' });
  assert.deepEqual(ranged.data, [{ id: 1, rx_books: [{ id: 2 }] }]);
  const deep = await db
    .from('rx_tags')
    .select('label, rx_books(title, rx_authors!author_id(name, rx_books!author_id(id)))')
    .eq('id', 3);
  assert.deepEqual(deep.data, [
    { label: 'short', rx_books: [{ title: 'Ficciones', rx_authors: { name: 'Jorge Luis Borges', rx_books: deep.data[0].rx_books[0].rx_authors.rx_books } }] },
  ]);
  assert.ok(deep.data[0].rx_books[0].rx_authors.rx_books.some((b) => b.id === 5));
});

test('identifiers with spaces and (escaped) quotes in table, column and filter names', async () => {
  const { data, error } = await db.from('rx weird').select('id, "two words", q:"q\\"uote"').eq('"two words"', 'a b');
  assert.equal(error, null, JSON.stringify(error));
  assert.deepEqual(data, [{ id: 1, 'two words': 'a b', q: 7 }]);
  const up = await db.from('rx weird').update({ 'two words': 'z' }).eq('id', 2).select('"two words"');
  assert.deepEqual(up.data, [{ 'two words': 'z' }]);
});

test('ambiguous and unknown embeds are PostgREST errors', async () => {
  const amb = await db.from('rx_authors').select('name, rx_books(title)');
  assert.equal(amb.status, 300);
  assert.equal(amb.error.code, 'PGRST201');
  assert.match(amb.error.hint, /rx_books!rx_books_author_id_fkey/);
  const unk = await db.from('rx_books').select('id, nothing(*)');
  assert.equal(unk.status, 400);
  assert.equal(unk.error.code, 'PGRST200');
  assert.equal(unk.error.message, "Could not find a relationship between 'rx_books' and 'nothing' in the schema cache");
});

test('filters: every operator', async () => {
  const ids = async (q) => {
    const { data, error } = await q.order('id');
    assert.equal(error, null, JSON.stringify(error));
    return data.map((r) => r.id);
  };
  const B = () => db.from('rx_books').select('id');
  assert.deepEqual(await ids(B().eq('pages', 204)), [3]);
  assert.deepEqual(await ids(B().neq('author_id', 1)), [3, 4, 5]);
  assert.deepEqual(await ids(B().gt('pages', 300)), [1, 2]);
  assert.deepEqual(await ids(B().gte('pages', 304)), [1, 2]);
  assert.deepEqual(await ids(B().lt('pages', 200)), [5]);
  assert.deepEqual(await ids(B().lte('pages', 204)), [3, 5]);
  assert.deepEqual(await ids(B().like('title', '%Left%')), [2]);
  assert.deepEqual(await ids(B().ilike('title', '%solaris%')), [3]);
  assert.deepEqual(await ids(B().match({ author_id: 2, pages: 204 })), [3]);
  assert.deepEqual(await ids(B().filter('title', 'match', '^The')), [1, 2, 4]);
  assert.deepEqual(await ids(B().filter('title', 'imatch', '^the c')), [4]);
  assert.deepEqual(await ids(B().is('price', null)), [4]);
  assert.deepEqual(await ids(B().filter('editor_id', 'isdistinct', 1)), [1, 2, 4, 5]);
  assert.deepEqual(await ids(B().in('title', ['Solaris', 'The Cyberiad', 'x,y'])), [3, 4]);
  assert.deepEqual(await ids(B().not('id', 'in', '(1,2,3)')), [4, 5]);
  assert.deepEqual(await ids(B().contains('genres', ['scifi', 'humor'])), [4]);
  assert.deepEqual(await ids(B().containedBy('genres', ['scifi', 'politics', 'fantasy'])), [1, 2, 5]);
  assert.deepEqual(await ids(B().overlaps('genres', ['fantasy', 'humor'])), [4, 5]);
  assert.deepEqual(await ids(B().rangeLt('period', '[1966,1967)')), [3, 4, 5]);
  assert.deepEqual(await ids(B().rangeGt('period', '[1966,1967)')), [1, 2]);
  assert.deepEqual(await ids(B().rangeGte('period', '[1969,1970)')), [1, 2]);
  assert.deepEqual(await ids(B().rangeLte('period', '[1944,1945)')), [5]);
  assert.deepEqual(await ids(B().rangeAdjacent('period', '[1945,1950)')), [5]);
  assert.deepEqual(await ids(B().overlaps('period', '[1960,1966)')), [3, 4]);
  assert.deepEqual(await ids(B().textSearch('body', 'cat', { config: 'english' })), [4, 5]);
  assert.deepEqual(await ids(B().textSearch('body', 'planet & mind', { config: 'english' })), [3]);
  assert.deepEqual(await ids(B().textSearch('body', 'cat dog', { type: 'plain', config: 'english' })), [4]);
  assert.deepEqual(await ids(B().textSearch('body', 'ocean planet', { type: 'phrase', config: 'english' })), [3]);
  assert.deepEqual(await ids(B().textSearch('body', 'cat -dog', { type: 'websearch', config: 'english' })), [5]);
  assert.deepEqual(await ids(B().likeAnyOf('title', ['%Sol%', '%Cyb%'])), [3, 4]);
  assert.deepEqual(await ids(B().likeAllOf('title', ['The%', '%ness'])), [2]);
  assert.deepEqual(await ids(B().ilikeAnyOf('title', ['%SOL%'])), [3]);
  assert.deepEqual(await ids(B().or('id.eq.1,and(pages.gt.300,title.not.like.*Dis*)')), [1, 2]);
  assert.deepEqual(await ids(B().or('title.eq."The Cyberiad",id.in.(1,5)')), [1, 4, 5]);
  assert.deepEqual(await ids(B().filter('author_id', 'eq', 2).eq('published', true)), [3, 4]);
  assert.deepEqual(await ids(db.from('rx_authors').select('id').gt('meta->awards->>hugo', '1')), [1]);
  assert.deepEqual(await ids(db.from('rx_authors').select('id').eq('meta->langs->>1', 'en')), [2]);
  assert.deepEqual(await ids(db.from('rx_authors').select('id').contains('meta', { awards: { hugo: 0 } })), [2]);
});

test('or on an embedded resource and filters on embeds', async () => {
  const { data } = await db
    .from('rx_authors')
    .select('id, rx_books!author_id(id)')
    .or('pages.gt.300,pages.lt.200', { referencedTable: 'rx_books' })
    .in('id', [1, 3])
    .order('id');
  assert.deepEqual(data, [
    { id: 1, rx_books: [{ id: 1 }, { id: 2 }] },
    { id: 3, rx_books: [{ id: 5 }] },
  ]);
});

test('order, nulls, limit, range, counts with Content-Range and 206, head', async () => {
  const o = await db.from('rx_books').select('id').order('price', { ascending: false, nullsFirst: true }).limit(2);
  assert.deepEqual(o.data.map((r) => r.id), [4, 3]);
  const o2 = await db.from('rx_books').select('id').order('price', { ascending: true, nullsFirst: false });
  assert.deepEqual(o2.data.map((r) => r.id), [5, 2, 1, 3, 4]);
  const byAuthor = await db
    .from('rx_books')
    .select('id, a:rx_authors!author_id(name)')
    .in('id', [1, 3, 5])
    .order('a(name)', { ascending: true });
  assert.deepEqual(byAuthor.data.map((b) => b.id), [5, 3, 1]);
  const r = await db.from('rx_books').select('id', { count: 'exact' }).order('id').range(1, 2);
  assert.equal(r.status, 206);
  assert.equal(r.statusText, 'Partial Content');
  assert.equal(r.count, 5);
  assert.deepEqual(r.data.map((x) => x.id), [2, 3]);
  const all = await db.from('rx_books').select('id', { count: 'exact' });
  assert.equal(all.status, 200);
  assert.equal(all.count, 5);
  const h = await db.from('rx_books').select('*', { count: 'exact', head: true }).gt('pages', 300);
  assert.equal(h.count, 2);
  assert.equal(h.data, null);
  for (const kind of ['planned', 'estimated']) {
    const c = await db.from('rx_books').select('id', { count: kind }).limit(1);
    assert.equal(typeof c.count, 'number');
  }
  const raw = await fetch(`${URL}/rest/v1/rx_books?select=id&order=id`, { headers: { Range: '0-1', apikey: ANON_KEY } });
  assert.equal(raw.headers.get('content-range'), '0-1/*');
  assert.equal((await raw.json()).length, 2);
});

test('aggregates: count(), sum(), avg(), grouped and inside embeds', async () => {
  const { data, error } = await db.from('rx_books').select('status, count(), pages.sum(), price.max()').order('status');
  assert.equal(error, null, JSON.stringify(error));
  assert.deepEqual(data, [
    { status: 'draft', count: 1, sum: 174, max: 7.25 },
    { status: 'out', count: 4, sum: 1190, max: 12.0 },
  ]);
  const mm = await db.from('rx_books').select('pages.avg(), pages.min(), n:count()').eq('author_id', 1);
  assert.deepEqual(mm.data, [{ avg: 345.5, min: 304, n: 2 }]);
  const e = await db.from('rx_authors').select('name, rx_books!author_id(count)').eq('id', 2);
  assert.deepEqual(e.data, [{ name: 'Stanislaw Lem', rx_books: [{ count: 2 }] }]);
});

test('single, maybeSingle, csv, stripNulls, explain', async () => {
  const one = await db.from('rx_books').select('id, title').eq('id', 3).single();
  assert.deepEqual(one.data, { id: 3, title: 'Solaris' });
  const many = await db.from('rx_books').select('id').single();
  assert.equal(many.status, 406);
  assert.equal(many.error.code, 'PGRST116');
  assert.equal(many.error.message, 'Cannot coerce the result to a single JSON object');
  assert.equal(many.error.details, 'The result contains 5 rows');
  const maybe = await db.from('rx_books').select('id').eq('id', 999).maybeSingle();
  assert.equal(maybe.data, null);
  assert.equal(maybe.error, null);
  const csv = await db.from('rx_books').select('id, pages').lt('id', 3).order('id').csv();
  assert.equal(csv.data, 'id,pages\n1,387\n2,304');
  const strip = await db.from('rx_books').select('id, price').eq('id', 4).stripNulls();
  assert.deepEqual(strip.data, [{ id: 4 }]);
  const plan = await db.from('rx_books').select('id').eq('id', 1).explain({ format: 'json' });
  assert.equal(plan.error, null, JSON.stringify(plan.error));
  assert.ok(Array.isArray(plan.data) && plan.data[0].Plan, JSON.stringify(plan.data));
  const text = await db.from('rx_books').select('id').explain();
  assert.match(text.data, /Scan/);
});

test('insert: single, bulk with columns, return modes, defaults, Location', async () => {
  await db.from('rx_kv').delete().like('k', 'ins-%');
  const min = await db.from('rx_kv').insert({ k: 'ins-1', v: 'a' });
  assert.equal(min.status, 201);
  assert.equal(min.data, null);
  const rep = await db.from('rx_kv').insert([{ k: 'ins-2' }, { k: 'ins-3', v: 'c', n: 1 }]).select();
  assert.equal(rep.status, 201);
  assert.deepEqual(rep.data, [
    { k: 'ins-2', v: null, n: null },
    { k: 'ins-3', v: 'c', n: 1 },
  ]);
  const def = await db.from('rx_kv').insert([{ k: 'ins-4' }, { k: 'ins-5', n: 2 }], { defaultToNull: false }).select('k, n');
  assert.deepEqual(def.data, [
    { k: 'ins-4', n: 7 },
    { k: 'ins-5', n: 2 },
  ]);
  const r = await fetch(`${URL}/rest/v1/rx_kv`, {
    method: 'POST',
    headers: { apikey: ANON_KEY, 'Content-Type': 'application/json', Prefer: 'return=headers-only' },
    body: JSON.stringify({ k: 'ins 6' }),
  });
  assert.equal(r.status, 201);
  assert.equal(r.headers.get('location'), '/rx_kv?k=eq.ins%206');
  const withEmbed = await db.from('rx_books').insert({ title: `T-${randomUUID()}`, author_id: 3 }).select('title, rx_authors!author_id(name)').single();
  assert.equal(withEmbed.data.rx_authors.name, 'Jorge Luis Borges');
});

test('upsert: merge and ignore duplicates, on_conflict', async () => {
  await db.from('rx_kv').upsert({ k: 'up-1', v: 'a' });
  const merged = await db.from('rx_kv').upsert({ k: 'up-1', v: 'b' }).select();
  assert.deepEqual(merged.data, [{ k: 'up-1', v: 'b', n: 7 }]);
  const ign = await db.from('rx_kv').upsert([{ k: 'up-1', v: 'c' }, { k: 'up-2', v: 'd' }], { ignoreDuplicates: true }).select();
  assert.deepEqual(ign.data, [{ k: 'up-2', v: 'd', n: 7 }]);
  const oc = await db.from('rx_tags').upsert({ label: 'classic' }, { onConflict: 'label' }).select('id, label');
  assert.deepEqual(oc.data, [{ id: 1, label: 'classic' }]);
  const dup = await db.from('rx_kv').insert({ k: 'up-1' });
  assert.equal(dup.status, 409);
  assert.equal(dup.error.code, '23505');
});

test('update and delete with filters, max-affected, rollback', async () => {
  await db.from('rx_kv').insert([{ k: 'ud-1' }, { k: 'ud-2' }, { k: 'ud-3' }]);
  const up = await db.from('rx_kv').update({ v: 'x' }).like('k', 'ud-%').select('k, v').order('k');
  assert.deepEqual(up.data.map((r) => r.v), ['x', 'x', 'x']);
  const lim = await db.from('rx_kv').update({ v: 'first' }).like('k', 'ud-%').order('k', { ascending: false }).limit(1).select('k, v');
  assert.deepEqual(lim.data, [{ k: 'ud-3', v: 'first' }]);
  const none = await db.from('rx_kv').update({ v: 'y' }).eq('k', 'missing');
  assert.equal(none.status, 204);
  const max = await db.from('rx_kv').delete().like('k', 'ud-%').maxAffected(2);
  assert.equal(max.error.code, 'PGRST124');
  const still = await db.from('rx_kv').select('k', { count: 'exact', head: true }).like('k', 'ud-%');
  assert.equal(still.count, 3);
  const rb = await db.from('rx_kv').delete().like('k', 'ud-%').rollback().select();
  assert.equal(rb.data.length, 3);
  const after = await db.from('rx_kv').select('k', { count: 'exact', head: true }).like('k', 'ud-%');
  assert.equal(after.count, 3);
  const del = await db.from('rx_kv').delete({ count: 'exact' }).like('k', 'ud-%');
  assert.equal(del.count, 3);
  const bad = await db.from('rx_kv').update({ nope: 1 }).eq('k', 'x');
  assert.equal(bad.status, 400);
  assert.equal(bad.error.code, 'PGRST204');
  assert.equal(bad.error.message, "Could not find the 'nope' column of 'rx_kv' in the schema cache");
});

test('rpc: post, get, head, overloads, set-returning with filters, scalar, void, json body, errors', async () => {
  assert.deepEqual((await db.rpc('rx_add', { a: 1, b: 2 })).data, 3);
  assert.deepEqual((await db.rpc('rx_add', { a: 'x', b: 'y', sep: '-' })).data, 'x-y');
  assert.deepEqual((await db.rpc('rx_add', { a: 4, b: 5 }, { get: true })).data, 9);
  const set = await db.rpc('rx_books_by', { author: 1 }).select('title, rx_authors!author_id(name)').order('pages');
  assert.deepEqual(set.data, [
    { title: 'The Left Hand of Darkness', rx_authors: { name: 'Ursula Le Guin' } },
    { title: 'The Dispossessed', rx_authors: { name: 'Ursula Le Guin' } },
  ]);
  const counted = await db.rpc('rx_books_by', { author: 2 }, { count: 'exact', head: true });
  assert.equal(counted.count, 2);
  // head with an object argument: postgrest-js POSTs with return=minimal.
  const headObj = await db.rpc('rx_books_matching', { f: { author: 2 } }, { head: true, count: 'exact' });
  assert.equal(headObj.error, null, JSON.stringify(headObj.error));
  assert.equal(headObj.count, 2);
  assert.equal(headObj.data, null);
  assert.deepEqual((await db.rpc('rx_ids').gt('rx_ids', 3)).data, [4, 5]);
  const stats = (await db.rpc('rx_stats').gt('total', 1)).data;
  assert.ok(stats.length >= 2 && stats.every((r) => r.total > 1), JSON.stringify(stats));
  assert.ok(stats.some((r) => r.author === 'Stanislaw Lem' && r.total === 2));
  assert.deepEqual((await db.rpc('rx_echo', { x: [1, 2] })).data, { x: [1, 2] });
  const v = await db.rpc('rx_touch');
  assert.equal(v.status, 204);
  assert.equal(v.error, null);
  const ro = await db.rpc('rx_touch', {}, { get: true });
  assert.equal(ro.status, 405);
  assert.equal(ro.error.code, '25006');
  const fail = await db.rpc('rx_fail');
  assert.equal(fail.status, 400);
  assert.deepEqual(fail.error, { code: 'P0001', details: 'rx detail', hint: 'rx hint', message: 'rx failed' });
  const tea = await fetch(`${URL}/rest/v1/rpc/rx_teapot`, { method: 'POST', headers: { apikey: ANON_KEY, 'Content-Type': 'application/json' }, body: '{}' });
  assert.equal(tea.status, 418);
  assert.equal(tea.headers.get('x-rx'), 'brewing');
  assert.deepEqual(await tea.json(), { code: 'RX418', message: 'I am a teapot', details: 'short and stout', hint: 'tip me over' });
  const pay = await db.rpc('rx_pay');
  assert.equal(pay.status, 402);
  assert.deepEqual(pay.error, { code: 'PT402', message: 'Payment Required', details: 'quota', hint: null });
  const nf = await db.rpc('rx_nope', { a: 1 });
  assert.equal(nf.status, 404);
  assert.equal(nf.error.code, 'PGRST202');
  assert.equal(nf.error.message, 'Could not find the function public.rx_nope(a) in the schema cache');
});

test('Prefer: timezone applies to one request only', async () => {
  const tokyo = await db.rpc('rx_tz').setHeader('Prefer', 'timezone=Asia/Tokyo');
  assert.equal(tokyo.error, null);
  assert.equal(tokyo.data, 'Asia/Tokyo');
  const plain = await db.rpc('rx_tz');
  assert.notEqual(plain.data, 'Asia/Tokyo');
  const strict = await db.rpc('rx_tz').setHeader('Prefer', 'handling=strict, timezone=Nowhere/Land');
  assert.equal(strict.status, 400);
  assert.equal(strict.error.code, 'PGRST122');
  const lenient = await db.rpc('rx_tz').setHeader('Prefer', 'timezone=Nowhere/Land');
  assert.equal(lenient.data, plain.data);
});

test('RLS: rows are scoped to the JWT user; anon sees none; errors map to 401/403', async () => {
  const u1 = randomUUID();
  const u2 = randomUUID();
  const c1 = asUser(u1);
  const c2 = asUser(u2);
  const ins = await c1.from('rx_notes').insert({ body: 'mine' }).select('owner, body').single();
  assert.equal(ins.error, null, JSON.stringify(ins.error));
  assert.equal(ins.data.owner, u1);
  assert.equal((await c1.from('rx_notes').select('body')).data.length, 1);
  assert.equal((await c2.from('rx_notes').select('body')).data.length, 0);
  const forged = await c2.from('rx_notes').insert({ body: 'x', owner: u1 });
  assert.equal(forged.status, 403);
  assert.equal(forged.error.code, '42501');
  assert.equal((await anon().from('rx_notes').select('*')).data.length, 0);
  const anonIns = await anon().from('rx_notes').insert({ body: 'x' });
  assert.equal(anonIns.status, 401);
  const del = await c2.from('rx_notes').delete().eq('body', 'mine').select();
  assert.deepEqual(del.data, []);
});

test('schema profiles and bad input are PostgREST errors, never 500', async () => {
  const prof = await db.schema('nope').from('rx_books').select('id');
  assert.equal(prof.status, 406);
  assert.equal(prof.error.code, 'PGRST106');
  const missing = await db.from('rx_missing').select('*');
  assert.equal(missing.status, 404);
  assert.equal(missing.error.code, 'PGRST205');
  const col = await db.from('rx_books').select('nope');
  assert.equal(col.status, 400);
  assert.equal(col.error.code, '42703');
  for (const q of ['select=id,,x', 'select=a(', 'id=zz.1', 'or=(id.eq.1', 'order=id.sideways', 'limit=-1', 'select=id::int;drop']) {
    const r = await fetch(`${URL}/rest/v1/rx_books?${q}`, { headers: { apikey: ANON_KEY } });
    assert.equal(r.status, 400, q);
    const body = await r.json();
    assert.equal(body.code, 'PGRST100', q);
    assert.ok('hint' in body && 'details' in body, q);
  }
  const badJson = await fetch(`${URL}/rest/v1/rx_kv`, { method: 'POST', headers: { apikey: ANON_KEY, 'Content-Type': 'application/json' }, body: '{"k":' });
  assert.equal(badJson.status, 400);
  assert.equal((await badJson.json()).code, 'PGRST102');
  const typ = await db.from('rx_books').select('id').eq('id', 'abc');
  assert.equal(typ.status, 400);
  assert.equal(typ.error.code, '22P02');
});

test('OpenAPI document lists tables and functions', async () => {
  const r = await fetch(`${URL}/rest/v1/`, { headers: { apikey: ANON_KEY, Accept: 'application/openapi+json' } });
  assert.equal(r.status, 200);
  const doc = await r.json();
  assert.equal(doc.openapi.slice(0, 2), '3.');
  assert.ok(doc.paths['/rx_books']);
  assert.ok(doc.paths['/rpc/rx_add']);
  assert.ok(doc.components.schemas.rx_books.properties.title);
});
