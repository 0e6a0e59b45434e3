// chat-completion through real supabase-js `functions.invoke`, against a private oxibase whose
// OpenAI base URL points at a fake OpenAI server in this file (real chat-completions wire
// format, SSE included): a whole answer and what it stored, errors as FunctionsHttpError,
// a streamed answer read incrementally (through invoke's Response and through fetch), and a
// fetch aborted mid-stream cancelling the provider call.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { createClient, FunctionsHttpError } from '@supabase/supabase-js';
import { startServer, ANON_KEY } from '../lib/server.mjs';

const SERVER_KEY = 'sk-compat-server-key-0123456789';
const opts = { auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false } };

// ---------------------------------------------------------------- the fake OpenAI
const seen = [];
const modes = [];
let closedMidStream = false;

const chunk = (delta, extra = {}) =>
  `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, delta, finish_reason: null }], ...extra })}\n\n`;

const fake = createServer(async (req, res) => {
  let raw = '';
  for await (const c of req) raw += c;
  const body = JSON.parse(raw || 'null');
  seen.push({ path: req.url, auth: req.headers.authorization, body });
  const mode = modes.shift() ?? { answer: 'Hello from the fake.' };
  if (req.url !== '/v1/chat/completions') {
    res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"message":"no"}}');
    return;
  }
  if (mode.status) {
    res
      .writeHead(mode.status, { 'content-type': 'application/json', 'retry-after': '3' })
      .end(JSON.stringify({ error: { message: `fake failure ${mode.status}`, type: 'requests', code: null } }));
    return;
  }
  if (!body.stream) {
    res.writeHead(200, { 'content-type': 'application/json' }).end(
      JSON.stringify({
        id: 'chatcmpl-1', object: 'chat.completion', created: 1, model: body.model,
        choices: [{ index: 0, message: { role: 'assistant', content: mode.answer }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 },
      }),
    );
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunk({ role: 'assistant', content: '' }));
  if (mode.endless) {
    res.on('close', () => (closedMidStream = !res.writableFinished));
    const timer = setInterval(() => res.write(chunk({ content: 'tick ' })), 50);
    res.on('close', () => clearInterval(timer));
    return;
  }
  for (const piece of mode.answer.split(/(?<= )/)) {
    res.write(chunk({ content: piece }));
    await new Promise((r) => setTimeout(r, 20));
  }
  res.write(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: body.model, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\n`);
  res.write(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: body.model, choices: [], usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 } })}\n\n`);
  res.end('data: [DONE]\n\n');
});

let server;
let fakeUrl;

before(async () => {
  await new Promise((r) => fake.listen(0, '127.0.0.1', r));
  fakeUrl = `http://127.0.0.1:${fake.address().port}`;
  server = await startServer({
    env: {
      OPENAI_BASE_URL: `${fakeUrl}/v1`,
      OPENAI_API_KEY: SERVER_KEY,
      ANTHROPIC_API_KEY: '',
      MISTRAL_API_KEY: '',
    },
  });
});

after(async () => {
  await server?.stop();
  fake.close();
});

async function signedIn() {
  const sb = createClient(server.url, ANON_KEY, opts);
  const { data, error } = await sb.auth.signUp({ email: `chat-${randomUUID().slice(0, 8)}@example.com`, password: 'hunter22' });
  assert.equal(error, null);
  return { sb, id: data.user.id, token: data.session.access_token };
}

async function expectHttpError(result, status, code) {
  assert.equal(result.data, null);
  assert.ok(result.error instanceof FunctionsHttpError, String(result.error));
  assert.equal(result.error.context.status, status);
  const body = await result.error.context.json();
  assert.deepEqual(Object.keys(body), ['error']);
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, 'string');
  return body;
}

/** Read an SSE body event by event; `onEvent` may return true to stop reading. */
async function readEvents(body, onEvent = () => false) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const events = [];
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ')) continue;
      const e = JSON.parse(ev.slice(6));
      events.push(e);
      if (onEvent(e)) {
        await reader.cancel();
        return events;
      }
    }
  }
  return events;
}

test('chat-completion: a whole answer, stored as the caller, with its usage row', async () => {
  const { sb, id } = await signedIn();
  modes.push({ answer: 'Hi from OpenAI.' });
  const { data, error } = await sb.functions.invoke('chat-completion', {
    body: { provider: 'openai', model: 'gpt-4o-mini', system: 'Be brief.', messages: [{ role: 'user', content: 'Hello there' }] },
  });
  assert.equal(error, null);
  assert.deepEqual(Object.keys(data), ['conversation_id', 'message', 'usage']);
  assert.equal(data.message.role, 'assistant');
  assert.equal(data.message.content, 'Hi from OpenAI.');
  assert.equal(data.message.provider, 'openai');
  assert.equal(data.message.model, 'gpt-4o-mini');
  assert.deepEqual(data.usage, { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 });
  const sent = seen.at(-1);
  assert.equal(sent.auth, `Bearer ${SERVER_KEY}`);
  assert.deepEqual(sent.body.messages, [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hello there' },
  ]);

  // The caller reads what was stored, through REST and RLS.
  const { data: conv } = await sb.from('conversations').select('title, provider, model, user_id').eq('id', data.conversation_id).single();
  assert.deepEqual(conv, { title: 'Hello there', provider: 'openai', model: 'gpt-4o-mini', user_id: id });
  const { data: msgs } = await sb.from('messages').select('id, role, content, tokens_used').eq('conversation_id', data.conversation_id).order('created_at');
  assert.deepEqual(msgs.map((m) => [m.role, m.content]), [['user', 'Hello there'], ['assistant', 'Hi from OpenAI.']]);
  assert.equal(msgs[1].id, data.message.id);
  assert.equal(msgs[1].tokens_used, 5);
  const { data: usage } = await sb.from('api_usage').select('endpoint, provider, model, prompt_tokens, completion_tokens, total_tokens, status_code');
  assert.deepEqual(usage, [{ endpoint: 'chat-completion', provider: 'openai', model: 'gpt-4o-mini', prompt_tokens: 12, completion_tokens: 5, total_tokens: 17, status_code: 200 }]);

  // The next turn carries the history.
  modes.push({ answer: 'Second.' });
  const next = await sb.functions.invoke('chat-completion', {
    body: { provider: 'openai', model: 'gpt-4o-mini', conversation_id: data.conversation_id, messages: [{ role: 'user', content: 'Again' }] },
  });
  assert.equal(next.error, null);
  assert.deepEqual(seen.at(-1).body.messages.map((m) => m.content), ['Be brief.', 'Hello there', 'Hi from OpenAI.', 'Again']);
});

test('chat-completion: errors arrive as FunctionsHttpError with {error: {code, message}}', async () => {
  const { sb } = await signedIn();
  const calls = seen.length;
  await expectHttpError(
    await sb.functions.invoke('chat-completion', { body: { provider: 'cohere', model: 'x', messages: [{ role: 'user', content: 'hi' }] } }),
    400, 'invalid_provider',
  );
  await expectHttpError(
    await sb.functions.invoke('chat-completion', { body: { provider: 'openai', model: 'x', messages: [] } }),
    400, 'invalid_request',
  );
  const missing = await expectHttpError(
    await sb.functions.invoke('chat-completion', { body: { provider: 'mistral', model: 'mistral-small-latest', messages: [{ role: 'user', content: 'hi' }] } }),
    400, 'missing_api_key',
  );
  assert.match(missing.error.message, /MISTRAL_API_KEY/);
  await expectHttpError(
    await sb.functions.invoke('chat-completion', { body: { provider: 'openai', model: 'x', conversation_id: randomUUID(), messages: [{ role: 'user', content: 'hi' }] } }),
    404, 'conversation_not_found',
  );
  assert.equal(seen.length, calls, 'refused before the provider was called');
  modes.push({ status: 429 });
  const limited = await sb.functions.invoke('chat-completion', { body: { provider: 'openai', model: 'x', messages: [{ role: 'user', content: 'hi' }] } });
  const body = await expectHttpError(limited, 429, 'rate_limited');
  assert.match(body.error.message, /fake failure 429/);
  assert.equal(limited.error.context.headers.get('retry-after'), '3');
  // Without a session: 401 from the gateway.
  await expectHttpError(
    await createClient(server.url, ANON_KEY, opts).functions.invoke('chat-completion', { body: { provider: 'openai', model: 'x', messages: [{ role: 'user', content: 'hi' }] } }),
    401, 'unauthorized',
  );
});

test('chat-completion: a streamed answer, read incrementally through invoke and fetch', async () => {
  const { sb, token } = await signedIn();
  modes.push({ answer: 'One two three.' });
  const { data: response, error } = await sb.functions.invoke('chat-completion', {
    body: { provider: 'openai', model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'Count' }] },
  });
  assert.equal(error, null);
  assert.ok(response instanceof Response, 'invoke hands event streams over as the Response');
  const events = await readEvents(response.body);
  assert.deepEqual(events.filter((e) => e.type === 'delta').map((e) => e.content), ['One ', 'two ', 'three.']);
  const done = events.at(-1);
  assert.equal(done.type, 'done');
  assert.equal(done.message.content, 'One two three.');
  assert.deepEqual(done.usage, { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 });
  assert.equal(seen.at(-1).body.stream_options.include_usage, true);
  const { data: msgs } = await sb.from('messages').select('role, content').eq('conversation_id', done.conversation_id).order('created_at');
  assert.deepEqual(msgs.map((m) => m.content), ['Count', 'One two three.']);

  // Plain fetch, as a browser app streams; the user's own key goes to the provider.
  modes.push({ answer: 'Via fetch.' });
  const res = await fetch(`${server.url}/functions/v1/chat-completion`, {
    method: 'POST',
    headers: { apikey: ANON_KEY, authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ provider: 'openai', model: 'gpt-4o-mini', stream: true, api_key: 'sk-user-own', conversation_id: done.conversation_id, messages: [{ role: 'user', content: 'More' }] }),
  });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/event-stream/);
  const evs = await readEvents(res.body);
  assert.equal(evs.at(-1).type, 'done');
  assert.equal(evs.at(-1).conversation_id, done.conversation_id);
  assert.equal(seen.at(-1).auth, 'Bearer sk-user-own');
});

test('chat-completion: aborting a streamed fetch cancels the provider call', async () => {
  const { token } = await signedIn();
  modes.push({ endless: true });
  closedMidStream = false;
  const ctrl = new AbortController();
  const res = await fetch(`${server.url}/functions/v1/chat-completion`, {
    method: 'POST',
    signal: ctrl.signal,
    headers: { apikey: ANON_KEY, authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ provider: 'openai', model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'Go on forever' }] }),
  });
  assert.equal(res.status, 200);
  const evs = await readEvents(res.body, (e) => e.type === 'delta');
  assert.equal(evs[0].content, 'tick ');
  ctrl.abort();
  const deadline = Date.now() + 10_000;
  while (!closedMidStream && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  assert.ok(closedMidStream, 'the provider saw its connection closed');
});
