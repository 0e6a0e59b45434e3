-- websocket-handler: which server process holds each open session, so that a starting
-- server closes only the sessions of processes that are gone (a live process holds a
-- session-level advisory lock on its id; see src/functions/ws/sessions.rs).
alter table public.user_sessions add column if not exists server_id bigint;
create index if not exists user_sessions_open_idx on public.user_sessions (server_id)
  where disconnected_at is null;
