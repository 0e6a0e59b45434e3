// The example app (examples/chat-web) in headless Chromium (Debian's /usr/bin/chromium driven
// by playwright-core; nothing downloads a browser), served by `oxibase --static` beside the
// APIs, with a fake OpenAI that streams slowly. Two users in two browser contexts: sign-up,
// a streamed answer seen token by token, Stop mid-stream, sharing, typing indicator, a live
// message, an upload with its preview, a code run, a chart from its output, the usage chart.
// Screenshots of each step go to compat-tests/artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { deflateSync } from 'node:zlib';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startServer, freePort, SERVICE_KEY } from '../lib/server.mjs';
import { sql } from '../lib/pg.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const appDir = resolve(here, '..', '..', 'examples', 'chat-web');
const artifacts = resolve(here, '..', 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

// ---------------------------------------------------------------- the fake OpenAI
let providerClosedEarly = false;
const chunk = (delta) =>
  `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o-mini', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
const CHART_ANSWER =
  'Here is the data:\n```python\nimport json\nprint(json.dumps({"labels": ["Mon", "Tue", "Wed", "Thu"], "values": [3, 7, 5, 9]}))\n```\nRun it to see the output.';

const fake = createServer(async (req, res) => {
  let raw = '';
  for await (const c of req) raw += c;
  const body = JSON.parse(raw || '{}');
  const last = body.messages?.at(-1)?.content ?? '';
  if (/busy/i.test(last)) {
    res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '2' });
    res.end(JSON.stringify({ error: { message: 'Rate limit reached', type: 'requests', code: 'rate_limit_exceeded' } }));
    return;
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunk({ role: 'assistant', content: '' }));
  if (/forever/i.test(last)) {
    const timer = setInterval(() => res.write(chunk({ content: 'tick ' })), 100);
    res.on('close', () => {
      clearInterval(timer);
      providerClosedEarly = !res.writableFinished;
    });
    return;
  }
  const answer = /chart/i.test(last) ? CHART_ANSWER : 'The quick brown fox jumps over the lazy dog.';
  for (const piece of answer.split(/(?<= )/)) {
    res.write(chunk({ content: piece }));
    await new Promise((r) => setTimeout(r, 120));
  }
  res.write(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: body.model, choices: [], usage: { prompt_tokens: 10, completion_tokens: 9, total_tokens: 19 } })}\n\n`);
  res.end('data: [DONE]\n\n');
});

let server;
let browser;
let alice;
let bob;
const started = Date.now();

function buildApp() {
  if (!existsSync(join(appDir, 'node_modules'))) {
    execFileSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: appDir, stdio: 'inherit' });
  }
  execFileSync('npm', ['run', 'build'], { cwd: appDir, stdio: 'inherit' });
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  buildApp();
  await new Promise((r) => fake.listen(0, '127.0.0.1', r));
  const port = await freePort();
  server = await startServer({
    ports: { port, dbPort: await freePort() },
    // Email links (password reset) lead back to the app.
    toml: `[server]\nstatic_dir = ${JSON.stringify(join(appDir, 'dist'))}\n[auth]\nsite_url = "http://127.0.0.1:${port}"\n`,
    env: {
      OPENAI_BASE_URL: `http://127.0.0.1:${fake.address().port}/v1`,
      OPENAI_API_KEY: 'sk-fake-server-key',
      ANTHROPIC_API_KEY: '',
      MISTRAL_API_KEY: '',
    },
  });
  await sql(readFileSync(join(appDir, 'sharing.sql'), 'utf8'), [], `postgres://postgres:postgres@127.0.0.1:${server.dbPort}/postgres`);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

after(async () => {
  await browser?.close();
  await server?.stop();
  fake.close();
  console.log(`# browser test: ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

/** A real RGB PNG (a gradient) of w×h, with correct CRCs, for the upload and the avatar. */
function pngImage(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + w * 3);
    for (let x = 0; x < w; x++) row.set([109 + x, 93 + y, 252 - x], 1 + x * 3);
    rows.push(row);
  }
  const sig = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
  return Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(Buffer.concat(rows))), chunk('IEND', Buffer.alloc(0))]);
}

const shot = async (page, name) => {
  // The newest message in view, as a person would look at it.
  await page.evaluate(() => document.querySelector('.scroll')?.scrollTo(0, 1e9));
  await page.screenshot({ path: join(artifacts, `${name}.png`) });
};
const stamp = Date.now().toString(36);

async function signUp(name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name} page error]`, e.message));
  await page.goto(server.url);
  await page.getByText('Create an account').click();
  const email = `${name}-${stamp}@example.com`;
  await page.fill('input[type=email]', email);
  await page.fill('input[type=password]', 'correct-horse-42');
  await page.click('button[type=submit]');
  await page.waitForSelector('.topbar .email');
  assert.equal(await page.textContent('.topbar .email'), email);
  return { context, page, email };
}

/** Polls the answer being streamed until it is done; returns every distinct text seen. */
async function watchStream(page) {
  const seen = [];
  const streaming = page.locator('.msg.assistant.streaming .bubble');
  await streaming.waitFor();
  for (;;) {
    const text = await streaming.textContent({ timeout: 200 }).catch(() => null);
    if (text === null) break;
    if (text && text !== seen.at(-1)) seen.push(text);
    await page.waitForTimeout(40);
  }
  return seen;
}

test('the chat app in two browsers', { timeout: 240_000 }, async () => {
  alice = await signUp('alice');
  bob = await signUp('bob');
  await shot(alice.page, '01-signed-up');
  const a = alice.page;

  // A streamed answer, token by token.
  await a.fill('.composer textarea', 'Hello there');
  await a.press('.composer textarea', 'Enter');
  await a.locator('.msg.assistant.streaming').waitFor();
  const stopVisible = await a.isVisible('.composer .stop');
  await a.waitForFunction(() => document.querySelector('.msg.assistant.streaming .bubble')?.textContent?.includes('brown'));
  await shot(a, '02-streaming');
  const seen = await watchStream(a);
  const final = 'The quick brown fox jumps over the lazy dog.';
  await a.waitForSelector(`.msg.assistant:not(.streaming) >> text=${final}`);
  assert.ok(stopVisible, 'Stop shows while streaming');
  const partial = seen.filter((t) => t.length && t.length < final.length);
  assert.ok(partial.length >= 3, `intermediate states: ${JSON.stringify(seen)}`);
  for (const t of partial) assert.ok(final.startsWith(t), `${JSON.stringify(t)} is a prefix of the answer`);
  assert.ok(partial.some((t) => !t.includes('lazy')), 'seen before the end');
  await shot(a, '03-answered');
  const convId = await a.getAttribute('.conversations li.active', 'data-id');
  assert.match(convId, /^[0-9a-f-]{36}$/);

  // Stop mid-stream: the answer ends there and the provider call is cancelled.
  await a.fill('.composer textarea', 'Go on forever');
  await a.press('.composer textarea', 'Enter');
  await a.waitForFunction(() => (document.querySelector('.msg.assistant.streaming .bubble')?.textContent ?? '').includes('tick tick'));
  await a.click('.composer .stop');
  await a.waitForSelector('.msg.assistant.stopped .stopped-note');
  const stoppedText = await a.textContent('.msg.assistant.stopped .bubble');
  await a.waitForTimeout(500);
  assert.equal(await a.textContent('.msg.assistant.stopped .bubble'), stoppedText, 'nothing arrives after Stop');
  assert.ok(await a.isVisible('.composer .send'));
  for (let i = 0; i < 50 && !providerClosedEarly; i++) await a.waitForTimeout(100);
  assert.ok(providerClosedEarly, 'the provider request was cancelled');
  await shot(a, '04-stopped');

  // Share with Bob; he opens it and both see each other online.
  a.once('dialog', (d) => d.accept(bob.email));
  await a.click('.chat-head .share');
  await a.waitForSelector('.toast >> text=Shared with');
  const b = bob.page;
  // Shared, it appears in Bob's list live (Realtime postgres_changes under RLS).
  await b.waitForSelector(`.conversations li[data-id="${convId}"] >> text=shared with you`);
  await b.click(`.conversations li[data-id="${convId}"] .open`);
  await b.waitForSelector('.msg.assistant >> text=lazy dog');
  await a.waitForSelector('.presence .avatar:nth-child(2)');
  await b.waitForSelector('.presence .avatar:nth-child(2)');

  // Bob types: Alice sees it; Bob sends (to the room, not the assistant): Alice sees it live.
  await b.uncheck('.composer label.inline input');
  await b.type('.composer textarea', 'Hi Alice, Bob here', { delay: 20 });
  await a.waitForSelector(`.typing >> text=${bob.email} is typing`);
  await shot(a, '05-typing');
  await b.press('.composer textarea', 'Enter');
  await a.waitForSelector('.msg.user >> text=Hi Alice, Bob here');
  await a.waitForFunction(() => !document.querySelector('.typing')?.textContent);
  await shot(a, '06-live-message');

  // An upload, shown through its signed URL.
  const png = pngImage(64, 64);
  await a.setInputFiles('.composer input[type=file]', { name: 'dot.png', mimeType: 'image/png', buffer: png });
  const preview = a.locator('.attachment img.preview').last();
  await preview.waitFor();
  await a.waitForFunction(() => [...document.querySelectorAll('.attachment img.preview')].some((i) => i.complete && i.naturalWidth === 64));
  assert.match(await preview.getAttribute('src'), /\/storage\/v1\/object\/sign\/chat-files\//);
  await b.waitForSelector('.msg.user .attachment >> text=dot.png');
  await shot(a, '07-upload');

  // A code block in an answer runs; its JSON output becomes a chart.
  await a.check('.composer label.inline input');
  await a.fill('.composer textarea', 'Give me chart data');
  await a.press('.composer textarea', 'Enter');
  const answer = a.locator('.msg.assistant:not(.streaming)', { hasText: 'Run it to see' }).last();
  await answer.waitFor();
  await answer.locator('.code .run').click();
  await answer.locator('.run-output .status-success').waitFor();
  const stdout = await answer.locator('.run-output .stdout').textContent();
  assert.deepEqual(JSON.parse(stdout), { labels: ['Mon', 'Tue', 'Wed', 'Thu'], values: [3, 7, 5, 9] });
  assert.match(await answer.locator('.run-meta').textContent(), /exit 0 · \d+ ms/);
  await shot(a, '08-code-run');
  await answer.locator('.make-chart').click();
  await answer.locator('.chart svg .ct-bar').first().waitFor({ state: 'attached' });
  assert.equal(await answer.locator('.chart svg .ct-bar').count(), 4);
  await shot(a, '09-chart');
  const rows = await sql('select chart_type, data from public.visualizations', [], `postgres://postgres:postgres@127.0.0.1:${server.dbPort}/postgres`);
  assert.equal(rows.rows.length, 1);
  assert.deepEqual(rows.rows[0].data.labels, ['Mon', 'Tue', 'Wed', 'Thu']);
  // Reopened later, the chart is drawn from its visualizations row.
  await a.reload();
  await a.click(`.conversations li[data-id="${convId}"] .open`);
  const again = a.locator('.msg.assistant', { hasText: 'Run it to see' }).last();
  await again.locator('.chart svg .ct-bar').first().waitFor({ state: 'attached' });
  assert.equal(await again.locator('.chart svg .ct-bar').count(), 4);

  // The usage page charts api_usage.
  await a.click('.topbar nav >> text=Usage');
  await a.waitForSelector('.usage .chart svg .ct-bar', { state: 'attached' });
  assert.match(await a.textContent('.usage-table'), /openai · gpt-4o-mini/);
  await shot(a, '10-usage');
  // A deep link is served index.html by --static and opens that page.
  await a.goto(`${server.url}/usage`);
  await a.waitForSelector('.usage h1');

  // Profile: an avatar uploaded to the avatars bucket, shown through a resized image URL.
  await a.click('.topbar nav >> text=Profile');
  await a.setInputFiles('.profile input[type=file]', { name: 'me.png', mimeType: 'image/png', buffer: png });
  const avatar = a.locator('.profile .avatar img');
  await avatar.waitFor();
  assert.match(await avatar.getAttribute('src'), /\/storage\/v1\/render\/image\/public\/avatars\/[0-9a-f-]{36}\/avatar-\d+\.png\?width=160&height=160&resize=cover/);
  await a.waitForFunction(() => document.querySelector('.profile .avatar img')?.naturalWidth > 0);
  await a.waitForSelector('.topbar .avatar img');
  await shot(a, '11-profile');
});

test('password reset through the local inbox', { timeout: 120_000 }, async () => {
  const b = bob.page;
  await b.click('.topbar .signout');
  await b.getByText('Forgot password?').click();
  await b.fill('input[type=email]', bob.email);
  await b.click('button[type=submit]');
  await b.waitForSelector('.note >> text=reset link');
  const r = await fetch(`${server.url}/auth/v1/inbox?email=${encodeURIComponent(bob.email)}`, {
    headers: { apikey: SERVICE_KEY, authorization: `Bearer ${SERVICE_KEY}` },
  });
  assert.equal(r.status, 200);
  const mails = await r.json();
  const mail = (Array.isArray(mails) ? mails : mails.messages ?? []).find((m) => m.type === 'recovery');
  assert.ok(mail, JSON.stringify(mails).slice(0, 500));
  const link = JSON.stringify(mail).match(/https?:\/\/[^"\s\\]+\/auth\/v1\/verify\?[^"\s\\]+/)?.[0];
  assert.ok(link, `a verify link in ${JSON.stringify(mail).slice(0, 500)}`);
  await b.goto(link.replace(/\\u0026|&amp;/g, '&'));
  await b.waitForSelector('h1 >> text=Choose a new password');
  await b.fill('input[type=password]', 'a-new-password-7');
  await b.click('button[type=submit]');
  await b.waitForSelector('.topbar .email');
  await shot(b, '12-password-reset');
  await b.click('.topbar .signout');
  await b.fill('input[type=email]', bob.email);
  await b.fill('input[type=password]', 'a-new-password-7');
  await b.click('button[type=submit]');
  await b.waitForSelector('.topbar .email');
});

test('errors a person can act on, and managing conversations', { timeout: 120_000 }, async () => {
  const a = alice.page;
  await a.click('.topbar nav >> text=Chat');
  await a.click('.sidebar .new');
  await a.waitForSelector('.chat-head h2 >> text=New conversation');
  // No server key for Anthropic: the answer says what to do.
  await a.selectOption('.composer select[aria-label=Provider]', 'anthropic');
  await a.fill('.composer textarea', 'Hello Claude');
  await a.press('.composer textarea', 'Enter');
  await a.waitForSelector('.msg.assistant.failed .error >> text=No Anthropic API key is set up');
  // The provider's 429 keeps its meaning.
  await a.selectOption('.composer select[aria-label=Provider]', 'openai');
  await a.fill('.composer textarea', 'Are you busy?');
  await a.press('.composer textarea', 'Enter');
  await a.waitForSelector('.msg.assistant.failed .error >> text=OpenAI is receiving too many requests');
  await shot(a, '13-errors');
  // Over 10 MB is refused before uploading.
  await a.setInputFiles('.composer input[type=file]', { name: 'big.txt', mimeType: 'text/plain', buffer: Buffer.alloc(10 * 1024 * 1024 + 1, 97) });
  await a.waitForSelector('.toast >> text=files can be at most 10 MB');

  // Rename, archive (and find it under "Show archived"), delete.
  const id = await a.getAttribute('.conversations li.active', 'data-id');
  const row = a.locator(`.conversations li[data-id="${id}"]`);
  a.once('dialog', (d) => d.accept('Renamed in the browser'));
  await row.locator('button[aria-label=Rename]').click();
  await a.waitForSelector('.chat-head h2 >> text=Renamed in the browser');
  await row.locator('button[aria-label=Archive]').click();
  await row.waitFor({ state: 'detached' });
  await a.check('.sidebar .archived input');
  await a.waitForSelector(`.conversations li[data-id="${id}"] >> text=Renamed in the browser`);
  await a.hover(`.conversations li[data-id="${id}"]`);
  a.once('dialog', (d) => d.accept());
  await a.locator(`.conversations li[data-id="${id}"] button[aria-label=Delete]`).click();
  await a.locator(`.conversations li[data-id="${id}"]`).waitFor({ state: 'detached' });
  const db = `postgres://postgres:postgres@127.0.0.1:${server.dbPort}/postgres`;
  const left = await sql('select count(*)::int as n from public.conversations where id = $1', [id], db);
  assert.equal(left.rows[0].n, 0);

  // A long conversation opens on its newest 30 messages; older ones come a page at a time.
  const { rows } = await sql(
    `with u as (select id from auth.users where email = $1),
          c as (insert into public.conversations (user_id, title) select id, 'Long one' from u returning id, user_id)
     insert into public.messages (conversation_id, user_id, role, content, created_at)
     select c.id, c.user_id, 'user', 'm' || lpad(i::text, 2, '0'), now() - (45 - i) * interval '1 minute'
       from c, generate_series(1, 45) i returning conversation_id`,
    [alice.email],
    db,
  );
  await a.reload();
  await a.click(`.conversations li[data-id="${rows[0].conversation_id}"] .open`);
  await a.waitForSelector('.msg >> text=m45');
  assert.equal(await a.locator('.messages .msg').count(), 30);
  assert.equal(await a.locator('.messages .msg').first().textContent().then((t) => t.includes('m16')), true);
  await a.click('.older');
  await a.waitForSelector('.msg >> text=m01');
  assert.equal(await a.locator('.messages .msg').count(), 45);
  // In order, each once: the live stream may bring these rows' inserts late, after the
  // conversation opened, and they must not land at the bottom.
  const shown = (await a.locator('.messages .msg .bubble').allTextContents()).map((t) => t.trim());
  assert.deepEqual(shown, Array.from({ length: 45 }, (_, i) => `m${String(i + 1).padStart(2, '0')}`));
  assert.ok(await a.locator('.older').isHidden(), 'no older page left');
});
