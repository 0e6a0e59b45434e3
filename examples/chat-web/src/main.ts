// The app shell: the signed-out pages or the chat / usage / profile pages, switched by
// supabase-js's auth events (sign in, sign out, a password-recovery link followed).
import './styles.css';
import { renderAuth, renderNewPassword } from './auth';
import { ChatView } from './chat';
import { me, myEmail, session, supabase } from './client';
import { avatarUrl, renderProfile, renderUsage } from './pages';
import { clear, h, initials } from './ui';

const root = document.getElementById('app')!;
let chat: ChatView | null = null;
let shownFor: string | null | undefined = undefined;
let recovering = false;

type Page = 'chat' | 'usage' | 'profile';

function pageFromPath(): Page {
  const p = location.pathname.replace(/^\//, '');
  return p === 'usage' || p === 'profile' ? p : 'chat';
}

function go(page: Page): void {
  history.pushState(null, '', page === 'chat' ? '/' : `/${page}`);
  show(page);
}

async function userBadge(el: HTMLElement): Promise<void> {
  const { data } = await supabase.from('profiles').select('full_name, avatar_url').eq('id', me()).maybeSingle();
  const url = avatarUrl(data?.avatar_url, 64);
  clear(el, url ? h('img', { src: url, alt: '' }) : initials(data?.full_name || myEmail()));
}

function show(page: Page): void {
  const badge = h('span', { class: 'avatar small me' });
  const nav = (p: Page, label: string) => h('a', { href: p === 'chat' ? '/' : `/${p}`, class: page === p ? 'active' : '', onclick: (e: Event) => (e.preventDefault(), go(p)) }, label);
  const main = h('div', { class: 'main' });
  clear(
    root,
    h(
      'header',
      { class: 'topbar' },
      h('div', { class: 'brand' }, h('span', { class: 'logo' }), 'oxichat'),
      h('nav', {}, nav('chat', 'Chat'), nav('usage', 'Usage'), nav('profile', 'Profile')),
      h('span', { class: 'grow' }),
      h('span', { class: 'user' }, badge, h('span', { class: 'email' }, myEmail())),
      h('button', { class: 'ghost signout', onclick: () => supabase.auth.signOut() }, 'Sign out'),
    ),
    main,
  );
  void userBadge(badge);
  if (page === 'chat') {
    chat ??= new ChatView();
    chat.mount(main);
  } else if (page === 'usage') void renderUsage(main);
  else void renderProfile(main, () => userBadge(badge));
}

supabase.auth.onAuthStateChange((event, s) => {
  session.current = s;
  if (event === 'PASSWORD_RECOVERY') {
    recovering = true;
    shownFor = s?.user.id ?? null;
    setTimeout(() => renderNewPassword(root, () => ((recovering = false), show('chat'))), 0);
    return;
  }
  const uid = s?.user.id ?? null;
  if (event === 'TOKEN_REFRESHED' || uid === shownFor) return;
  shownFor = uid;
  chat?.destroy();
  chat = null;
  // Leave the auth callbacks before rendering (supabase-js holds a lock during them).
  setTimeout(() => recovering || (uid ? show(pageFromPath()) : renderAuth(root)), 0);
});

window.addEventListener('popstate', () => session.current && show(pageFromPath()));
