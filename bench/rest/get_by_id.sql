\set id random(1, 10000)
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
select set_config('role', 'anon', true), set_config('request.jwt.claims', '{"role":"anon"}', true), set_config('request.jwt.claim.sub', '', true), set_config('request.jwt.claim.role', 'anon', true), set_config('request.method', 'GET', true), set_config('request.path', '/bench_books', true), set_config('request.headers', '{}', true), set_config('search_path', '"public", "extensions"', true), set_config('statement_timeout', '8000', true);
SELECT NULL::int8 AS total, pg_catalog.count(pgrst_t) AS page, coalesce(json_agg(pgrst_t), '[]')::text AS body, NULL::text AS location FROM (SELECT "bench_books".* FROM "public"."bench_books" AS "bench_books" WHERE "bench_books"."id" = :id) AS pgrst_t;
COMMIT;
