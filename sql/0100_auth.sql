-- GoTrue's bookkeeping beyond users/identities/sessions/refresh_tokens (0001): PKCE flow
-- state, one-time tokens, rate-limit counters (shared by every oxibase process on this
-- database) and the local mail outbox. Everything here belongs to supabase_auth_admin; the
-- server's auth work runs as that role.

grant usage on schema extensions to supabase_auth_admin;

create table if not exists auth.flow_state (
  id uuid primary key,
  user_id uuid,
  auth_code text not null,
  code_challenge_method text not null check (code_challenge_method in ('s256', 'plain')),
  code_challenge text not null,
  provider_type text not null,
  provider_access_token text,
  provider_refresh_token text,
  created_at timestamptz,
  updated_at timestamptz,
  authentication_method text not null,
  auth_code_issued_at timestamptz
);
create index if not exists idx_auth_code on auth.flow_state (auth_code);
create index if not exists idx_user_id_auth_method on auth.flow_state (user_id, authentication_method);

-- GoTrue keeps the hashed tokens both on auth.users (legacy columns) and here; oxibase
-- reads the columns on auth.users and mirrors them here so SQL written for Supabase
-- (e.g. token lookups in hooks) finds them.
create table if not exists auth.one_time_tokens (
  id uuid primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  token_type text not null check (token_type in ('confirmation_token', 'reauthentication_token',
    'recovery_token', 'email_change_token_new', 'email_change_token_current', 'phone_change_token')),
  token_hash text not null check (char_length(token_hash) > 0),
  relates_to text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  unique (user_id, token_type)
);
create index if not exists one_time_tokens_token_hash_hash_idx on auth.one_time_tokens using hash (token_hash);

-- How each session was authenticated (the `amr` claim), as GoTrue keeps it.
create table if not exists auth.mfa_amr_claims (
  session_id uuid not null references auth.sessions (id) on delete cascade,
  created_at timestamptz not null,
  updated_at timestamptz not null,
  authentication_method text not null,
  id uuid primary key,
  unique (session_id, authentication_method)
);

-- Fixed one-hour windows; `key` is e.g. 'ip:signin:127.0.0.1' or 'email:a@b.c'.
create table if not exists auth.oxibase_rate_limits (
  key text not null,
  window_start timestamptz not null,
  hits integer not null default 0,
  primary key (key, window_start)
);

-- Every message the server would mail. Without SMTP this is the local inbox (like
-- Supabase's Inbucket), read through GET /auth/v1/inbox (service_role only) or with SQL.
-- With SMTP the secret parts are cleared once the message is handed over.
create table if not exists auth.oxibase_outbox (
  id bigserial primary key,
  created_at timestamptz not null default now(),
  recipient text not null,
  kind text not null,
  subject text not null,
  body text,
  html boolean not null default false,
  otp text,
  token_hash text,
  action_link text,
  sent_at timestamptz,
  attempts integer not null default 0,
  last_attempt_at timestamptz,
  error text
);
create index if not exists oxibase_outbox_recipient_idx on auth.oxibase_outbox (lower(recipient), id desc);

-- Lookups the API makes on every sign-in and verification.
create index if not exists users_lower_email_idx on auth.users (lower(email));
create index if not exists users_confirmation_token_idx on auth.users (confirmation_token) where confirmation_token <> '';
create index if not exists users_recovery_token_idx on auth.users (recovery_token) where recovery_token <> '';
create index if not exists users_email_change_token_new_idx on auth.users (email_change_token_new) where email_change_token_new <> '';
create index if not exists users_email_change_token_current_idx on auth.users (email_change_token_current) where email_change_token_current <> '';
create index if not exists users_phone_change_token_idx on auth.users (phone_change_token) where phone_change_token <> '';
create index if not exists refresh_tokens_parent_idx on auth.refresh_tokens (parent);
create index if not exists refresh_tokens_updated_at_idx on auth.refresh_tokens (updated_at desc);
create index if not exists users_is_anonymous_idx on auth.users (is_anonymous);
create index if not exists identities_email_idx on auth.identities (email text_pattern_ops);

alter table auth.flow_state owner to supabase_auth_admin;
alter table auth.mfa_amr_claims owner to supabase_auth_admin;
alter table auth.one_time_tokens owner to supabase_auth_admin;
alter table auth.oxibase_rate_limits owner to supabase_auth_admin;
alter table auth.oxibase_outbox owner to supabase_auth_admin;
alter sequence auth.oxibase_outbox_id_seq owner to supabase_auth_admin;
grant select on auth.oxibase_outbox to service_role;
grant all on auth.flow_state, auth.one_time_tokens, auth.oxibase_rate_limits, auth.oxibase_outbox
  to dashboard_user, postgres;

-- A user as GoTrue's JSON renders it (keys with null values left out, like its omitempty).
create or replace function auth.oxibase_user_json_base(u auth.users) returns jsonb
language sql stable as $$
  select coalesce(jsonb_object_agg(k, v), '{}'::jsonb) from jsonb_each(jsonb_build_object(
    'id', u.id,
    'aud', coalesce(u.aud, ''),
    'role', coalesce(u.role, ''),
    'email', coalesce(u.email, ''),
    'email_confirmed_at', u.email_confirmed_at,
    'phone', coalesce(u.phone, ''),
    'phone_confirmed_at', u.phone_confirmed_at,
    'confirmation_sent_at', u.confirmation_sent_at,
    'confirmed_at', u.confirmed_at,
    'recovery_sent_at', u.recovery_sent_at,
    'new_email', nullif(u.email_change, ''),
    'email_change_sent_at', u.email_change_sent_at,
    'new_phone', nullif(u.phone_change, ''),
    'phone_change_sent_at', u.phone_change_sent_at,
    'reauthentication_sent_at', u.reauthentication_sent_at,
    'invited_at', u.invited_at,
    'last_sign_in_at', u.last_sign_in_at,
    'app_metadata', coalesce(u.raw_app_meta_data, '{}'::jsonb),
    'user_metadata', coalesce(u.raw_user_meta_data, '{}'::jsonb),
    'identities', coalesce((
      select jsonb_agg(jsonb_build_object(
        'identity_id', i.id,
        'id', i.provider_id,
        'user_id', i.user_id,
        'identity_data', i.identity_data,
        'provider', i.provider,
        'last_sign_in_at', i.last_sign_in_at,
        'created_at', i.created_at,
        'updated_at', i.updated_at,
        'email', i.email) order by i.created_at)
      from auth.identities i where i.user_id = u.id), '[]'::jsonb),
    'created_at', u.created_at,
    'updated_at', u.updated_at,
    'banned_until', u.banned_until,
    'deleted_at', u.deleted_at,
    'is_anonymous', u.is_anonymous
  )) as e(k, v)
  where v <> 'null'::jsonb
$$;
alter function auth.oxibase_user_json_base(auth.users) owner to supabase_auth_admin;
revoke execute on function auth.oxibase_user_json_base(auth.users) from public;
grant execute on function auth.oxibase_user_json_base(auth.users) to supabase_auth_admin, service_role;
