// Charts with Chartist (SVG): a `visualizations` row's config/data, and the usage page.
import { BarChart, LineChart, PieChart } from 'chartist';
import 'chartist/dist/index.css';
import { h } from './ui';

export interface ChartSpec {
  chart_type: string;
  title: string;
  data: { labels: string[]; series: number[][]; names?: string[] };
}

/** Chart data from a code run's stdout: `{"labels": [...], "series": [[...]]}`,
 * `{"labels": [...], "values": [...]}` or `[{"label", "value"}, ...]`. */
export function chartFromOutput(stdout: string): ChartSpec['data'] | null {
  let v: unknown;
  try {
    v = JSON.parse(stdout.trim());
  } catch {
    return null;
  }
  const nums = (a: unknown): a is number[] => Array.isArray(a) && a.every((x) => typeof x === 'number');
  if (Array.isArray(v) && v.every((r) => r && typeof r === 'object' && 'label' in r && 'value' in r)) {
    const rows = v as { label: unknown; value: number }[];
    if (!nums(rows.map((r) => r.value))) return null;
    return { labels: rows.map((r) => String(r.label)), series: [rows.map((r) => r.value)] };
  }
  if (v && typeof v === 'object' && Array.isArray((v as { labels?: unknown }).labels)) {
    const o = v as { labels: unknown[]; series?: unknown; values?: unknown };
    const labels = o.labels.map(String);
    if (nums(o.values)) return { labels, series: [o.values] };
    if (Array.isArray(o.series) && o.series.every(nums)) return { labels, series: o.series as number[][] };
  }
  return null;
}

export function drawChart(spec: ChartSpec): HTMLElement {
  const canvas = h('div', { class: 'chart-canvas' });
  const box = h('figure', { class: `chart chart-${spec.chart_type}` }, h('figcaption', {}, spec.title), canvas);
  // Chartist measures its container: draw once it is in the document.
  requestAnimationFrame(() => {
    const { labels, series } = spec.data;
    if (spec.chart_type === 'line') new LineChart(canvas, { labels, series }, { height: 220, fullWidth: true, chartPadding: { right: 24 } });
    else if (spec.chart_type === 'pie') new PieChart(canvas, { labels, series: series[0] ?? [] }, { height: 220, donut: true, donutWidth: 40 });
    else new BarChart(canvas, { labels, series }, { height: 220, stackBars: series.length > 1 });
  });
  if (spec.data.names?.length) {
    box.append(
      h('ul', { class: 'legend' }, spec.data.names.map((n, i) => h('li', { class: `ct-legend-${String.fromCharCode(97 + i)}` }, n))),
    );
  }
  return box;
}
