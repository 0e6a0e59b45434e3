//! The dashboard's own database connection: the superuser's (as Supabase Studio works as
//! `postgres`), opened per request (a dashboard is not a hot path) and closed after.

use tokio_postgres::{Client, NoTls};

use crate::state::AppState;

/// The superuser URL: the external one, or the embedded cluster's.
fn admin_url(state: &AppState) -> String {
    match &state.config.database_url {
        Some(u) => u.expose().clone(),
        None => crate::display_db_url(&state.config),
    }
}

pub async fn connect(state: &AppState) -> Result<Client, String> {
    let (client, conn) = tokio_postgres::connect(&admin_url(state), NoTls)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to the database: {}",
                crate::db::error_text(&e)
            )
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "dashboard connection closed");
        }
    });
    client
        .batch_execute("set statement_timeout = '60s'; set application_name = 'oxibase dashboard'")
        .await
        .map_err(|e| crate::db::error_text(&e))?;
    Ok(client)
}

/// A database error for the dashboard user: message, detail, hint.
pub fn err(e: &tokio_postgres::Error) -> String {
    crate::db::error_text(e)
}

pub use crate::db::quote_ident as ident;

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}
