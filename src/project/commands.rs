//! The Supabase CLI's local workflow: `db reset`, `migration new/list/up`, `db dump`, `status`.
