-- The AI chat platform's eight tables (shared/spec/schema.md). RLS is enabled and forced on
-- every table: a user reaches only rows they own, through every API.

create or replace function public.set_updated_at() returns trigger language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end $$;

create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  username text unique,
  full_name text,
  avatar_url text,
  settings jsonb not null default '{}',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create table public.conversations (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  title text,
  provider text,
  model text,
  system_prompt text,
  metadata jsonb default '{}',
  archived boolean default false,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index conversations_user_updated_idx on public.conversations (user_id, updated_at desc);

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  conversation_id uuid not null references public.conversations (id) on delete cascade,
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  role text not null check (role in ('system', 'user', 'assistant', 'tool')),
  content text not null,
  model text,
  tokens_used int,
  metadata jsonb default '{}',
  created_at timestamptz not null default now()
);
create index messages_conversation_created_idx on public.messages (conversation_id, created_at);
create index messages_user_idx on public.messages (user_id);

create table public.code_executions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete cascade,
  message_id uuid references public.messages (id) on delete set null,
  language text not null check (language in ('python', 'javascript', 'typescript')),
  code text not null,
  stdout text,
  stderr text,
  status text not null check (status in ('success', 'error', 'timeout')),
  exit_code int,
  duration_ms int,
  created_at timestamptz not null default now()
);
create index code_executions_user_created_idx on public.code_executions (user_id, created_at desc);

create table public.file_uploads (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete set null,
  bucket text not null,
  path text not null,
  name text not null,
  mime_type text,
  size_bytes bigint,
  created_at timestamptz not null default now(),
  unique (bucket, path)
);
create index file_uploads_user_created_idx on public.file_uploads (user_id, created_at desc);

create table public.visualizations (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null default auth.uid() references auth.users (id) on delete cascade,
  conversation_id uuid references public.conversations (id) on delete cascade,
  message_id uuid references public.messages (id) on delete set null,
  title text,
  chart_type text,
  config jsonb not null,
  data jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
create index visualizations_user_idx on public.visualizations (user_id);

create table public.user_sessions (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users (id) on delete cascade,
  status text not null default 'online' check (status in ('online', 'away', 'offline')),
  user_agent text,
  connected_at timestamptz not null default now(),
  last_seen_at timestamptz not null default now(),
  disconnected_at timestamptz
);
create index user_sessions_user_idx on public.user_sessions (user_id);

create table public.api_usage (
  id bigint generated always as identity primary key,
  user_id uuid references auth.users (id) on delete cascade,
  endpoint text not null,
  provider text,
  model text,
  prompt_tokens int,
  completion_tokens int,
  total_tokens int,
  status_code int,
  latency_ms int,
  created_at timestamptz not null default now()
);
create index api_usage_user_created_idx on public.api_usage (user_id, created_at);

create trigger profiles_updated_at before update on public.profiles
  for each row execute function public.set_updated_at();
create trigger conversations_updated_at before update on public.conversations
  for each row execute function public.set_updated_at();
create trigger visualizations_updated_at before update on public.visualizations
  for each row execute function public.set_updated_at();

-- A profile for every new user (SQL written for Supabase does exactly this).
create or replace function public.handle_new_user() returns trigger
language plpgsql security definer set search_path = public as $$
begin
  insert into public.profiles (id, username, full_name, avatar_url)
  values (
    new.id,
    nullif(new.raw_user_meta_data ->> 'username', ''),
    coalesce(new.raw_user_meta_data ->> 'full_name', new.raw_user_meta_data ->> 'name'),
    new.raw_user_meta_data ->> 'avatar_url'
  )
  on conflict do nothing;
  return new;
end $$;
revoke execute on function public.handle_new_user() from anon, authenticated;
create trigger on_auth_user_created after insert on auth.users
  for each row execute function public.handle_new_user();

-- RLS: enabled and forced everywhere.
do $$
declare t text;
begin
  foreach t in array array['profiles', 'conversations', 'messages', 'code_executions',
                           'file_uploads', 'visualizations', 'user_sessions', 'api_usage']
  loop
    execute format('alter table public.%I enable row level security', t);
    execute format('alter table public.%I force row level security', t);
  end loop;
end $$;

create policy profiles_select_own on public.profiles for select to authenticated
  using (id = (select auth.uid()));
create policy profiles_update_own on public.profiles for update to authenticated
  using (id = (select auth.uid())) with check (id = (select auth.uid()));

create policy conversations_owner on public.conversations for all to authenticated
  using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

create policy messages_select on public.messages for select to authenticated
  using (exists (select 1 from public.conversations c
                 where c.id = conversation_id and c.user_id = (select auth.uid())));
create policy messages_insert on public.messages for insert to authenticated
  with check (user_id = (select auth.uid()) and exists (
    select 1 from public.conversations c
    where c.id = conversation_id and c.user_id = (select auth.uid())));
create policy messages_update_own on public.messages for update to authenticated
  using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));
create policy messages_delete_own on public.messages for delete to authenticated
  using (user_id = (select auth.uid()));

create policy code_executions_select on public.code_executions for select to authenticated
  using (user_id = (select auth.uid()));
create policy code_executions_insert on public.code_executions for insert to authenticated
  with check (user_id = (select auth.uid()));

create policy file_uploads_select on public.file_uploads for select to authenticated
  using (user_id = (select auth.uid()));
create policy file_uploads_insert on public.file_uploads for insert to authenticated
  with check (user_id = (select auth.uid()));
create policy file_uploads_delete on public.file_uploads for delete to authenticated
  using (user_id = (select auth.uid()));

create policy visualizations_owner on public.visualizations for all to authenticated
  using (user_id = (select auth.uid())) with check (user_id = (select auth.uid()));

create policy user_sessions_select on public.user_sessions for select to authenticated
  using (user_id = (select auth.uid()));

create policy api_usage_select on public.api_usage for select to authenticated
  using (user_id = (select auth.uid()));

-- Realtime: these publish their changes; full old rows for UPDATE/DELETE payloads.
alter table public.messages replica identity full;
alter table public.conversations replica identity full;
alter publication supabase_realtime add table public.messages, public.conversations;

-- Storage: the two buckets, and a user's own folder `<user id>/...`.
insert into storage.buckets (id, name, public, file_size_limit, allowed_mime_types) values
  ('chat-files', 'chat-files', false, 10485760, array[
    'image/png', 'image/jpeg', 'image/gif', 'image/webp', 'application/pdf', 'text/plain',
    'text/markdown', 'text/csv', 'application/json', 'text/x-python', 'text/javascript',
    'application/javascript', 'text/typescript', 'application/typescript', 'text/html',
    'text/css', 'text/x-rust', 'text/x-c', 'text/x-java', 'text/x-go', 'application/x-sh',
    'application/octet-stream']),
  ('avatars', 'avatars', true, 2097152, array['image/*'])
on conflict (id) do nothing;

create policy "chat-files: own folder read" on storage.objects for select to authenticated
  using (bucket_id = 'chat-files' and (storage.foldername(name))[1] = (select auth.uid())::text);
create policy "chat-files: own folder insert" on storage.objects for insert to authenticated
  with check (bucket_id = 'chat-files' and (storage.foldername(name))[1] = (select auth.uid())::text);
create policy "chat-files: own folder update" on storage.objects for update to authenticated
  using (bucket_id = 'chat-files' and (storage.foldername(name))[1] = (select auth.uid())::text);
create policy "chat-files: own folder delete" on storage.objects for delete to authenticated
  using (bucket_id = 'chat-files' and (storage.foldername(name))[1] = (select auth.uid())::text);

create policy "avatars: anyone reads" on storage.objects for select to anon, authenticated
  using (bucket_id = 'avatars');
create policy "avatars: own folder insert" on storage.objects for insert to authenticated
  with check (bucket_id = 'avatars' and (storage.foldername(name))[1] = (select auth.uid())::text);
create policy "avatars: own folder update" on storage.objects for update to authenticated
  using (bucket_id = 'avatars' and (storage.foldername(name))[1] = (select auth.uid())::text);
create policy "avatars: own folder delete" on storage.objects for delete to authenticated
  using (bucket_id = 'avatars' and (storage.foldername(name))[1] = (select auth.uid())::text);
