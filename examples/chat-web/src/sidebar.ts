// The conversation list: newest first, 20 a page, create / rename / archive / delete / share.
import type { RealtimeChannel } from '@supabase/supabase-js';
import { me, supabase } from './client';
import { clear, h, timeAgo, toast } from './ui';

export interface Conversation {
  id: string;
  user_id: string;
  title: string | null;
  provider: string | null;
  model: string | null;
  archived: boolean;
  metadata: { members?: string[]; names?: Record<string, string> } | null;
  updated_at: string;
}

const PAGE = 20;

export class Sidebar {
  el = h('aside', { class: 'sidebar' });
  private list = h('ul', { class: 'conversations' });
  private more = h('button', { class: 'ghost more', onclick: () => this.load(false) }, 'Load more');
  private archivedToggle = h('input', { type: 'checkbox', onchange: () => this.load(true) });
  private items: Conversation[] = [];
  selected: string | null = null;
  private channel: RealtimeChannel | null = null;

  constructor(private onSelect: (c: Conversation | null) => void) {
    // Conversations created elsewhere or shared with me appear without a reload (Realtime
    // postgres_changes, delivered only where RLS lets me read the row).
    this.channel = supabase
      .channel('my-conversations')
      .on('postgres_changes', { event: '*', schema: 'public', table: 'conversations' }, (p) => {
        if (p.eventType === 'DELETE') {
          const id = (p.old as { id?: string }).id;
          this.items = this.items.filter((x) => x.id !== id);
          return this.render();
        }
        const c = p.new as Conversation;
        if (c.archived !== this.archivedToggle.checked) {
          this.items = this.items.filter((x) => x.id !== c.id);
          return this.render();
        }
        const known = this.items.find((x) => x.id === c.id);
        if (known) Object.assign(known, c);
        else this.items = [c, ...this.items];
        this.render();
      })
      .subscribe();
    clear(
      this.el,
      h('button', { class: 'primary new', onclick: () => this.create() }, '+ New conversation'),
      this.list,
      this.more,
      h('label', { class: 'archived' }, this.archivedToggle, 'Show archived'),
    );
  }

  close(): void {
    if (this.channel) void supabase.removeChannel(this.channel);
  }

  get current(): Conversation | null {
    return this.items.find((c) => c.id === this.selected) ?? null;
  }

  async load(reset: boolean): Promise<void> {
    const from = reset ? 0 : this.items.length;
    const { data, error } = await supabase
      .from('conversations')
      .select('id, user_id, title, provider, model, archived, metadata, updated_at')
      .eq('archived', this.archivedToggle.checked)
      .order('updated_at', { ascending: false })
      .range(from, from + PAGE - 1);
    if (error) return toast(`Could not load conversations: ${error.message}`);
    this.items = reset ? data : [...this.items, ...data];
    this.more.hidden = data.length < PAGE;
    this.render();
  }

  /** Put a conversation at the top (created or touched elsewhere). */
  upsert(c: Conversation): void {
    this.items = [c, ...this.items.filter((x) => x.id !== c.id)];
    this.render();
  }

  private render(): void {
    clear(
      this.list,
      this.items.map((c) =>
        h(
          'li',
          { class: c.id === this.selected ? 'active' : '', 'data-id': c.id },
          h(
            'button',
            { class: 'open', onclick: () => this.select(c.id) },
            h('span', { class: 'title' }, c.title || 'Untitled'),
            h('span', { class: 'meta' }, c.user_id !== me() ? 'shared with you · ' : '', timeAgo(c.updated_at)),
          ),
          c.user_id === me() &&
            h(
              'span',
              { class: 'actions' },
              h('button', { title: 'Rename', 'aria-label': 'Rename', onclick: () => this.rename(c) }, '✎'),
              h('button', { title: c.archived ? 'Unarchive' : 'Archive', 'aria-label': 'Archive', onclick: () => this.archive(c) }, c.archived ? '↺' : '⇣'),
              h('button', { title: 'Delete', 'aria-label': 'Delete', onclick: () => this.remove(c) }, '✕'),
            ),
        ),
      ),
    );
    if (!this.items.length) this.list.append(h('li', { class: 'empty' }, 'No conversations yet.'));
  }

  select(id: string | null): void {
    this.selected = id;
    this.render();
    this.onSelect(this.current);
  }

  async create(title = 'New conversation'): Promise<Conversation | null> {
    const { data, error } = await supabase
      .from('conversations')
      .insert({ title })
      .select('id, user_id, title, provider, model, archived, metadata, updated_at')
      .single();
    if (error) {
      toast(`Could not create the conversation: ${error.message}`);
      return null;
    }
    this.upsert(data);
    this.select(data.id);
    return data;
  }

  private async rename(c: Conversation): Promise<void> {
    const title = prompt('Rename conversation', c.title ?? '');
    if (title === null || !title.trim()) return;
    const { error } = await supabase.from('conversations').update({ title: title.trim() }).eq('id', c.id);
    if (error) return toast(error.message);
    c.title = title.trim();
    this.render();
    if (c.id === this.selected) this.onSelect(c);
  }

  private async archive(c: Conversation): Promise<void> {
    const { error } = await supabase.from('conversations').update({ archived: !c.archived }).eq('id', c.id);
    if (error) return toast(error.message);
    this.items = this.items.filter((x) => x.id !== c.id);
    if (c.id === this.selected) this.select(null);
    else this.render();
  }

  private async remove(c: Conversation): Promise<void> {
    if (!confirm(`Delete “${c.title || 'Untitled'}” and all its messages?`)) return;
    const { error } = await supabase.from('conversations').delete().eq('id', c.id);
    if (error) return toast(error.message);
    this.items = this.items.filter((x) => x.id !== c.id);
    if (c.id === this.selected) this.select(null);
    else this.render();
  }
}
