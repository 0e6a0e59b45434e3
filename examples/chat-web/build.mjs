// Bundles src/main.ts into dist/ with esbuild: hashed file names (long-cached by any static
// server) and an index.html that points at them. SUPABASE_URL / SUPABASE_ANON_KEY are baked
// in when set; otherwise the app talks to the server that serves it, with the local anon key.
import { build, context } from 'esbuild';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';

const watch = process.argv.includes('--watch');
rmSync('dist', { recursive: true, force: true });
mkdirSync('dist', { recursive: true });

const options = {
  entryPoints: ['src/main.ts'],
  bundle: true,
  minify: !watch,
  sourcemap: true,
  format: 'esm',
  target: ['es2022'],
  outdir: 'dist/assets',
  entryNames: '[name]-[hash]',
  metafile: true,
  define: {
    __SUPABASE_URL__: JSON.stringify(process.env.SUPABASE_URL ?? ''),
    __SUPABASE_ANON_KEY__: JSON.stringify(process.env.SUPABASE_ANON_KEY ?? ''),
  },
  logLevel: 'info',
};

function writeIndex(metafile) {
  const outs = Object.keys(metafile.outputs).map((p) => basename(p));
  const js = outs.find((f) => f.endsWith('.js'));
  const css = outs.find((f) => f.endsWith('.css'));
  const html = readFileSync('index.html', 'utf8')
    .replace('%CSS%', `/assets/${css}`)
    .replace('%JS%', `/assets/${js}`);
  writeFileSync('dist/index.html', html);
}

if (watch) {
  const ctx = await context({
    ...options,
    plugins: [{ name: 'index', setup: (b) => b.onEnd((r) => r.metafile && writeIndex(r.metafile)) }],
  });
  await ctx.watch();
} else {
  const result = await build(options);
  writeIndex(result.metafile);
}
