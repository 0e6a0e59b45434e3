// Shared helpers for the storage compat tests (not a test file itself).
import crypto from 'node:crypto';
import http from 'node:http';
import { createClient } from '@supabase/supabase-js';
import { URL, ANON_KEY } from '../lib/env.mjs';
import { JWT_SECRET } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

const b64url = (b) => Buffer.from(b).toString('base64url');

export function mintToken(claims, secret = JWT_SECRET) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/** A user row in auth.users and a client acting as that user (tokens minted here). */
export async function makeUser(label, dbUrl) {
  const id = crypto.randomUUID();
  const email = `${label}-${id.slice(0, 8)}@storage.test`;
  await sql(
    `insert into auth.users (id, email, aud, role, created_at) values ($1, $2, 'authenticated', 'authenticated', now())`,
    [id, email],
    dbUrl,
  );
  const token = mintToken({
    sub: id,
    role: 'authenticated',
    aud: 'authenticated',
    email,
    exp: Math.floor(Date.now() / 1000) + 3600,
  });
  return { id, email, token, client: userClient(token) };
}

export function userClient(token, url = URL) {
  return createClient(url, ANON_KEY, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    global: { headers: { Authorization: `Bearer ${token}` } },
  });
}

export const uniq = (p) => `${p}-${Date.now()}-${crypto.randomBytes(3).toString('hex')}`;

/** An HTTP request with the path sent exactly as given (no URL normalization). */
export function raw(method, path, headers = {}, body, base = URL) {
  const u = new globalThis.URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method, path, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}
