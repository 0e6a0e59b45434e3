// Direct SQL for fixtures and checks (as the superuser of the test server's database).
import pg from 'pg';
import { DB_URL } from './env.mjs';

export async function withDb(fn, url = DB_URL) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

export const sql = (text, params = [], url = DB_URL) => withDb((c) => c.query(text, params), url);
