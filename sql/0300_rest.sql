-- /rest/v1: settings of the login role that PostgREST-on-Supabase has.
-- EXPLAIN VERBOSE shows "Query Identifier" (Supabase computes query ids for
-- pg_stat_statements); only a superuser may set this, so it is set on the role here.
alter role authenticator set compute_query_id = on;
