-- GoTrue's audit trail: one row per auth event (sign-up, login, logout, refresh, user
-- changes, admin actions), read back through GET /auth/v1/admin/audit.

create table if not exists auth.audit_log_entries (
  instance_id uuid,
  id uuid primary key,
  payload json,
  created_at timestamptz,
  ip_address varchar(64) not null default ''
);
create index if not exists audit_logs_instance_id_idx on auth.audit_log_entries (instance_id);
create index if not exists audit_logs_created_at_idx on auth.audit_log_entries (created_at desc);
alter table auth.audit_log_entries owner to supabase_auth_admin;
grant all on auth.audit_log_entries to dashboard_user, postgres;
