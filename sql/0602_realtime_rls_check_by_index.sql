-- realtime.oxibase_rows_visible_many (0571), same arguments and answers, now reads each row
-- through the primary key. Its key comparisons cast the text values inside the table's scan;
-- under RLS such a comparison waits for the policy's filter, so every check scanned the
-- subscriber's visible rows (a hashed scan, or one per row) instead of probing the primary
-- key: the cost grew with the table, and the estimate woke the JIT compiler (~12 ms a call).
-- Now the values are cast apart and the JIT is off for the function. (Replacing the function
-- keeps its grants.)

create or replace function realtime.oxibase_rows_visible_many(
  rel regclass,
  key_cols text[],
  key_types text[],
  key_vals text[],
  roles text[],
  claims text[],
  request_method text,
  request_path text,
  xids bigint[]
) returns boolean[]
language plpgsql volatile
set search_path = ''
set jit = off
as $$
declare
  caller_role text := current_setting('role');
  caller_claims text := current_setting('request.jwt.claims', true);
  nkeys int := coalesce(array_length(key_cols, 1), 0);
  nrows int;
  cond text;
  cols text;
  q text;
  seen boolean[];
  out boolean[] := '{}';
  xmax bigint;
  x bigint;
  full_xid bigint;
  waits int := 0;
begin
  perform set_config('transaction_read_only', 'on', true);
  if nkeys = 0
     or nkeys <> coalesce(array_length(key_types, 1), 0)
     or coalesce(array_length(key_vals, 1), 0) % nkeys <> 0
     or coalesce(array_length(roles, 1), 0) <> coalesce(array_length(claims, 1), 0) then
    raise exception 'oxibase_rows_visible_many: mismatched arguments';
  end if;
  nrows := coalesce(array_length(key_vals, 1), 0) / nkeys;
  if nrows = 0 then
    return out;
  end if;
  xmax := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
  foreach x in array coalesce(xids, '{}') loop
    -- The epoch is the current one unless that puts the xid far in the future (then it
    -- is of the previous epoch). An xid just at or above xmax is of this epoch: xmax is
    -- one past the latest *completed* xid, and a transaction whose commit has streamed
    -- may not have completed yet, which is exactly the case to wait for.
    full_xid := ((xmax >> 32) << 32) | x;
    if full_xid - xmax > 2147483648 then
      full_xid := full_xid - 4294967296;
    end if;
    -- Visible to a fresh snapshot (each evaluation takes one): the commit has left the
    -- running set (pg_xact_status says committed earlier, from the commit log).
    while full_xid > 0 and waits < 2000
          and not pg_visible_in_snapshot(full_xid::text::xid8, pg_current_snapshot()) loop
      perform pg_sleep(0.0005);
      waits := waits + 1;
    end loop;
  end loop;
  -- Types go through regtype, names through %I: nothing of the arguments reaches the SQL
  -- text unquoted. The key values are cast in a subquery of their own (offset 0 keeps it
  -- apart): a cast may fail, so it is not leakproof, and inside the table's scan it would
  -- have to wait for the RLS policy's filter, leaving no index usable; as the subquery's
  -- columns the comparisons are index conditions.
  select string_agg(format('$1[(r - 1) * %s + %s]::%s as k%s', nkeys, k,
                           key_types[k]::regtype, k), ', '),
         string_agg(format('t.%I = k.k%s', key_cols[k], k), ' and ')
    into cols, cond
    from generate_subscripts(key_cols, 1) k;
  q := format('select array_agg(exists(select 1 from %s t where %s) order by k.r)
                 from (select r, %s from generate_series(1, %s) r offset 0) k',
              rel, cond, cols, nrows);
  perform set_config('request.method', request_method, true);
  perform set_config('request.path', request_path, true);
  for i in 1 .. coalesce(array_length(roles, 1), 0) loop
    begin
      perform set_config('role', roles[i], true);
      perform set_config('request.jwt.claims', claims[i], true);
      perform set_config('request.jwt.claim.sub', coalesce(claims[i]::jsonb ->> 'sub', ''), true);
      perform set_config('request.jwt.claim.role', roles[i], true);
      execute q into seen using key_vals;
    exception when others then
      seen := null;
    end;
    for r in 1 .. nrows loop
      out := out || coalesce(seen[r], false);
    end loop;
    seen := null;
  end loop;
  perform set_config('role', caller_role, true);
  perform set_config('request.jwt.claims', coalesce(caller_claims, ''), true);
  return out;
end
$$;
