// `oxibase gen types typescript` end to end: the CLI reads a fixture schema from a live
// database, prints the expected Database type, and a typed supabase-js client compiles
// against it (tsc --noEmit of fixtures/gentypes/check.ts, with @ts-expect-error lines
// that must stay errors).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { binaryPath } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';
import { DB_URL } from '../lib/env.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '..', '..');
const compat = resolve(here, '..');
const dbName = `gentypes_${process.pid}`;
const dbUrl = DB_URL.replace(/\/[^/]*$/, `/${dbName}`);
let work;

before(async () => {
  await sql(`drop database if exists ${dbName}`);
  await sql(`create database ${dbName}`);
  await sql(readFileSync(join(root, 'tests/fixtures/gentypes/schema.sql'), 'utf8'), [], dbUrl);
  work = mkdtempSync(join(tmpdir(), 'oxibase-gentypes-'));
});

after(async () => {
  if (work) rmSync(work, { recursive: true, force: true });
  await sql(`drop database if exists ${dbName} with (force)`);
});

function generate(...args) {
  return execFileSync(binaryPath(), ['gen', 'types', 'typescript', '--db-url', dbUrl, ...args], {
    encoding: 'utf8',
  });
}

test('the CLI prints the expected Database type', () => {
  const ts = generate('--schema', 'gt', '--schema', 'gt_other');
  assert.equal(ts, readFileSync(join(root, 'tests/fixtures/gentypes/expected.ts'), 'utf8'));
  // Comma-separated schemas are the same as repeated flags.
  assert.equal(generate('--schema', 'gt,gt_other'), ts);
});

function tsc(types) {
  writeFileSync(join(work, 'database.types.ts'), types);
  copyFileSync(join(compat, 'fixtures/gentypes/check.ts'), join(work, 'check.ts'));
  writeFileSync(
    join(work, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        strict: true,
        noEmit: true,
        target: 'es2022',
        module: 'esnext',
        moduleResolution: 'bundler',
        skipLibCheck: true,
        lib: ['es2022', 'dom'],
        baseUrl: '.',
        paths: { '@supabase/supabase-js': [join(compat, 'node_modules/@supabase/supabase-js')] },
      },
      files: ['check.ts'],
    }),
  );
  try {
    execFileSync(process.execPath, [join(compat, 'node_modules/typescript/bin/tsc'), '-p', work], {
      encoding: 'utf8',
    });
    return '';
  } catch (e) {
    return `${e.stdout}${e.stderr}`;
  }
}

test('a typed supabase-js client compiles against the generated types', () => {
  const types = generate('--schema', 'gt', '--schema', 'gt_other');
  assert.equal(tsc(types), '');
  // The check is real: a wrong column type in the generated file fails it.
  const broken = types.replace('          title: string\n', '          title: number\n');
  assert.notEqual(broken, types);
  assert.match(tsc(broken), /error TS/);
});
