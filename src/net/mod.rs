//! pg_net natively: the `net` schema (sql/0600_pg_net.sql) queues HTTP requests; this
//! worker, woken by `NOTIFY oxibase_net` (and a slow poll for anything queued while it
//! was away), takes them off the queue, runs them with bounded concurrency and stores each
//! answer in `net._http_response` as pg_net does (status, headers, content, or a timeout /
//! error message), deleting responses older than the TTL.

mod http;
mod worker;

pub use worker::spawn_background;
