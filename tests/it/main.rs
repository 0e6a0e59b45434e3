//! All integration tests in one crate: one link instead of one per file, and one shared
//! embedded PostgreSQL (see common/) for every test. Each file is a module named after it,
//! so `cargo test --test it fault_pg::` runs one file.

mod auth_flow;
mod backup;
mod cli_project;
mod common;
mod dashboard;
mod dashboard_edit;
mod db_wire;
mod fault_flood;
mod fault_kill;
mod fault_pg;
mod functions_chat;
mod functions_code;
mod functions_upload;
mod functions_ws;
mod gentypes;
mod hardening_auth;
mod import;
mod logs_json;
mod metrics;
mod pg_net;
mod project_folder;
mod realtime_overflow;
mod realtime_stream;
mod realtime_ws;
mod rest_basic;
mod scaleout;
mod spine;
mod static_files;
mod storage_api;
mod storage_coercion;
mod storage_hardening;
mod token_attacks;
