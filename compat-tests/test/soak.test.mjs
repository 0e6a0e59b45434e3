// A bounded soak: many supabase-js clients doing a mix of REST, Auth, Storage, Realtime and
// Functions work against one oxibase for a fixed time. It asserts zero 5xx and no failed
// request, every inserted message delivered to its realtime subscriber, and the server's
// memory and descriptors flat; it prints p50/p99 per operation.
//
// CI runs a short mode. The long mode is documented in SECURITY.md:
//   SOAK_SECONDS=300 SOAK_CLIENTS=400 SOAK_USERS=100 npm test --prefix compat-tests soak
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomUUID } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { createClient } from '@supabase/supabase-js';
import { startServer, ANON_KEY, SERVICE_KEY, JWT_SECRET } from '../lib/server.mjs';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 20);
const CLIENTS = Number(process.env.SOAK_CLIENTS ?? 120);
const USERS = Number(process.env.SOAK_USERS ?? 24);
const SUBSCRIBERS = Math.min(USERS, Number(process.env.SOAK_SUBSCRIBERS ?? 12));

const b64url = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
function userToken(id) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url({ sub: id, role: 'authenticated', aud: 'authenticated', iat: now, exp: now + 3600 });
  const sig = createHmac('sha256', JWT_SECRET).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

function processStats(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = Number(/VmRSS:\s+(\d+)/.exec(status)[1]) * 1024;
  const fds = readdirSync(`/proc/${pid}/fd`).length;
  return { rss, fds };
}

const pct = (xs, p) => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

test(`soak: ${CLIENTS} clients, ${USERS} users, ${SECONDS} s of mixed APIs`, { timeout: (SECONDS + 120) * 1000 }, async () => {
  const server = await startServer({
    toml: '[auth]\nrate_limit_per_hour = 1000000\nrefresh_rate_limit_per_hour = 1000000\n',
  });
  const realtimeClients = [];
  try {
    const opts = { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } };
    const admin = createClient(server.url, SERVICE_KEY, opts);

    // Users, each with one conversation; tokens minted with the local secret.
    const users = [];
    for (let i = 0; i < USERS; i++) {
      const email = `soak-${i}-${randomUUID().slice(0, 8)}@example.com`;
      const { data, error } = await admin.auth.admin.createUser({ email, password: 'soak-pass-1', email_confirm: true });
      assert.equal(error, null, String(error));
      const token = userToken(data.user.id);
      const sb = createClient(server.url, ANON_KEY, { ...opts, accessToken: async () => token });
      const conv = await sb.from('conversations').insert({ title: `soak ${i}` }).select('id').single();
      assert.equal(conv.error, null, JSON.stringify(conv.error));
      users.push({ id: data.user.id, email, token, sb, conversation: conv.data.id, inserted: new Map() });
    }

    // Realtime subscribers: each watches its own conversation's messages.
    for (const u of users.slice(0, SUBSCRIBERS)) {
      u.seen = new Map();
      const rt = createClient(server.url, ANON_KEY, { ...opts, accessToken: async () => u.token });
      await rt.realtime.setAuth(u.token);
      realtimeClients.push(rt);
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('subscribe timed out')), 10_000);
        rt.channel(`soak-${u.id}`)
          .on('postgres_changes', { event: 'INSERT', schema: 'public', table: 'messages', filter: `conversation_id=eq.${u.conversation}` },
            (p) => u.seen.set(p.new.id, performance.now()))
          .subscribe((status, err) => {
            if (status === 'SUBSCRIBED') { clearTimeout(timer); resolve(); }
            if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') { clearTimeout(timer); reject(err ?? new Error(status)); }
          });
      });
    }

    const lat = {};
    const fails = [];
    let fivexx = 0;
    let total = 0;
    const record = (op, ms, status, detail) => {
      (lat[op] ??= []).push(ms);
      total++;
      if (status >= 500) fivexx++;
      if (status >= 400 || status === 0) fails.push(`${op}: ${status} ${detail ?? ''}`.slice(0, 300));
    };
    const timed = async (op, fn) => {
      const t = performance.now();
      try {
        const { status, detail } = await fn();
        record(op, performance.now() - t, status, detail);
      } catch (e) {
        record(op, performance.now() - t, 0, e?.message);
      }
    };
    const fromResult = (r) => ({ status: r.error ? (r.status || 0) : (r.status || 200), detail: r.error && JSON.stringify(r.error) });

    const ops = [
      [30, 'rest.insert', async (u) => {
        const id = randomUUID();
        const r = await u.sb.from('messages').insert({ id, conversation_id: u.conversation, role: 'user', content: `hello ${id}` });
        if (!r.error) u.inserted.set(id, performance.now());
        return fromResult(r);
      }],
      [30, 'rest.select', async (u) => fromResult(await u.sb.from('messages').select('id, role, content, created_at')
        .eq('conversation_id', u.conversation).order('created_at', { ascending: false }).limit(20))],
      [10, 'rest.embed', async (u) => fromResult(await u.sb.from('conversations').select('id, title, messages(count)').limit(5))],
      [10, 'storage.upload+download', async (u) => {
        const path = `${u.id}/soak-${randomUUID()}.txt`;
        const body = `soak ${'x'.repeat(1000 + Math.floor(Math.random() * 3000))}`;
        const up = await u.sb.storage.from('chat-files').upload(path, body, { contentType: 'text/plain' });
        if (up.error) return { status: up.error.statusCode ? Number(up.error.statusCode) : 0, detail: up.error.message };
        const down = await u.sb.storage.from('chat-files').download(path);
        if (down.error) return { status: 0, detail: down.error.message };
        const text = await down.data.text();
        return text === body ? { status: 200 } : { status: 0, detail: 'downloaded bytes differ' };
      }],
      [10, 'auth.user', async (u) => {
        const r = await fetch(`${server.url}/auth/v1/user`, { headers: { apikey: ANON_KEY, Authorization: `Bearer ${u.token}` } });
        const j = await r.json();
        return { status: r.status, detail: j.id === u.id ? undefined : JSON.stringify(j) };
      }],
      [5, 'rest.service_count', async () => fromResult(await admin.from('messages').select('id', { count: 'exact', head: true }))],
      [5, 'storage.list', async (u) => {
        const r = await u.sb.storage.from('chat-files').list(u.id, { limit: 10 });
        return { status: r.error ? 0 : 200, detail: r.error?.message };
      }],
    ];
    const weight = ops.reduce((a, [w]) => a + w, 0);
    const pick = () => {
      let x = Math.random() * weight;
      for (const op of ops) { if ((x -= op[0]) < 0) return op; }
      return ops[0];
    };

    // A short warm-up fills the pools and caches; "before" is measured after it, at rest.
    const pid = server.proc.pid;
    const run = async (seconds, measure) => {
      const deadline = Date.now() + seconds * 1000;
      const workers = [];
      for (let c = 0; c < CLIENTS; c++) {
        const u = users[c % users.length];
        workers.push((async () => {
          while (Date.now() < deadline) {
            const [, name, fn] = pick();
            await (measure ? timed(name, () => fn(u)) : fn(u).catch(() => {}));
          }
        })());
      }
      // One client runs code in the sandbox now and then (its capacity is per process).
      workers.push((async () => {
        const u = users[0];
        while (Date.now() < deadline) {
          const code = async () => {
            const { data, error } = await u.sb.functions.invoke('code-execution', { body: { language: 'python', code: 'print(6*7)' } });
            if (error) return { status: error.context?.status ?? 0, detail: String(error) };
            return { status: 200, detail: data.stdout === '42\n' ? undefined : JSON.stringify(data) };
          };
          await (measure ? timed('functions.code', code) : code().catch(() => {}));
        }
      })());
      await Promise.all(workers);
    };
    // Idle keep-alive sockets of the clients close after 4 s (undici's default).
    const settle = () => new Promise((r) => setTimeout(r, 6000));
    await run(Math.min(5, SECONDS / 4), false);
    await settle();
    const before = processStats(pid);
    const samples = [];
    const sampler = setInterval(() => samples.push(processStats(pid)), 1000);
    await run(SECONDS, true);
    clearInterval(sampler);

    // Every message inserted for a subscriber arrives (a short grace for the last ones).
    const subscribed = users.filter((u) => u.seen);
    const missing = () => subscribed.reduce((a, u) => a + [...u.inserted.keys()].filter((id) => !u.seen.has(id)).length, 0);
    for (let i = 0; i < 100 && missing() > 0; i++) await new Promise((r) => setTimeout(r, 100));
    const expected = subscribed.reduce((a, u) => a + u.inserted.size, 0);
    // Delivery latency: from the insert's answer to the change's arrival (0 when it came first).
    const delivery = subscribed.flatMap((u) => [...u.inserted]
      .filter(([id]) => u.seen.has(id)).map(([id, at]) => Math.max(0, u.seen.get(id) - at)));

    for (const rt of realtimeClients) await rt.removeAllChannels();
    realtimeClients.length = 0;
    await settle();
    const after = processStats(pid);

    const peakRss = Math.max(...samples.map((s) => s.rss), after.rss);
    const rows = Object.entries(lat).map(([op, xs]) =>
      `${op.padEnd(26)} ${String(xs.length).padStart(7)} ${pct(xs, 50).toFixed(1).padStart(8)} ${pct(xs, 99).toFixed(1).padStart(8)}`);
    const all = Object.values(lat).flat();
    console.log([
      `soak: ${SECONDS} s, ${CLIENTS} clients, ${USERS} users, ${subscribed.length} realtime subscribers`,
      `${'operation'.padEnd(26)} ${'count'.padStart(7)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)}`,
      ...rows,
      `${'all'.padEnd(26)} ${String(total).padStart(7)} ${pct(all, 50).toFixed(1).padStart(8)} ${pct(all, 99).toFixed(1).padStart(8)}`,
      `requests/s ${(total / SECONDS).toFixed(0)}; 5xx ${fivexx}; failed ${fails.length}`,
      `realtime: ${expected - missing()}/${expected} inserts delivered to their subscribers, p50 ${pct(delivery, 50).toFixed(1)} ms, p99 ${pct(delivery, 99).toFixed(1)} ms after the insert's answer`,
      `rss MB: after warm-up ${(before.rss / 2 ** 20).toFixed(1)}, peak ${(peakRss / 2 ** 20).toFixed(1)}, end ${(after.rss / 2 ** 20).toFixed(1)}`,
      `descriptors: after warm-up ${before.fds}, peak ${Math.max(...samples.map((s) => s.fds))}, after ${after.fds}`,
    ].join('\n'));

    assert.equal(fivexx, 0, `5xx answers:\n${fails.slice(0, 20).join('\n')}`);
    assert.deepEqual(fails.slice(0, 20), [], `${fails.length} failed requests`);
    assert.ok(total > CLIENTS, `the soak made requests (${total})`);
    const perUser = subscribed.map((u) => `${[...u.inserted.keys()].filter((id) => !u.seen.has(id)).length}/${u.inserted.size}`).join(' ');
    const realtimeLog = server.logs().split('\n').map((l) => l.replace(/\x1b\[[0-9;]*m/g, ''))
      .filter((l) => /realtime/.test(l) && /WARN|ERROR/.test(l)).slice(-20).join('\n');
    assert.equal(missing(), 0, `every inserted message reaches its subscriber (${expected - missing()}/${expected}); missing per subscriber ${perUser}\n${realtimeLog}`);
    // Flat: once warm, memory grows by less than a quarter (plus allocator slack), and the
    // descriptors return to where they were once the clients are gone.
    assert.ok(after.rss < before.rss * 1.25 + 16 * 2 ** 20, `RSS after warm-up ${before.rss}, at the end ${after.rss}`);
    assert.ok(after.fds <= before.fds + 8, `descriptors before ${before.fds}, after ${after.fds}`);
  } finally {
    for (const rt of realtimeClients) await rt.removeAllChannels().catch(() => {});
    const r = await server.stop();
    assert.ok(r && r.code === 0, `oxibase stopped cleanly: ${JSON.stringify(r)}\n${server.logs().slice(-3000)}`);
  }
});
