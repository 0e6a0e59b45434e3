// /auth/v1 through real supabase-js: sign-up, profile trigger, sessions, refresh, user
// updates, sign-out, anonymous users, OTP and magic links via the local inbox, the admin
// API, asymmetric signing (JWKS) and rate limits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, generateKeyPairSync, randomUUID } from 'node:crypto';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@supabase/supabase-js';
import { URL, ANON_KEY, SERVICE_KEY, anon, service, clientWith } from '../lib/env.mjs';
import { startServer } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

const uniq = () => randomUUID().slice(0, 8);
const email = (p = 'u') => `${p}-${uniq()}@example.com`;

async function inbox(address, base = URL, key = SERVICE_KEY) {
  const r = await fetch(`${base}/auth/v1/inbox?email=${encodeURIComponent(address)}`, {
    headers: { apikey: key, Authorization: `Bearer ${key}` },
  });
  assert.equal(r.status, 200);
  return (await r.json()).messages;
}

test('sign-up creates a profile by trigger, then sign-in, getUser, refresh, update, sign-out', async () => {
  const sb = anon();
  const addr = email('flow');
  const { data, error } = await sb.auth.signUp({
    email: addr,
    password: 'hunter22',
    options: { data: { username: `u_${uniq()}`, full_name: 'Flow Tester' } },
  });
  assert.equal(error, null);
  assert.ok(data.session?.access_token && data.session.refresh_token && data.session.expires_in);
  const uid = data.user.id;
  const { rows } = await sql('select full_name from public.profiles where id = $1', [uid]);
  assert.equal(rows[0]?.full_name, 'Flow Tester');

  const signedIn = await sb.auth.signInWithPassword({ email: addr, password: 'hunter22' });
  assert.equal(signedIn.error, null);
  assert.equal(signedIn.data.user.id, uid);
  const { data: claims } = await sb.auth.getClaims();
  assert.equal(claims.claims.sub, uid);
  assert.equal(claims.claims.session_id, jwtPayload(signedIn.data.session.access_token).session_id);

  const { data: got } = await sb.auth.getUser();
  assert.equal(got.user.email, addr);

  const oldRefresh = signedIn.data.session.refresh_token;
  const refreshed = await sb.auth.refreshSession();
  assert.equal(refreshed.error, null);
  assert.notEqual(refreshed.data.session.refresh_token, oldRefresh);

  const upd = await sb.auth.updateUser({ data: { theme: 'dark' } });
  assert.equal(upd.error, null);
  assert.equal(upd.data.user.user_metadata.theme, 'dark');
  const pw = await sb.auth.updateUser({ password: 'hunter23' });
  assert.equal(pw.error, null);
  const same = await sb.auth.updateUser({ password: 'hunter23' });
  assert.equal(same.error?.code, 'same_password');

  const lastRefresh = (await sb.auth.getSession()).data.session.refresh_token;
  const out = await sb.auth.signOut();
  assert.equal(out.error, null);
  assert.equal((await sb.auth.getSession()).data.session, null);
  const again = await anon().auth.refreshSession({ refresh_token: lastRefresh });
  assert.equal(again.error?.status, 400);
  assert.equal(again.error?.code, 'refresh_token_not_found');
});

test('REST reads with the issued token are scoped by RLS', async () => {
  const a = anon();
  const b = anon();
  const ua = await a.auth.signUp({ email: email('rls-a'), password: 'hunter22' });
  await b.auth.signUp({ email: email('rls-b'), password: 'hunter22' });
  const { data, error } = await a.from('profiles').select('id');
  assert.equal(error, null);
  assert.deepEqual(data.map((r) => r.id), [ua.data.user.id]);
});

test('errors carry GoTrue codes, statuses and texts', async () => {
  const sb = anon();
  const addr = email('err');
  await sb.auth.signUp({ email: addr, password: 'hunter22' });
  const dup = await sb.auth.signUp({ email: addr, password: 'hunter22' });
  assert.match(dup.error?.message, /^User already registered/);
  assert.equal(dup.error?.code, 'user_already_exists');
  const wrong = await sb.auth.signInWithPassword({ email: addr, password: 'not-it' });
  assert.equal(wrong.error?.status, 400);
  assert.equal(wrong.error?.code, 'invalid_credentials');
  assert.equal(wrong.error?.message, 'Invalid login credentials');
  const unknown = await sb.auth.signInWithPassword({ email: email('ghost'), password: 'not-it' });
  assert.equal(unknown.error?.message, wrong.error.message);
  const weak = await sb.auth.signUp({ email: email('weak'), password: '123' });
  assert.equal(weak.error?.name, 'AuthWeakPasswordError');
  assert.deepEqual(weak.error?.reasons, ['length']);
  assert.match(weak.error?.message, /Password should be at least 6 characters/);
  const bad = await sb.auth.signUp({ email: 'xx:;x@x.x', password: 'hunter22' });
  assert.match(bad.error?.message, /Unable to validate email address: invalid format/);
  const r = await fetch(`${URL}/auth/v1/settings`, { headers: { apikey: ANON_KEY } });
  assert.equal(r.headers.get('x-supabase-api-version'), '2024-01-01');
  // The anon key is not an admin.
  const notAdmin = await sb.auth.admin.listUsers();
  assert.equal(notAdmin.error?.status, 403);
  assert.equal(notAdmin.error?.code, 'not_admin');
});

test('anonymous sign-in, then linking an email', async () => {
  const sb = anon();
  const { data, error } = await sb.auth.signInAnonymously({ options: { data: { nick: 'anon' } } });
  assert.equal(error, null);
  assert.equal(data.user.is_anonymous, true);
  assert.equal(jwtPayload(data.session.access_token).is_anonymous, true);
  const addr = email('anon');
  const up = await sb.auth.updateUser({ email: addr });
  assert.equal(up.error, null);
  assert.equal(up.data.user.email, addr);
  assert.equal(up.data.user.is_anonymous, false);
});

test('email OTP and magic link through the local inbox', async () => {
  const sb = anon();
  const addr = email('otp');
  const sent = await sb.auth.signInWithOtp({ email: addr });
  assert.equal(sent.error, null);
  const [msg] = await inbox(addr);
  assert.equal(msg.type, 'signup');
  assert.match(msg.otp, /^\d{6}$/);
  const v = await sb.auth.verifyOtp({ email: addr, token: msg.otp, type: 'email' });
  assert.equal(v.error, null);
  assert.equal(v.data.user.email, addr);
  assert.ok(v.data.session.access_token);
  const reused = await anon().auth.verifyOtp({ email: addr, token: msg.otp, type: 'email' });
  assert.equal(reused.error?.message, 'Token has expired or is invalid');
  assert.equal(reused.error?.status, 403);

  // Now confirmed: a magic link, verified by its token hash.
  await anon().auth.signInWithOtp({ email: addr, options: { shouldCreateUser: false } });
  const [link] = await inbox(addr);
  assert.equal(link.type, 'magiclink');
  assert.match(link.action_link, /\/auth\/v1\/verify\?token=[0-9a-f]+&type=magiclink&redirect_to=/);
  const byHash = await anon().auth.verifyOtp({ token_hash: link.token_hash, type: 'magiclink' });
  assert.equal(byHash.error, null);
  assert.equal(byHash.data.user.email, addr);

  await new Promise((r) => setTimeout(r, 1100)); // one email of a kind per second (email_max_frequency)
  const rec = await anon().auth.resetPasswordForEmail(addr);
  assert.equal(rec.error, null);
  assert.equal((await inbox(addr))[0].type, 'recovery');
  const none = await anon().auth.resetPasswordForEmail(email('nobody'));
  assert.equal(none.error, null, 'recovery never reveals whether an address is registered');
});

test('admin API: create, list with pagination, get, update, generate_link, invite, delete', async () => {
  const admin = service().auth.admin;
  const addr = email('adm');
  const created = await admin.createUser({
    email: addr,
    password: 'hunter22',
    email_confirm: true,
    user_metadata: { profile_image: 'https://avatars.example/x.png' },
    app_metadata: { plan: 'pro' },
  });
  assert.equal(created.error, null);
  const id = created.data.user.id;
  assert.equal(created.data.user.app_metadata.provider, 'email');
  assert.equal(created.data.user.app_metadata.plan, 'pro');
  await admin.createUser({ email: email('adm2') });
  await admin.createUser({ email: email('adm3') });

  const page = await admin.listUsers({ page: 1, perPage: 2 });
  assert.equal(page.error, null);
  assert.equal(page.data.users.length, 2);
  assert.equal(page.data.nextPage, 2);
  assert.ok(page.data.total >= 3);
  assert.ok(page.data.lastPage >= 2);
  const all = await admin.listUsers();
  assert.ok(all.data.users.some((u) => u.email === addr));
  const badPage = await admin.listUsers({ page: -1, perPage: 10 });
  assert.ok(badPage.error);
  assert.deepEqual(badPage.data.users, []);

  const got = await admin.getUserById(id);
  assert.equal(got.data.user.email, addr);
  const missing = await admin.getUserById('83fd9e20-7a80-46e4-bf29-a86e3d6bbf66');
  assert.equal(missing.error?.status, 404);

  const upd = await admin.updateUserById(id, { email: `new_${addr}`, user_metadata: { favorite_color: 'yellow' } });
  assert.equal(upd.error, null);
  assert.equal(upd.data.user.email, `new_${addr}`);
  assert.equal(upd.data.user.user_metadata.favorite_color, 'yellow');

  const gl = await admin.generateLink({
    type: 'signup',
    email: email('gl'),
    password: 'hunter22',
    options: { data: { status: 'alpha' }, redirectTo: 'http://localhost:9999/welcome' },
  });
  assert.equal(gl.error, null);
  assert.deepEqual(gl.data.user.user_metadata, { status: 'alpha' });
  for (const k of ['action_link', 'email_otp', 'hashed_token', 'redirect_to', 'verification_type']) {
    assert.ok(k in gl.data.properties, k);
  }
  assert.match(gl.data.properties.action_link, /\?token=.*type=signup.*redirect_to=/);
  const glv = await anon().auth.verifyOtp({ token_hash: gl.data.properties.hashed_token, type: 'signup' });
  assert.equal(glv.error, null);

  const invAddr = email('inv');
  const inv = await admin.inviteUserByEmail(invAddr, { data: { status: 'alpha' } });
  assert.equal(inv.error, null);
  assert.ok(inv.data.user.invited_at);
  const [invMail] = await inbox(invAddr);
  assert.equal(invMail.type, 'invite');
  const invV = await anon().auth.verifyOtp({ email: invAddr, token: invMail.otp, type: 'invite' });
  assert.equal(invV.error, null);

  // admin.signOut with a user's token.
  const user = anon();
  const si = await user.auth.signInWithPassword({ email: `new_${addr}`, password: 'hunter22' });
  assert.equal(si.error, null);
  assert.equal((await admin.signOut(si.data.session.access_token)).error, null);
  const badOut = await admin.signOut('this-is-a-bad-token');
  assert.match(badOut.error?.message, /^invalid JWT/);

  const soft = await admin.deleteUser(id, true);
  assert.equal(soft.error, null);
  const { rows } = await sql('select deleted_at is not null as d from auth.users where id = $1', [id]);
  assert.equal(rows[0].d, true);
  const hardId = glv.data.user.id;
  assert.equal((await admin.deleteUser(hardId)).error, null);
  const gone = await sql('select 1 from auth.users where id = $1', [hardId]);
  assert.equal(gone.rowCount, 0);
  const after = await admin.listUsers({ perPage: 1000 });
  assert.ok(!after.data.users.some((u) => u.id === id || u.id === hardId));
  const twice = await admin.deleteUser('83fd9e20-7a80-46e4-bf29-a86e3d6bbf66');
  assert.ok(twice.error);
});

test('private server: RS256 signing key with JWKS, refresh reuse interval, rate limits', async () => {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), alg: 'RS256', kid: 'compat-rs256', use: 'sig' };
  const dir = mkdtempSync(join(tmpdir(), 'oxibase-keys-'));
  const keysFile = join(dir, 'signing_keys.json');
  writeFileSync(keysFile, JSON.stringify([jwk]));
  const srv = await startServer({
    toml: `jwt_keys_file = "${keysFile}"\n[auth]\nrefresh_token_reuse_interval = 1\nrate_limit_per_hour = 6\npassword_hash_cost = 4\n`,
  });
  try {
    const opts = { auth: { persistSession: false, autoRefreshToken: false } };
    const sb = createClient(srv.url, ANON_KEY, opts);
    const jwks = await (await fetch(`${srv.url}/auth/v1/.well-known/jwks.json`)).json();
    assert.equal(jwks.keys[0].kid, 'compat-rs256');
    assert.equal(jwks.keys[0].d, undefined);
    const addr = email('rs');
    const up = await sb.auth.signUp({ email: addr, password: 'hunter22' });
    assert.equal(up.error, null);
    const header = JSON.parse(Buffer.from(up.data.session.access_token.split('.')[0], 'base64url'));
    assert.deepEqual([header.alg, header.kid], ['RS256', 'compat-rs256']);
    // getClaims verifies RS256 tokens locally with the JWKS (no /user call).
    const { data: c, error: ce } = await sb.auth.getClaims();
    assert.equal(ce, null);
    assert.equal(c.claims.email, addr);

    // Rotation: r1 -> r2 -> r3; after the reuse interval r1 is a replay.
    const r1 = up.data.session.refresh_token;
    const s2 = await sb.auth.refreshSession({ refresh_token: r1 });
    const s3 = await sb.auth.refreshSession({ refresh_token: s2.data.session.refresh_token });
    assert.equal(s3.error, null);
    await new Promise((r) => setTimeout(r, 2100));
    const replay = await sb.auth.refreshSession({ refresh_token: r1 });
    assert.equal(replay.error?.code, 'refresh_token_already_used', JSON.stringify(replay));
    // As in GoTrue, the revoked family is still inside its reuse interval for a moment.
    await new Promise((r) => setTimeout(r, 2100));
    const family = await sb.auth.refreshSession({ refresh_token: s3.data.session.refresh_token });
    assert.equal(family.error?.code, 'refresh_token_already_used', JSON.stringify(family));

    // Sign-in limit per IP (6 per hour here): the 7th attempt gets 429.
    let last;
    for (let i = 0; i < 7; i++) last = await sb.auth.signInWithPassword({ email: addr, password: 'wrong-pw' });
    assert.equal(last.error?.status, 429);
    assert.equal(last.error?.code, 'over_request_rate_limit');
  } finally {
    await srv.stop();
  }
});

function jwtPayload(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url'));
}

test('TOTP MFA through supabase-js: enroll, challenge and verify to aal2', async () => {
  const sb = anon();
  const { error } = await sb.auth.signUp({ email: email('mfa'), password: 'hunter22' });
  assert.equal(error, null);
  const { data: f, error: enrollError } = await sb.auth.mfa.enroll({ factorType: 'totp' });
  assert.equal(enrollError, null);
  assert.match(f.totp.qr_code, /^data:image\/svg\+xml/);
  const wrong = await sb.auth.mfa.challengeAndVerify({ factorId: f.id, code: '000000' });
  if (totp(f.totp.secret) !== '000000') assert.match(wrong.error?.message, /Invalid TOTP code/);
  const ok = await sb.auth.mfa.challengeAndVerify({ factorId: f.id, code: totp(f.totp.secret) });
  assert.equal(ok.error, null);
  const { data: aal } = await sb.auth.mfa.getAuthenticatorAssuranceLevel();
  assert.equal(aal.currentLevel, 'aal2');
  const { data: factors } = await sb.auth.mfa.listFactors();
  assert.equal(factors.totp.length, 1);
});

// RFC 6238 with SHA-1, six digits, 30 s steps.
function totp(secretBase32) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secretBase32) bits += alphabet.indexOf(c).toString(2).padStart(5, '0');
  const key = Buffer.from(bits.match(/.{8}/g).map((b) => parseInt(b, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 30000)));
  const h = createHmac('sha1', key).update(counter).digest();
  const o = h[19] & 15;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1000000).padStart(6, '0');
}

test('new-style keys: sb_publishable_ signs up, sb_secret_ is an admin', async () => {
  const pub = clientWith('sb_publishable_ACJWlzQHlZjBrEguHvfOxg_3BJgxAaH');
  const addr = email('newkeys');
  const up = await pub.auth.signUp({ email: addr, password: 'hunter22' });
  assert.equal(up.error, null);
  const pubAdmin = await pub.auth.admin.listUsers();
  assert.equal(pubAdmin.error?.status, 403);
  const sec = clientWith('sb_secret_N7UND0UgjKTVK-Uodkm0Hg_xSvEMPvz');
  const got = await sec.auth.admin.getUserById(up.data.user.id);
  assert.equal(got.error, null);
  assert.equal(got.data.user.email, addr);
});

test('PKCE magic link: the link redirects with ?code= and exchangeCodeForSession signs in', async () => {
  const store = new Map();
  const storage = {
    getItem: (k) => store.get(k) ?? null,
    setItem: (k, v) => void store.set(k, v),
    removeItem: (k) => void store.delete(k),
  };
  const sb = createClient(URL, ANON_KEY, {
    auth: { flowType: 'pkce', storage, persistSession: true, autoRefreshToken: false, detectSessionInUrl: false },
  });
  const addr = email('pkce');
  const sent = await sb.auth.signInWithOtp({ email: addr, options: { emailRedirectTo: 'http://localhost:3000/cb' } });
  assert.equal(sent.error, null);
  const [msg] = await inbox(addr);
  const r = await fetch(msg.action_link, { redirect: 'manual' });
  assert.equal(r.status, 303);
  const loc = new globalThis.URL(r.headers.get('location'));
  assert.equal(loc.origin + loc.pathname, 'http://localhost:3000/cb');
  const code = loc.searchParams.get('code');
  assert.ok(code, r.headers.get('location'));
  const { data, error } = await sb.auth.exchangeCodeForSession(code);
  assert.equal(error, null);
  assert.equal(data.user.email, addr);
  const again = await sb.auth.exchangeCodeForSession(code);
  assert.ok(again.error, 'a code is single use');
});
