-- TUS resumable uploads in progress. Bytes of each finished PATCH live in the object store
-- under uploads/<id>/<offset>; this row is the state that survives a server restart.
-- Only the storage admin role (the table's owner) touches it.
create table if not exists storage.resumable_uploads (
  id text primary key,
  bucket_id text not null references storage.buckets (id) on delete cascade,
  name text not null,
  owner_id text,
  upsert boolean not null default false,
  upload_length bigint not null check (upload_length >= 0),
  upload_offset bigint not null default 0,
  content_type text not null,
  cache_control text not null,
  user_metadata jsonb,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null default now() + interval '24 hours'
);
alter table storage.resumable_uploads owner to supabase_storage_admin;
alter table storage.resumable_uploads enable row level security;
revoke all on storage.resumable_uploads from anon, authenticated, service_role;
