// code-execution through real supabase-js `functions.invoke`: Python, JavaScript and
// TypeScript runs answered as JSON, a timeout, the error shape of a bad request, and the
// stored run readable by its owner only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { FunctionsHttpError } from '@supabase/supabase-js';
import { anon } from '../lib/env.mjs';

async function signedIn(label) {
  const sb = anon();
  const email = `code-${label}-${randomUUID().slice(0, 8)}@example.com`;
  const { data, error } = await sb.auth.signUp({ email, password: 'hunter22' });
  assert.equal(error, null);
  assert.ok(data.session, 'signed in after sign-up');
  return { sb, id: data.user.id };
}

async function execute(sb, body) {
  const { data, error } = await sb.functions.invoke('code-execution', { body });
  assert.equal(error, null, String(error));
  assert.deepEqual(Object.keys(data).sort(), ['duration_ms', 'exit_code', 'id', 'status', 'stderr', 'stdout']);
  return data;
}

test('code-execution: python, javascript and typescript through functions.invoke', async () => {
  const { sb } = await signedIn('run');
  const py = await execute(sb, {
    language: 'python',
    code: 'import json, math\nname = input()\nprint(json.dumps({"hi": name, "r": math.floor(2.7)}))',
    stdin: 'Ada\n',
  });
  assert.equal(py.status, 'success');
  assert.equal(py.exit_code, 0);
  assert.equal(py.stdout, '{"hi": "Ada", "r": 2}\n');
  assert.equal(py.stderr, '');

  const js = await execute(sb, {
    language: 'javascript',
    code: "console.log([1, 2].map((x) => x * 2).join(','), readline()); console.error('note')",
    stdin: 'line one\nline two',
  });
  assert.deepEqual([js.status, js.stdout, js.stderr], ['success', '2,4 line one\n', 'note\n']);

  const ts = await execute(sb, {
    language: 'typescript',
    code: 'interface P { x: number }\nconst sum = <T extends P>(ps: T[]): number => ps.reduce((a, p) => a + p.x, 0);\nconsole.log(sum([{ x: 1 }, { x: 2 }]) as number);',
  });
  assert.deepEqual([ts.status, ts.stdout], ['success', '3\n']);

  const failed = await execute(sb, { language: 'python', code: 'raise KeyError("k")' });
  assert.equal(failed.status, 'error');
  assert.equal(failed.exit_code, 1);
  assert.match(failed.stderr, /Traceback[\s\S]*KeyError/);

  // The runs are the caller's own rows.
  const { data: rows, error } = await sb.from('code_executions').select('id, language, status').order('created_at');
  assert.equal(error, null);
  assert.deepEqual(rows.map((r) => r.id), [py.id, js.id, ts.id, failed.id]);
  assert.deepEqual(rows.map((r) => r.language), ['python', 'javascript', 'typescript', 'python']);
  const { sb: other } = await signedIn('other');
  const { data: none } = await other.from('code_executions').select('id');
  assert.deepEqual(none, []);
});

test('code-execution: an endless loop times out within its bound', async () => {
  const { sb } = await signedIn('loop');
  const started = Date.now();
  const out = await execute(sb, { language: 'javascript', code: 'console.log("go"); for (;;) {}', timeout_ms: 700 });
  assert.equal(out.status, 'timeout');
  assert.equal(out.exit_code, 137);
  assert.equal(out.stdout, 'go\n');
  assert.match(out.stderr, /timed out after 700 ms/);
  assert.ok(Date.now() - started < 5000);
});

test('code-execution: bad requests are FunctionsHttpErrors with the functions error shape', async () => {
  const { sb } = await signedIn('bad');
  for (const [body, status, code] of [
    [{ language: 'cobol', code: 'DISPLAY 1' }, 400, 'unsupported_language'],
    [{ language: 'python' }, 400, 'invalid_request'],
    [{ language: 'python', code: '1', timeout_ms: 10 ** 9 }, 400, 'invalid_timeout'],
  ]) {
    const { data, error } = await sb.functions.invoke('code-execution', { body });
    assert.equal(data, null);
    assert.ok(error instanceof FunctionsHttpError, String(error));
    assert.equal(error.context.status, status);
    const json = await error.context.json();
    assert.deepEqual(Object.keys(json), ['error']);
    assert.equal(json.error.code, code);
    assert.equal(typeof json.error.message, 'string');
  }
  const { error } = await anon().functions.invoke('code-execution', { body: { language: 'python', code: '1' } });
  assert.ok(error instanceof FunctionsHttpError);
  assert.equal(error.context.status, 401);
});
