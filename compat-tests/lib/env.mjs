// What each test file needs: the shared server's URL (started by run.mjs) and clients.
import { createClient } from '@supabase/supabase-js';
import { ANON_KEY, SERVICE_KEY } from './server.mjs';

export { ANON_KEY, SERVICE_KEY };
export const URL = process.env.OXIBASE_URL ?? 'http://127.0.0.1:54321';
export const DB_URL = process.env.OXIBASE_TEST_DB_URL;

const opts = { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } };
export const anon = () => createClient(URL, ANON_KEY, opts);
export const service = () => createClient(URL, SERVICE_KEY, opts);
export const clientWith = (key, extra = {}) => createClient(URL, key, { ...opts, ...extra });
