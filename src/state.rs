//! Everything a handler needs, built once at start and shared (no globals).

use std::ops::Deref;
use std::sync::Arc;

use deadpool_postgres::Pool;

use crate::config::Config;
use crate::identity::KeyRing;

pub struct Inner {
    pub config: Config,
    /// Request connections (the `authenticator` role, switching per transaction).
    pub pool: Pool,
    /// How the pool connects (same role): for dedicated LISTEN connections, so nothing
    /// but migrations uses the superuser.
    pub db_config: tokio_postgres::Config,
    /// Lean connections for the REST hot path (one Sync per request), when the database
    /// is reachable over plain TCP; `None` otherwise (REST then uses `pool`).
    pub wire: Option<crate::db::wire::Pool>,
    pub keys: KeyRing,
    pub rest: crate::rest::State,
    pub auth: crate::auth::State,
    pub storage: crate::storage::State,
    pub realtime: crate::realtime::State,
    pub functions: crate::functions::State,
    /// Prometheus series of this process (`/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The built-in dashboard's sessions, request ring and samples.
    pub dashboard: crate::dashboard::State,
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
