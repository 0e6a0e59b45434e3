-- Sharing a conversation with another user (the app's "Share" button). Load once:
--   psql "postgres://postgres:postgres@127.0.0.1:54322/postgres" -f examples/chat-web/sharing.sql
-- A conversation's members are listed in metadata.members (user ids) with their emails in
-- metadata.names; members may read it and its messages and write messages to it.
drop policy if exists chat_members_read on public.conversations;
create policy chat_members_read on public.conversations for select to authenticated
  using (metadata->'members' ? (select auth.uid())::text);

drop policy if exists chat_members_read_messages on public.messages;
create policy chat_members_read_messages on public.messages for select to authenticated
  using (exists (select 1 from public.conversations c
                 where c.id = conversation_id and c.metadata->'members' ? (select auth.uid())::text));

drop policy if exists chat_members_write_messages on public.messages;
create policy chat_members_write_messages on public.messages for insert to authenticated
  with check (user_id = (select auth.uid()) and exists (
    select 1 from public.conversations c
     where c.id = conversation_id and c.metadata->'members' ? (select auth.uid())::text));

-- Only the owner shares; the address is looked up here so that no client can list users.
create or replace function public.share_conversation(conversation_id uuid, email text)
returns jsonb language plpgsql security definer set search_path = '' as $$
declare
  member uuid;
  owner_email text;
  meta jsonb;
begin
  select u.id into member from auth.users u where lower(u.email) = lower(share_conversation.email);
  if member is null then
    raise exception 'No user has the address %', share_conversation.email using errcode = 'P0002';
  end if;
  select u.email into owner_email from auth.users u where u.id = auth.uid();
  update public.conversations c
     set metadata = jsonb_set(
           jsonb_set(coalesce(c.metadata, '{}'),
                     '{members}',
                     (select coalesce(jsonb_agg(distinct m), '[]') from jsonb_array_elements_text(
                        coalesce(c.metadata->'members', '[]') || to_jsonb(member::text)) m)),
           '{names}',
           coalesce(c.metadata->'names', '{}')
             || jsonb_build_object(member::text, share_conversation.email, auth.uid()::text, owner_email))
   where c.id = share_conversation.conversation_id and c.user_id = auth.uid()
  returning c.metadata into meta;
  if meta is null then
    raise exception 'Only the owner of a conversation can share it' using errcode = '42501';
  end if;
  return meta;
end $$;
revoke all on function public.share_conversation(uuid, text) from public, anon;
grant execute on function public.share_conversation(uuid, text) to authenticated;
