\set id random(1, 10000)
START TRANSACTION READ ONLY;
select set_config('role', :role, true), set_config('request.jwt.claims', :claims, true), set_config('request.jwt.claim.sub', '', true), set_config('request.jwt.claim.role', :role, true), set_config('request.method', :method, true), set_config('request.path', :path, true), set_config('request.headers', :headers, true), case when :search_path = '' then '' else set_config('search_path', :search_path, true) end, case when :timeout = '' then '' else set_config('statement_timeout', :timeout, true) end;
SELECT NULL::int8 AS total, pg_catalog.count(pgrst_t) AS page, coalesce(json_agg(pgrst_t), '[]')::text AS body, NULL::text AS location FROM (SELECT "bench_books".* FROM "public"."bench_books" AS "bench_books" WHERE "bench_books"."id" = :id) AS pgrst_t;
COMMIT;
