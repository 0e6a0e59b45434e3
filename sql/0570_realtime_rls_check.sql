-- postgres_changes under RLS: one round trip per change for every distinct subscriber.
--
-- For each (role, claims) pair, in order, the function becomes that role with those claims
-- (as a request would: role, request.jwt.claims, request.jwt.claim.sub/role) and asks whether
-- the row with the given key is visible. Each check runs in its own subtransaction, so one
-- subscriber's failing policy answers false for that subscriber only and never aborts the
-- others' checks. The whole call is read-only, and every setting it makes is local to the
-- calling transaction (a single statement in autocommit mode), so nothing outlives it.
--
-- Only the server calls it: it can switch to any role the connecting user may become, so
-- nobody else may execute it.
create or replace function realtime.oxibase_rows_visible(
  rel regclass,
  key_cols text[],
  key_types text[],
  key_vals text[],
  roles text[],
  claims text[],
  request_method text,
  request_path text
) returns boolean[]
language plpgsql volatile
set search_path = ''
as $$
declare
  caller_role text := current_setting('role');
  caller_claims text := current_setting('request.jwt.claims', true);
  cond text;
  q text;
  ok boolean;
  out boolean[] := '{}';
begin
  perform set_config('transaction_read_only', 'on', true);
  if coalesce(array_length(key_cols, 1), 0) = 0
     or array_length(key_cols, 1) <> array_length(key_types, 1)
     or array_length(key_cols, 1) <> array_length(key_vals, 1)
     or coalesce(array_length(roles, 1), 0) <> coalesce(array_length(claims, 1), 0) then
    raise exception 'oxibase_rows_visible: mismatched arguments';
  end if;
  -- Types go through regtype, names through %I: nothing of the arguments reaches the SQL
  -- text unquoted.
  select string_agg(format('%I = $1[%s]::%s', key_cols[k], k, key_types[k]::regtype), ' and ')
    into cond
    from generate_subscripts(key_cols, 1) k;
  q := format('select exists(select 1 from %s where %s)', rel, cond);
  perform set_config('request.method', request_method, true);
  perform set_config('request.path', request_path, true);
  for i in 1 .. coalesce(array_length(roles, 1), 0) loop
    begin
      perform set_config('role', roles[i], true);
      perform set_config('request.jwt.claims', claims[i], true);
      perform set_config('request.jwt.claim.sub', coalesce(claims[i]::jsonb ->> 'sub', ''), true);
      perform set_config('request.jwt.claim.role', roles[i], true);
      execute q into ok using key_vals;
    exception when others then
      ok := false;
    end;
    out := out || coalesce(ok, false);
    ok := null;
  end loop;
  -- Back to the caller's role and claims for whatever the statement does next.
  perform set_config('role', caller_role, true);
  perform set_config('request.jwt.claims', coalesce(caller_claims, ''), true);
  return out;
end
$$;

revoke all on function realtime.oxibase_rows_visible(regclass, text[], text[], text[], text[], text[], text, text) from public;
grant usage on schema realtime to authenticator;
grant execute on function realtime.oxibase_rows_visible(regclass, text[], text[], text[], text[], text[], text, text) to authenticator;
