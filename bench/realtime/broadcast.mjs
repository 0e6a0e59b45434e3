// Realtime broadcast benchmark: N subscribers on one topic (vsn 2.0.0), one sender pushing M
// binary (kind-3) broadcasts; reports fan-out throughput and end-to-end latency percentiles.
// usage: node --experimental-websocket bench/realtime/broadcast.mjs [subscribers] [messages]
// env: OXIBASE_URL (default http://127.0.0.1:54321), OXIBASE_ANON_KEY (default: the CLI demo key)
const URL_ = process.env.OXIBASE_URL ?? 'http://127.0.0.1:54321';
const KEY =
  process.env.OXIBASE_ANON_KEY ??
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0';
const SUBS = Number(process.argv[2] ?? 50);
const MSGS = Number(process.argv[3] ?? 2000);
const topic = `realtime:bench-${Date.now()}`;
const wsUrl = `${URL_.replace(/^http/, 'ws')}/realtime/v1/websocket?apikey=${KEY}&vsn=2.0.0`;

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => resolve(ws);
    ws.onerror = (e) => reject(e);
  });
}

function join(ws, self = false) {
  return new Promise((resolve) => {
    const onMsg = (ev) => {
      if (typeof ev.data !== 'string') return;
      const [, ref, , event] = JSON.parse(ev.data);
      if (event === 'phx_reply' && ref === '1') {
        ws.removeEventListener('message', onMsg);
        resolve();
      }
    };
    ws.addEventListener('message', onMsg);
    ws.send(JSON.stringify(['1', '1', topic, 'phx_join', { config: { broadcast: { self } } }]));
  });
}

function kind3(seq) {
  const enc = new TextEncoder();
  const parts = ['1', '', topic, 'tick', ''].map((s) => enc.encode(s));
  const body = enc.encode(JSON.stringify({ seq, t: performance.now() }));
  const out = new Uint8Array(7 + parts.reduce((n, p) => n + p.length, 0) + body.length);
  out.set([3, parts[0].length, parts[1].length, parts[2].length, parts[3].length, parts[4].length, 1]);
  let o = 7;
  for (const p of [...parts, body]) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const dec = new TextDecoder();
const latencies = [];
let received = 0;
const subs = await Promise.all(Array.from({ length: SUBS }, open));
await Promise.all(subs.map((ws) => join(ws)));
const done = new Promise((resolve) => {
  for (const ws of subs) {
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data === 'string') return;
      const b = new Uint8Array(ev.data);
      const off = 5 + b[1] + b[2] + b[3];
      const { t } = JSON.parse(dec.decode(b.subarray(off)));
      latencies.push(performance.now() - t);
      if (++received === SUBS * MSGS) resolve();
    });
  }
});
const sender = await open();
await join(sender);
const start = performance.now();
for (let i = 0; i < MSGS; i++) {
  sender.send(kind3(i));
  if (i % 100 === 99) await new Promise((r) => setTimeout(r, 0));
}
const timeout = new Promise((r) => setTimeout(r, 60_000, 'timeout'));
const r = await Promise.race([done, timeout]);
const secs = (performance.now() - start) / 1000;
latencies.sort((a, b) => a - b);
const pct = (p) => latencies[Math.min(latencies.length - 1, Math.floor((latencies.length * p) / 100))]?.toFixed(1);
console.log(
  JSON.stringify({
    subscribers: SUBS,
    messages: MSGS,
    delivered: received,
    expected: SUBS * MSGS,
    timed_out: r === 'timeout',
    seconds: +secs.toFixed(2),
    deliveries_per_sec: Math.round(received / secs),
    latency_ms: { p50: pct(50), p95: pct(95), p99: pct(99), max: latencies.at(-1)?.toFixed(1) },
  }),
);
for (const ws of [...subs, sender]) ws.close();
