//! Postgres Changes without extensions: one logical replication slot (pgoutput) per
//! process, created on the first postgres_changes subscription and streamed over the
//! replication protocol (`stream.rs`, driven by `slot.rs`); the binary protocol is decoded
//! here, each change is matched against the subscribers' bindings and filters, and RLS is
//! checked for all distinct subscribers in one round trip (`dispatch.rs`), as Supabase's
//! `apply_rls` does.

mod bindings;
mod dispatch;
mod pgoutput;
mod slot;
mod stream;
mod types;

pub use bindings::{binding_id, check_published, parse_binding, Filter, FilterOp, PgBinding};
pub use slot::{ensure_started, Capture};
