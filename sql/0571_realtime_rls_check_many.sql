-- postgres_changes under RLS, batched: one round trip for several changes of one table and
-- every distinct subscriber. Same rules as oxibase_rows_visible (0570): for each (role,
-- claims) pair the function becomes that role with those claims, in a subtransaction of its
-- own (a failing policy answers false for that subscriber's rows only), read-only, every
-- setting local to the calling statement's transaction.
--
-- A commit reaches the replication stream a moment before other sessions can see it (the
-- WAL is flushed before the transaction leaves the running set), so the function first
-- waits, briefly, until the transactions `xids` (32-bit, as pgoutput sends them) are
-- visible to new snapshots: otherwise a fresh row could read as invisible to everyone.
--
-- key_vals holds the key values row after row: key_vals[(r - 1) * keys + k] is the value of
-- key column k of row r.
-- The answer is subscriber-major: answer[(i - 1) * rows + r] says whether subscriber i may
-- see row r.
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
as $$
declare
  caller_role text := current_setting('role');
  caller_claims text := current_setting('request.jwt.claims', true);
  nkeys int := coalesce(array_length(key_cols, 1), 0);
  nrows int;
  cond text;
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
  -- text unquoted.
  select string_agg(format('t.%I = $1[(r - 1) * %s + %s]::%s', key_cols[k], nkeys, k,
                           key_types[k]::regtype), ' and ')
    into cond
    from generate_subscripts(key_cols, 1) k;
  q := format('select array_agg(exists(select 1 from %s t where %s) order by r)
                 from generate_series(1, %s) r', rel, cond, nrows);
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

revoke all on function realtime.oxibase_rows_visible_many(regclass, text[], text[], text[], text[], text[], text, text, bigint[]) from public;
grant execute on function realtime.oxibase_rows_visible_many(regclass, text[], text[], text[], text[], text[], text, text, bigint[]) to authenticator;
