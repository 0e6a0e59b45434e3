-- MFA factors and challenges in GoTrue's shape (TOTP verified here; WebAuthn factors can
-- be enrolled and removed), and the User JSON gains `factors` (auth-js reads them).

create table if not exists auth.mfa_factors (
  id uuid primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  friendly_name text,
  factor_type text not null check (factor_type in ('totp', 'webauthn', 'phone')),
  status text not null check (status in ('unverified', 'verified')),
  created_at timestamptz not null,
  updated_at timestamptz not null,
  secret text,
  phone text,
  last_challenged_at timestamptz unique,
  web_authn_credential jsonb,
  web_authn_aaguid uuid
);
create index if not exists factor_id_created_at_idx on auth.mfa_factors (user_id, created_at);
create unique index if not exists mfa_factors_user_friendly_name_unique
  on auth.mfa_factors (friendly_name, user_id) where trim(friendly_name) <> '';

create table if not exists auth.mfa_challenges (
  id uuid primary key,
  factor_id uuid not null references auth.mfa_factors (id) on delete cascade,
  created_at timestamptz not null,
  verified_at timestamptz,
  ip_address inet not null,
  otp_code text,
  web_authn_session_data jsonb
);
create index if not exists mfa_challenge_created_at_idx on auth.mfa_challenges (created_at desc);

alter table auth.mfa_factors owner to supabase_auth_admin;
alter table auth.mfa_challenges owner to supabase_auth_admin;
grant all on auth.mfa_factors, auth.mfa_challenges to dashboard_user, postgres;

create or replace function auth.oxibase_factor_json(f auth.mfa_factors) returns jsonb
language sql stable as $$
  select coalesce(jsonb_object_agg(k, v), '{}'::jsonb) from jsonb_each(jsonb_build_object(
    'id', f.id,
    'friendly_name', coalesce(f.friendly_name, ''),
    'factor_type', f.factor_type,
    'status', f.status,
    'created_at', f.created_at,
    'updated_at', f.updated_at,
    'last_challenged_at', f.last_challenged_at,
    'phone', f.phone
  )) as e(k, v)
  where v <> 'null'::jsonb
$$;
alter function auth.oxibase_factor_json(auth.mfa_factors) owner to supabase_auth_admin;
revoke execute on function auth.oxibase_factor_json(auth.mfa_factors) from public;
grant execute on function auth.oxibase_factor_json(auth.mfa_factors) to supabase_auth_admin, service_role;

create or replace function auth.oxibase_user_json(u auth.users) returns jsonb
language sql stable as $$
  select auth.oxibase_user_json_base(u) || (
    select case when count(*) = 0 then '{}'::jsonb
           else jsonb_build_object('factors', jsonb_agg(auth.oxibase_factor_json(f) order by f.created_at)) end
    from auth.mfa_factors f where f.user_id = u.id)
$$;
alter function auth.oxibase_user_json(auth.users) owner to supabase_auth_admin;
revoke execute on function auth.oxibase_user_json(auth.users) from public;
grant execute on function auth.oxibase_user_json(auth.users) to supabase_auth_admin, service_role;
