-- Broadcast from the database, as Supabase offers it: realtime.send() and
-- realtime.broadcast_changes() insert into realtime.messages; every committed broadcast row
-- is announced on the fan-out channel and each oxibase process delivers it to its
-- subscribers of that topic (public or private, as the row says).

create index if not exists messages_topic_inserted_at_idx
  on realtime.messages (topic, inserted_at desc);

create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void language plpgsql as $$
declare
  generated_id uuid;
  final_payload jsonb;
begin
  begin
    generated_id := gen_random_uuid();
    if payload ? 'id' then
      final_payload := payload;
    else
      final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    end if;
    perform set_config('realtime.topic', topic, true);
    insert into realtime.messages (id, payload, event, topic, private, extension)
    values (generated_id, final_payload, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
  end;
end $$;

create or replace function realtime.broadcast_changes(
  topic_name text, event_name text, operation text, table_name text, table_schema text,
  new record, old record, level text default 'ROW')
returns void language plpgsql as $$
declare
  row_data jsonb := '{}'::jsonb;
begin
  if level = 'STATEMENT' then
    raise exception 'function can only be triggered for each row, not for each statement';
  end if;
  if operation in ('INSERT', 'UPDATE', 'DELETE') then
    row_data := jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                                   'table', table_name, 'schema', table_schema);
    perform realtime.send(row_data, event_name, topic_name);
  else
    raise exception 'Unexpected operation type: %', operation;
  end if;
exception when others then
  raise exception 'Failed to process the row: %', sqlerrm;
end $$;

grant execute on function realtime.send(jsonb, text, text, boolean) to anon, authenticated, service_role;
grant execute on function realtime.broadcast_changes(text, text, text, text, text, record, record, text)
  to anon, authenticated, service_role;

-- Only the id travels in the notification (delivered at commit); the processes read the row.
create or replace function realtime.oxibase_announce_message() returns trigger
language plpgsql as $$
begin
  perform pg_notify('oxibase_realtime', json_build_object('o', 'db', 'm', new.id)::text);
  return null;
end $$;

drop trigger if exists oxibase_announce on realtime.messages;
create trigger oxibase_announce after insert on realtime.messages
  for each row when (new.extension = 'broadcast' and new.payload is not null)
  execute function realtime.oxibase_announce_message();
