//! Postgres Changes without extensions: one temporary logical replication slot (pgoutput)
//! per process, created on the first postgres_changes subscription and polled with
//! `pg_logical_slot_get_binary_changes`; the binary protocol is decoded here, each change is
//! matched against the subscribers' bindings and filters, and RLS is checked by reading the
//! row back as the subscriber (through `begin_as`), as Supabase's `apply_rls` does.

mod bindings;
mod dispatch;
mod pgoutput;
mod slot;
mod types;

pub use bindings::{binding_id, check_published, parse_binding, Filter, FilterOp, PgBinding};
pub use slot::{ensure_started, Capture};
