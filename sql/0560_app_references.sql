-- A row may reference only the caller's own conversations and messages, and a recorded
-- upload lies in the caller's own folder (shared/spec/schema.md).
--
-- Without this, a user could attach rows to another user's conversation or message (whose
-- delete then cascaded into them), probe which conversation ids exist (a foreign-key error
-- for a random id, success for a real one), and record another user's object path in
-- file_uploads, blocking its owner from recording it (unique (bucket, path)).
--
-- Row-level security's WITH CHECK runs before the row is written, so before the unique
-- index and the foreign-key triggers: a random id and another user's id get the same
-- refusal (42501), and nothing about the other row is revealed.
--
-- "Own conversation": conversations.user_id is the caller. "Own message": a message of an
-- own conversation (the rows the messages select policy shows). Column references are
-- qualified with their table, since messages has a conversation_id of its own.

-- messages: insert already requires an own conversation; an update may not move a message
-- into someone else's conversation.
drop policy messages_update_own on public.messages;
create policy messages_update_own on public.messages for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()) and exists (
    select 1 from public.conversations c
    where c.id = messages.conversation_id and c.user_id = (select auth.uid())));

drop policy code_executions_insert on public.code_executions;
create policy code_executions_insert on public.code_executions for insert to authenticated
  with check (
    user_id = (select auth.uid())
    and (code_executions.conversation_id is null or exists (
      select 1 from public.conversations c
      where c.id = code_executions.conversation_id and c.user_id = (select auth.uid())))
    and (code_executions.message_id is null or exists (
      select 1 from public.messages m join public.conversations c on c.id = m.conversation_id
      where m.id = code_executions.message_id and c.user_id = (select auth.uid()))));

drop policy file_uploads_insert on public.file_uploads;
create policy file_uploads_insert on public.file_uploads for insert to authenticated
  with check (
    user_id = (select auth.uid())
    and (file_uploads.conversation_id is null or exists (
      select 1 from public.conversations c
      where c.id = file_uploads.conversation_id and c.user_id = (select auth.uid())))
    -- `<user id>/<something>`, with no `.` or `..` segment walking out of the folder.
    and split_part(file_uploads.path, '/', 1) = (select auth.uid())::text
    and length(file_uploads.path) > length((select auth.uid())::text) + 1
    and file_uploads.path !~ '(^|/)\.\.?(/|$)');

drop policy visualizations_owner on public.visualizations;
create policy visualizations_owner on public.visualizations for all to authenticated
  using (user_id = (select auth.uid()))
  with check (
    user_id = (select auth.uid())
    and (visualizations.conversation_id is null or exists (
      select 1 from public.conversations c
      where c.id = visualizations.conversation_id and c.user_id = (select auth.uid())))
    and (visualizations.message_id is null or exists (
      select 1 from public.messages m join public.conversations c on c.id = m.conversation_id
      where m.id = visualizations.message_id and c.user_id = (select auth.uid()))));
