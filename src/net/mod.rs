//! pg_net natively (see worker.rs).
