// The usage page (api_usage by day and provider/model, as a chart) and the profile (name,
// avatar uploaded to the public `avatars` bucket, shown through a resized image URL).
import { drawChart } from './charts';
import { me, myEmail, supabase } from './client';
import { clear, h, initials, toast } from './ui';

export async function renderUsage(root: HTMLElement): Promise<void> {
  const body = h('div', { class: 'page-body' }, h('p', { class: 'muted' }, 'Loading…'));
  clear(root, h('section', { class: 'page usage' }, h('h1', {}, 'Usage'), body));
  const since = new Date(Date.now() - 30 * 86400_000).toISOString();
  const { data, error } = await supabase
    .from('api_usage')
    .select('endpoint, provider, model, total_tokens, status_code, created_at')
    .gte('created_at', since)
    .order('created_at');
  if (error) return clear(body, h('p', { class: 'error' }, error.message));
  if (!data.length) return clear(body, h('p', { class: 'muted' }, 'No usage in the last 30 days.'));
  const days = [...new Set(data.map((r) => r.created_at.slice(0, 10)))];
  const keys = [...new Set(data.map((r) => (r.provider ? `${r.provider} · ${r.model}` : r.endpoint)))];
  const series = keys.map((k) =>
    days.map((d) =>
      data
        .filter((r) => r.created_at.startsWith(d) && (r.provider ? `${r.provider} · ${r.model}` : r.endpoint) === k)
        .reduce((n, r) => n + (r.total_tokens ?? 0), 0),
    ),
  );
  const totals = keys.map((k, i) => ({ k, calls: data.filter((r) => (r.provider ? `${r.provider} · ${r.model}` : r.endpoint) === k).length, tokens: series[i].reduce((a, b) => a + b, 0) }));
  clear(
    body,
    drawChart({ chart_type: 'bar', title: 'Tokens per day, last 30 days', data: { labels: days.map((d) => d.slice(5)), series, names: keys } }),
    h(
      'table',
      { class: 'usage-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Provider · model / endpoint'), h('th', {}, 'Calls'), h('th', {}, 'Tokens'))),
      h('tbody', {}, totals.map((t) => h('tr', {}, h('td', {}, t.k), h('td', {}, t.calls), h('td', {}, t.tokens)))),
    ),
  );
}

export function avatarUrl(path: string | null | undefined, size = 96): string | null {
  if (!path) return null;
  return supabase.storage.from('avatars').getPublicUrl(path, { transform: { width: size, height: size, resize: 'cover' } }).data.publicUrl;
}

export async function renderProfile(root: HTMLElement, onChange: () => void): Promise<void> {
  const { data: p, error } = await supabase.from('profiles').select('username, full_name, avatar_url').eq('id', me()).maybeSingle();
  if (error) return toast(error.message);
  const username = h('input', { value: p?.username ?? '', placeholder: 'username' });
  const fullName = h('input', { value: p?.full_name ?? '', placeholder: 'Your name' });
  const picture = h('div', { class: 'avatar big' });
  const showAvatar = (path: string | null | undefined) => {
    const url = avatarUrl(path, 160);
    clear(picture, url ? h('img', { src: url, alt: 'avatar' }) : initials(p?.full_name || myEmail()));
  };
  showAvatar(p?.avatar_url);
  const file = h('input', {
    type: 'file',
    accept: 'image/png,image/jpeg,image/webp',
    onchange: async () => {
      const f = file.files?.[0];
      if (!f) return;
      if (f.size > 2 * 1024 * 1024) return toast('Avatars can be at most 2 MB.');
      const path = `${me()}/avatar-${Date.now()}.${f.name.split('.').pop()}`;
      const up = await supabase.storage.from('avatars').upload(path, f, { upsert: true, contentType: f.type });
      if (up.error) return toast(`Upload failed: ${up.error.message}`);
      const { error } = await supabase.from('profiles').update({ avatar_url: path }).eq('id', me());
      if (error) return toast(error.message);
      showAvatar(path);
      onChange();
    },
  });
  clear(
    root,
    h(
      'section',
      { class: 'page profile' },
      h('h1', {}, 'Profile'),
      h(
        'form',
        {
          class: 'card',
          onsubmit: async (e: Event) => {
            e.preventDefault();
            const { error } = await supabase.from('profiles').update({ username: username.value || null, full_name: fullName.value || null }).eq('id', me());
            if (error) return toast(error.message);
            toast('Profile saved.', 'info');
            onChange();
          },
        },
        h('div', { class: 'row' }, picture, h('label', { class: 'ghost upload' }, 'Change avatar', file)),
        h('p', { class: 'muted' }, myEmail(), ' · id ', h('code', {}, me())),
        h('label', {}, 'Name', fullName),
        h('label', {}, 'Username', username),
        h('button', { type: 'submit', class: 'primary' }, 'Save'),
      ),
    ),
  );
}
