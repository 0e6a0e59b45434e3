// Metrics scrape cost: N sequential `GET /metrics` (service_role key) against N `GET /health`
// (its ceiling here: the cheapest request the server answers, one pool round trip), after a
// warm-up that gives every series a value. Prints latency percentiles, the exposition size
// and series count, and the server's CPU per scrape when OXIBASE_PID is given.
// usage: node bench/metrics/scrape.mjs [scrapes]
// env: OXIBASE_URL (default http://127.0.0.1:54321), OXIBASE_SERVICE_KEY (default: the CLI
// demo key), OXIBASE_PID (the server's pid, for CPU time from /proc/<pid>/stat)
import { readFileSync } from 'node:fs';

const URL_ = process.env.OXIBASE_URL ?? 'http://127.0.0.1:54321';
const KEY =
  process.env.OXIBASE_SERVICE_KEY ??
  'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU';
const N = Number(process.argv[2] ?? 500);
const PID = process.env.OXIBASE_PID;
const TICK_MS = 10; // USER_HZ = 100 on Linux

function cpuMs() {
  if (!PID) return null;
  const f = readFileSync(`/proc/${PID}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_MS; // utime + stime
}

async function run(path, headers) {
  const times = [];
  let bytes = 0;
  let body = '';
  const cpu0 = cpuMs();
  for (let i = 0; i < N; i++) {
    const t0 = performance.now();
    const r = await fetch(`${URL_}${path}`, { headers });
    body = await r.text();
    times.push(performance.now() - t0);
    if (r.status !== 200) throw new Error(`${path}: ${r.status} ${body.slice(0, 200)}`);
    bytes = body.length;
  }
  const cpu1 = cpuMs();
  times.sort((a, b) => a - b);
  const pct = (p) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))];
  return {
    p50: pct(50).toFixed(2),
    p99: pct(99).toFixed(2),
    mean: (times.reduce((a, b) => a + b, 0) / N).toFixed(2),
    bytes,
    series: body.split('\n').filter((l) => l && !l.startsWith('#')).length,
    cpuPerReqMs: cpu0 === null ? 'n/a' : ((cpu1 - cpu0) / N).toFixed(3),
  };
}

const auth = { apikey: KEY, authorization: `Bearer ${KEY}` };
// Warm-up: touch the APIs so their series exist, then both paths.
for (const p of ['/rest/v1/', '/auth/v1/health', '/storage/v1/bucket', '/nope']) {
  await fetch(`${URL_}${p}`, { headers: auth }).then((r) => r.text());
}
await run('/health', {});
await run('/metrics', auth);
const health = await run('/health', {});
const metrics = await run('/metrics', auth);
console.log(`${N} sequential requests each (ms; CPU is the server's, per request)`);
console.log('path      p50     p99     mean    cpu/req  bytes  series');
for (const [name, r] of [['/health', health], ['/metrics', metrics]]) {
  console.log(
    `${name.padEnd(9)} ${r.p50.padStart(6)}  ${r.p99.padStart(6)}  ${r.mean.padStart(6)}  ${String(r.cpuPerReqMs).padStart(7)}  ${String(r.bytes).padStart(5)}  ${String(r.series).padStart(6)}`,
  );
}
