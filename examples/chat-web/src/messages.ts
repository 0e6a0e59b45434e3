// One message on screen: text with fenced code blocks (each with a Run button that calls
// code-execution), an attached file shown through its signed URL, and its charts.
import { chartFromOutput, drawChart, type ChartSpec } from './charts';
import { functionError, supabase } from './client';
import { formatBytes, h, toast } from './ui';

export interface Message {
  id: string;
  conversation_id: string;
  user_id: string;
  role: string;
  content: string;
  model?: string | null;
  metadata?: { file?: FileMeta } | null;
  created_at: string;
}

export interface FileMeta {
  id: string;
  bucket: string;
  path: string;
  name: string;
  mime_type: string;
  size_bytes: number;
  signed_url?: string;
}

const RUNNABLE: Record<string, string> = {
  python: 'python', py: 'python', javascript: 'javascript', js: 'javascript', typescript: 'typescript', ts: 'typescript',
};

/** Text and ``` fenced blocks, in order. */
export function splitFences(text: string): { code?: string; lang?: string; text?: string }[] {
  const parts: { code?: string; lang?: string; text?: string }[] = [];
  const re = /```([\w+-]*)[^\n]*\n([\s\S]*?)(?:```|$)/g;
  let last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m.index > last) parts.push({ text: text.slice(last, m.index) });
    parts.push({ lang: m[1].toLowerCase(), code: m[2].replace(/\n$/, '') });
    last = re.lastIndex;
  }
  if (last < text.length) parts.push({ text: text.slice(last) });
  return parts;
}

export function renderContent(el: HTMLElement, msg: Message): void {
  el.replaceChildren();
  const file = msg.metadata?.file;
  for (const p of file ? [] : splitFences(msg.content)) {
    if (p.text !== undefined) el.append(h('p', { class: 'text' }, p.text));
    else el.append(codeBlock(p.code ?? '', p.lang ?? '', msg));
  }
  if (file) el.append(attachment(file));
}

function codeBlock(code: string, lang: string, msg: Message): HTMLElement {
  const language = RUNNABLE[lang] ?? (lang ? null : 'python');
  const out = h('div', { class: 'run-output', hidden: true });
  const run = h('button', { class: 'run', onclick: () => runCode(code, language!, msg, out, run) }, '▶ Run');
  return h(
    'div',
    { class: 'code' },
    h('div', { class: 'code-head' }, h('span', {}, lang || 'code'), language && msg.id && !msg.id.startsWith('tmp') ? run : null),
    h('pre', {}, h('code', {}, code)),
    out,
  );
}

async function runCode(code: string, language: string, msg: Message, out: HTMLElement, btn: HTMLButtonElement): Promise<void> {
  btn.disabled = true;
  btn.textContent = 'Running…';
  out.hidden = false;
  out.replaceChildren(h('div', { class: 'muted' }, 'Running…'));
  const { data, error } = await supabase.functions.invoke('code-execution', {
    body: { language, code, conversation_id: msg.conversation_id, message_id: msg.id },
  });
  btn.disabled = false;
  btn.textContent = '▶ Run';
  if (error) {
    const e = await functionError(error);
    out.replaceChildren(h('div', { class: 'error' }, e.message || 'The code could not be run.'));
    return;
  }
  const r = data as { status: string; stdout: string; stderr: string; exit_code: number; duration_ms: number };
  const chart = chartFromOutput(r.stdout);
  out.replaceChildren(
    h('div', { class: 'run-meta' },
      h('span', { class: `status status-${r.status}` }, r.status),
      h('span', { class: 'muted' }, `exit ${r.exit_code} · ${r.duration_ms} ms`),
      chart && h('button', { class: 'ghost make-chart', onclick: () => makeChart(chart, msg, out) }, 'Make a chart'),
    ),
    r.stdout && h('pre', { class: 'stdout' }, r.stdout),
    r.stderr && h('pre', { class: 'stderr' }, r.stderr),
  );
}

async function makeChart(data: ChartSpec['data'], msg: Message, out: HTMLElement): Promise<void> {
  const chart_type = data.series.length === 1 && data.labels.length <= 6 ? 'bar' : 'line';
  const title = `Chart from a code run (${new Date().toLocaleTimeString()})`;
  const { data: row, error } = await supabase
    .from('visualizations')
    .insert({ conversation_id: msg.conversation_id, message_id: msg.id, title, chart_type, config: { source: 'code-execution' }, data })
    .select('id, title, chart_type, data')
    .single();
  if (error) return toast(`Could not save the chart: ${error.message}`);
  out.append(drawChart(row as ChartSpec));
}

function attachment(f: FileMeta): HTMLElement {
  const box = h('div', { class: 'attachment' }, h('span', { class: 'muted' }, `${f.name} · ${formatBytes(f.size_bytes)}`));
  const show = (url: string) => {
    if (f.mime_type.startsWith('image/')) box.prepend(h('a', { href: url, target: '_blank' }, h('img', { class: 'preview', src: url, alt: f.name })));
    else box.append(h('a', { href: url, target: '_blank', class: 'open-file' }, 'Open'));
  };
  if (f.signed_url) show(f.signed_url);
  else
    void supabase.storage
      .from(f.bucket)
      .createSignedUrl(f.path, 3600)
      .then(({ data }) => data && show(data.signedUrl));
  return box;
}
