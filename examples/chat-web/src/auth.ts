// Sign up, sign in, password reset (the link arrives in the mailbox: oxibase's local inbox
// in development) and choosing a new password after following that link.
import { supabase } from './client';
import { clear, h, toast } from './ui';

type Mode = 'signin' | 'signup' | 'reset';

export function renderAuth(root: HTMLElement, mode: Mode = 'signin'): void {
  const email = h('input', { type: 'email', name: 'email', placeholder: 'you@example.com', required: true, autocomplete: 'email' });
  const password = h('input', { type: 'password', name: 'password', placeholder: 'Password (6+ characters)', required: mode !== 'reset', minLength: 6, autocomplete: mode === 'signup' ? 'new-password' : 'current-password' });
  const note = h('p', { class: 'note' });
  const submit = h('button', { type: 'submit', class: 'primary' }, mode === 'signin' ? 'Sign in' : mode === 'signup' ? 'Create account' : 'Send reset link');
  const form = h(
    'form',
    {
      class: 'card auth',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        submit.disabled = true;
        note.textContent = '';
        try {
          if (mode === 'signup') {
            const { data, error } = await supabase.auth.signUp({ email: email.value, password: password.value });
            if (error) throw error;
            if (!data.session) note.textContent = 'Check your inbox to confirm your address, then sign in.';
          } else if (mode === 'signin') {
            const { error } = await supabase.auth.signInWithPassword({ email: email.value, password: password.value });
            if (error) throw error;
          } else {
            const { error } = await supabase.auth.resetPasswordForEmail(email.value, { redirectTo: `${location.origin}/` });
            if (error) throw error;
            note.textContent = 'If that address has an account, a reset link is on its way. Follow it to choose a new password.';
          }
        } catch (err) {
          note.textContent = (err as Error).message;
          note.classList.add('error');
        } finally {
          submit.disabled = false;
        }
      },
    },
    h('div', { class: 'brand big' }, h('span', { class: 'logo' }), 'oxichat'),
    h('h1', {}, mode === 'signin' ? 'Welcome back' : mode === 'signup' ? 'Create your account' : 'Reset your password'),
    h('label', {}, 'Email', email),
    mode !== 'reset' && h('label', {}, 'Password', password),
    submit,
    note,
    h(
      'nav',
      { class: 'switch' },
      mode !== 'signin' && h('a', { href: '#', onclick: (e: Event) => (e.preventDefault(), renderAuth(root, 'signin')) }, 'Sign in'),
      mode !== 'signup' && h('a', { href: '#', onclick: (e: Event) => (e.preventDefault(), renderAuth(root, 'signup')) }, 'Create an account'),
      mode !== 'reset' && h('a', { href: '#', onclick: (e: Event) => (e.preventDefault(), renderAuth(root, 'reset')) }, 'Forgot password?'),
    ),
  );
  clear(root, h('main', { class: 'auth-page' }, form));
  email.focus();
}

export function renderNewPassword(root: HTMLElement, done: () => void): void {
  const password = h('input', { type: 'password', placeholder: 'New password', required: true, minLength: 6, autocomplete: 'new-password' });
  const form = h(
    'form',
    {
      class: 'card auth',
      onsubmit: async (e: Event) => {
        e.preventDefault();
        const { error } = await supabase.auth.updateUser({ password: password.value });
        if (error) return toast(error.message);
        toast('Password changed.', 'info');
        done();
      },
    },
    h('h1', {}, 'Choose a new password'),
    h('label', {}, 'Password', password),
    h('button', { type: 'submit', class: 'primary' }, 'Save password'),
  );
  clear(root, h('main', { class: 'auth-page' }, form));
}
