-- realtime.oxibase_rows_visible (0570) checked one change at a time; the server calls only
-- the batched realtime.oxibase_rows_visible_many (0571) now, so the older one goes.
drop function if exists realtime.oxibase_rows_visible(regclass, text[], text[], text[], text[], text[], text, text);
