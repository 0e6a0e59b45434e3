-- Realtime: the capture task reads a logical replication slot as supabase_realtime_admin
-- (the login role switches to it with SET ROLE), so that role needs REPLICATION.
do $$
begin
  alter role supabase_realtime_admin with replication;
exception when insufficient_privilege then
  raise notice 'cannot grant REPLICATION to supabase_realtime_admin; postgres_changes needs a superuser or replication role';
end $$;
