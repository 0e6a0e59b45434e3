// The open conversation: messages (30 at a time, older on demand), the composer, streamed
// answers from chat-completion with a Stop button, attachments, sharing, presence, typing.
import { drawChart, type ChartSpec } from './charts';
import { ANON_KEY, SUPABASE_URL, functionError, me, myEmail, session, supabase } from './client';
import { Live, type ServerEvent } from './live';
import { renderContent, type FileMeta, type Message } from './messages';
import { type Conversation, Sidebar } from './sidebar';
import { clear, formatBytes, h, initials, toast } from './ui';

const PAGE = 30;
const MAX_FILE = 10 * 1024 * 1024;
const MODELS: Record<string, string[]> = {
  openai: ['gpt-4o-mini', 'gpt-4o'],
  anthropic: ['claude-3-5-haiku-latest', 'claude-3-5-sonnet-latest'],
  mistral: ['mistral-small-latest', 'mistral-large-latest'],
};
const PROVIDER_NAMES: Record<string, string> = { openai: 'OpenAI', anthropic: 'Anthropic', mistral: 'Mistral' };

export class ChatView {
  el = h('section', { class: 'chat' });
  private sidebar = new Sidebar((c) => this.open(c));
  private head = h('header', { class: 'chat-head' });
  private list = h('div', { class: 'messages' });
  private older = h('button', { class: 'ghost older', onclick: () => this.loadOlder() }, 'Load older messages');
  private typingLine = h('div', { class: 'typing', 'aria-live': 'polite' });
  private input = h('textarea', { placeholder: 'Message… (Enter to send, Shift+Enter for a new line)', rows: 2 });
  private provider = h('select', { 'aria-label': 'Provider' }, Object.keys(MODELS).map((p) => h('option', { value: p }, PROVIDER_NAMES[p])));
  private model = h('select', { 'aria-label': 'Model' });
  private apiKey = h('input', { type: 'password', placeholder: 'sk-… (used for this request only, never stored)', autocomplete: 'off' });
  private askAi = h('input', { type: 'checkbox', checked: true });
  private send = h('button', { class: 'primary send', type: 'submit' }, 'Send');
  private stop = h('button', { class: 'danger stop', type: 'button', hidden: true, onclick: () => this.abort?.abort() }, '■ Stop');
  private fileInput = h('input', { type: 'file', hidden: true, onchange: () => this.upload() });
  private progress = h('progress', { max: 100, value: 0, hidden: true });
  private messages: Message[] = [];
  private charts: Record<string, ChartSpec[]> = {};
  private conversation: Conversation | null = null;
  /** The page load in flight: live rows wait for it, so they land in order. */
  private loading: Promise<void> | null = null;
  private abort: AbortController | null = null;
  private typers = new Map<string, number>();
  private typingSent = 0;
  private typingTimer: number | undefined;
  private live = new Live((e) => this.onLive(e));
  private layout: HTMLElement;

  constructor() {
    this.provider.onchange = () => this.fillModels();
    this.fillModels();
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) {
        e.preventDefault();
        void this.submit();
      }
    });
    this.input.addEventListener('input', () => this.typed());
    const composer = h(
      'form',
      { class: 'composer', onsubmit: (e: Event) => (e.preventDefault(), void this.submit()) },
      this.input,
      h(
        'div',
        { class: 'composer-bar' },
        h('label', { class: 'inline' }, this.askAi, 'Ask the assistant'),
        this.provider,
        this.model,
        h('button', { type: 'button', class: 'ghost attach', title: 'Attach a file (10 MB max)', onclick: () => this.fileInput.click() }, '+ Attach'),
        this.fileInput,
        this.progress,
        h('span', { class: 'grow' }),
        this.stop,
        this.send,
      ),
      h('details', { class: 'own-key' }, h('summary', {}, 'Use my own API key'), this.apiKey),
    );
    clear(this.el, this.head, h('div', { class: 'scroll' }, this.older, this.list), this.typingLine, composer);
    this.layout = h('div', { class: 'layout' }, this.sidebar.el, this.el);
    this.open(null);
  }

  mount(root: HTMLElement): void {
    root.append(this.layout);
    void this.sidebar.load(true);
  }

  destroy(): void {
    this.live.close();
    this.sidebar.close();
    this.abort?.abort();
  }

  private fillModels(): void {
    clear(this.model, MODELS[this.provider.value].map((m) => h('option', { value: m }, m)));
  }

  private name(id: string): string {
    if (id === me()) return myEmail();
    return this.conversation?.metadata?.names?.[id] ?? `user ${id.slice(0, 6)}`;
  }

  private async open(c: Conversation | null): Promise<void> {
    this.conversation = c;
    this.messages = [];
    this.charts = {};
    this.typers.clear();
    this.renderTyping();
    this.list.replaceChildren();
    this.loading = null;
    this.live.join(c?.id ?? null);
    this.renderHead([]);
    if (!c) {
      this.older.hidden = true;
      this.list.append(h('div', { class: 'empty-chat' }, h('h2', {}, 'Start a conversation'), h('p', {}, 'Pick one on the left or just type below.')));
      return;
    }
    await this.loadOlder();
    this.list.parentElement!.scrollTop = this.list.parentElement!.scrollHeight;
  }

  private renderHead(users: string[]): void {
    const c = this.conversation;
    clear(
      this.head,
      h('h2', {}, c ? c.title || 'Untitled' : 'oxichat'),
      h('div', { class: 'presence', title: 'Online in this conversation' }, users.map((u) => h('span', { class: `avatar small${u === me() ? ' me' : ''}`, title: this.name(u), 'data-user': u }, initials(this.name(u))))),
      c && c.user_id === me() && h('button', { class: 'ghost share', onclick: () => this.share() }, 'Share'),
    );
  }

  /** The page before the oldest on screen; a second call while one loads waits for it. */
  private loadOlder(): Promise<void> {
    if (!this.loading) {
      const p: Promise<void> = this.fetchOlder().finally(() => {
        if (this.loading === p) this.loading = null;
      });
      this.loading = p;
    }
    return this.loading;
  }

  /** Keyset pagination: the PAGE messages before the oldest on screen. */
  private async fetchOlder(): Promise<void> {
    const c = this.conversation;
    if (!c) return;
    let q = supabase
      .from('messages')
      .select('id, conversation_id, user_id, role, content, model, metadata, created_at')
      .eq('conversation_id', c.id)
      .order('created_at', { ascending: false })
      .limit(PAGE);
    const oldest = this.messages[0];
    if (oldest) q = q.lt('created_at', oldest.created_at);
    const { data, error } = await q;
    if (error) return toast(`Could not load messages: ${error.message}`);
    if (c !== this.conversation) return;
    const page = (data as Message[]).reverse();
    await this.loadCharts(page);
    this.messages = [...page, ...this.messages];
    this.older.hidden = page.length < PAGE;
    const scroller = this.list.parentElement!;
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    this.list.prepend(...page.map((m) => this.renderMessage(m)));
    scroller.scrollTop = scroller.scrollHeight - fromBottom;
  }

  private async loadCharts(page: Message[]): Promise<void> {
    const ids = page.map((m) => m.id);
    if (!ids.length) return;
    const { data } = await supabase.from('visualizations').select('id, message_id, title, chart_type, data').in('message_id', ids).order('created_at');
    for (const v of data ?? []) (this.charts[v.message_id] ??= []).push(v as ChartSpec);
  }

  private renderMessage(m: Message): HTMLElement {
    const body = h('div', { class: 'bubble' });
    renderContent(body, m);
    for (const c of this.charts[m.id] ?? []) body.append(drawChart(c));
    const who = m.role === 'assistant' ? `Assistant${m.model ? ` · ${m.model}` : ''}` : this.name(m.user_id);
    return h(
      'article',
      { class: `msg ${m.role}${m.user_id === me() && m.role === 'user' ? ' mine' : ''}`, 'data-id': m.id },
      h('div', { class: 'who' }, who),
      body,
    );
  }

  private append(m: Message): HTMLElement {
    this.list.querySelector('.empty-chat')?.remove();
    this.messages.push(m);
    const el = this.renderMessage(m);
    this.list.append(el);
    const s = this.list.parentElement!;
    s.scrollTop = s.scrollHeight;
    return el;
  }

  /** A stored row arrived (over the socket): adopt it if it is one shown already. */
  private adopt(row: Message): void {
    if (this.loading) {
      const c = this.conversation;
      void this.loading.then(() => {
        if (this.conversation === c) this.adopt(row);
      });
      return;
    }
    if (this.messages.some((m) => m.id === row.id)) return;
    const pending = this.messages.find(
      (m) => m.id.startsWith('tmp') && m.role === row.role && m.user_id === row.user_id && (m.role === 'assistant' || m.content === row.content),
    );
    if (pending) {
      if (pending.role === 'assistant') return; // its `done` event brings the id
      const el = this.list.querySelector<HTMLElement>(`[data-id="${pending.id}"]`);
      pending.id = row.id;
      pending.created_at = row.created_at;
      if (el) el.replaceWith(this.renderMessage(pending));
      return;
    }
    // The live stream can lag the insert, so a row may be older than rows shown: one older
    // than the oldest comes with "load older" while there is more to load; any other goes
    // in its place by time.
    const at = Date.parse(row.created_at);
    const stored = this.messages.filter((m) => !m.id.startsWith('tmp'));
    if (stored.length && !this.older.hidden && at < Date.parse(stored[0].created_at)) return;
    const next = stored.find((m) => Date.parse(m.created_at) > at);
    const nextEl = next && this.list.querySelector(`[data-id="${next.id}"]`);
    if (!next || !nextEl) {
      this.append(row);
      return;
    }
    this.messages.splice(this.messages.indexOf(next), 0, row);
    nextEl.before(this.renderMessage(row));
  }

  private onLive(e: ServerEvent): void {
    const cid = this.conversation?.id;
    if (e.type === 'message') {
      if (e.message.conversation_id === cid) this.adopt(e.message as unknown as Message);
    } else if ((e.type === 'joined' || e.type === 'presence') && e.conversation_id === cid) {
      this.renderHead(e.users);
    } else if (e.type === 'typing' && e.conversation_id === cid && e.user_id !== me()) {
      window.clearTimeout(this.typers.get(e.user_id));
      if (e.is_typing) this.typers.set(e.user_id, window.setTimeout(() => (this.typers.delete(e.user_id), this.renderTyping()), 6000));
      else this.typers.delete(e.user_id);
      this.renderTyping();
    } else if (e.type === 'error') {
      toast(e.message);
    }
  }

  private renderTyping(): void {
    const names = [...this.typers.keys()].map((u) => this.name(u));
    this.typingLine.textContent = names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} typing…` : '';
  }

  private typed(): void {
    const now = Date.now();
    if (now - this.typingSent > 2000) {
      this.live.typing(true);
      this.typingSent = now;
    }
    window.clearTimeout(this.typingTimer);
    this.typingTimer = window.setTimeout(() => {
      this.live.typing(false);
      this.typingSent = 0;
    }, 3000);
  }

  private async ensureConversation(title: string): Promise<Conversation | null> {
    if (this.conversation) return this.conversation;
    return this.sidebar.create(title.slice(0, 60));
  }

  private async submit(): Promise<void> {
    const text = this.input.value.trim();
    if (!text || this.abort) return;
    const c = await this.ensureConversation(text);
    if (!c) return;
    this.input.value = '';
    window.clearTimeout(this.typingTimer);
    this.live.typing(false);
    this.typingSent = 0;
    if (!this.askAi.checked) {
      this.live.message(text);
      return;
    }
    await this.ask(c, text);
  }

  private async ask(c: Conversation, text: string): Promise<void> {
    const provider = this.provider.value;
    const model = this.model.value;
    this.append({ id: `tmp-${crypto.randomUUID()}`, conversation_id: c.id, user_id: me(), role: 'user', content: text, created_at: new Date().toISOString() });
    const answer: Message = { id: `tmp-${crypto.randomUUID()}`, conversation_id: c.id, user_id: me(), role: 'assistant', content: '', model, created_at: new Date().toISOString() };
    const el = this.append(answer);
    el.classList.add('streaming');
    const bubble = el.querySelector('.bubble') as HTMLElement;
    bubble.append(h('span', { class: 'cursor' }));
    this.abort = new AbortController();
    this.send.hidden = true;
    this.stop.hidden = false;
    let failed: string | null = null;
    try {
      const { data, error } = await supabase.functions.invoke('chat-completion', {
        body: { conversation_id: c.id, provider, model, stream: true, messages: [{ role: 'user', content: text }], ...(this.apiKey.value ? { api_key: this.apiKey.value } : {}) },
        signal: this.abort.signal,
      });
      if (error) throw error;
      for await (const ev of events((data as Response).body!)) {
        if (ev.type === 'delta') {
          answer.content += ev.content ?? '';
          bubble.textContent = answer.content;
          bubble.append(h('span', { class: 'cursor' }));
          this.list.parentElement!.scrollTop = this.list.parentElement!.scrollHeight;
        } else if (ev.type === 'done') {
          Object.assign(answer, ev.message, { conversation_id: c.id, user_id: me() });
        } else if (ev.type === 'error') {
          failed = humanError(provider, ev.error?.status ?? 0, ev.error?.code ?? '', ev.error?.message ?? '');
        }
      }
    } catch (err) {
      if (this.abort?.signal.aborted) {
        el.classList.add('stopped');
      } else {
        const e = await functionError(err);
        failed = humanError(provider, e.status, e.code, e.message);
      }
    } finally {
      this.abort = null;
      this.send.hidden = false;
      this.stop.hidden = true;
      el.classList.remove('streaming');
      el.dataset.id = answer.id;
      renderContent(bubble, answer);
      if (el.classList.contains('stopped')) bubble.append(h('div', { class: 'muted stopped-note' }, 'Stopped.'));
      if (failed) {
        el.classList.add('failed');
        bubble.append(h('div', { class: 'error' }, failed));
      }
      if (answer.id.startsWith('tmp') === false) {
        const newer = this.renderMessage(answer);
        if (el.classList.contains('stopped')) newer.classList.add('stopped');
        el.replaceWith(newer);
      }
    }
  }

  private async upload(): Promise<void> {
    const file = this.fileInput.files?.[0];
    this.fileInput.value = '';
    if (!file) return;
    if (file.size > MAX_FILE) return toast(`“${file.name}” is ${formatBytes(file.size)}: files can be at most 10 MB.`);
    const c = await this.ensureConversation(file.name);
    if (!c) return;
    const form = new FormData();
    form.append('file', file);
    form.append('conversation_id', c.id);
    this.progress.hidden = false;
    this.progress.value = 0;
    try {
      const f = await postWithProgress(`${SUPABASE_URL}/functions/v1/file-upload`, form, (p) => (this.progress.value = p));
      const { data, error } = await supabase
        .from('messages')
        .insert({ conversation_id: c.id, role: 'user', content: `Attached ${f.name}`, metadata: { file: { ...f, signed_url: undefined } } })
        .select('id, conversation_id, user_id, role, content, model, metadata, created_at')
        .single();
      if (error) throw new Error(error.message);
      if (!this.messages.some((m) => m.id === data.id)) this.append({ ...data, metadata: { file: f } } as Message);
    } catch (err) {
      toast((err as Error).message);
    } finally {
      this.progress.hidden = true;
    }
  }

  private async share(): Promise<void> {
    const c = this.conversation;
    const email = prompt('Share this conversation with (their email):');
    if (!c || !email) return;
    const { data, error } = await supabase.rpc('share_conversation', { conversation_id: c.id, email: email.trim() });
    if (error) return toast(error.message.includes('share_conversation') ? 'Sharing needs examples/chat-web/sharing.sql loaded into the database.' : error.message);
    c.metadata = data as Conversation['metadata'];
    toast(`Shared with ${email}.`, 'info');
  }
}

/** The server-sent events of a chat-completion stream. */
async function* events(body: ReadableStream<Uint8Array>): AsyncGenerator<{ type: string; content?: string; message?: Partial<Message>; error?: { code?: string; message?: string; status?: number } }> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (data) yield JSON.parse(data);
    }
  }
}

function humanError(provider: string, status: number, code: string, message: string): string {
  const name = PROVIDER_NAMES[provider] ?? provider;
  if (code === 'missing_api_key') return `No ${name} API key is set up on this server. Open “Use my own API key” below and paste yours, or pick another provider.`;
  if (status === 429 || code.includes('rate')) return `${name} is receiving too many requests right now. Wait a few seconds and try again.`;
  if (status === 401 || status === 403) return `${name} refused the API key. Check the key and try again.`;
  if (status >= 500) return `${name} is having trouble right now (error ${status}). Try again in a moment, or pick another provider.`;
  if (status === 0) return `Could not reach the server: ${message}`;
  return message || `The request failed (error ${status}).`;
}

/** file-upload with upload progress (fetch has none): the user's token and the anon key. */
function postWithProgress(url: string, form: FormData, onProgress: (percent: number) => void): Promise<FileMeta> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url);
    xhr.setRequestHeader('apikey', ANON_KEY);
    xhr.setRequestHeader('authorization', `Bearer ${session.current?.access_token ?? ANON_KEY}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(Math.round((e.loaded / e.total) * 100));
    xhr.onload = () => {
      let body: { error?: { code?: string; message?: string } } & FileMeta;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        return reject(new Error(`The upload failed (error ${xhr.status}).`));
      }
      if (xhr.status === 201 || xhr.status === 200) return resolve(body);
      if (xhr.status === 413) return reject(new Error('That file is larger than 10 MB.'));
      if (xhr.status === 415) return reject(new Error(`That kind of file cannot be attached: ${body.error?.message ?? ''}`));
      reject(new Error(body.error?.message ?? `The upload failed (error ${xhr.status}).`));
    };
    xhr.onerror = () => reject(new Error('The upload failed: the server could not be reached.'));
    xhr.send(form);
  });
}
