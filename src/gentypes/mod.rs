//! `oxibase gen types typescript`: the `Database` type `supabase gen types typescript`
//! prints, read from the catalog of the configured (or `--db-url`) database.

pub mod catalog;
pub mod cli;
mod functions;
mod helpers;
mod schema;
pub mod typescript;
mod viewdeps;

use tokio_postgres::NoTls;

pub use typescript::Options;

/// Connects to `db_url`, reads the catalog for `schemas` and renders the TypeScript.
pub async fn typescript_for_url(
    db_url: &str,
    schemas: &[String],
    opts: &Options,
) -> Result<String, String> {
    let (client, conn) = tokio_postgres::connect(db_url, NoTls).await.map_err(|e| {
        format!(
            "cannot connect to the database: {}",
            crate::db::error_text(&e)
        )
    })?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    // Names in `argument_types` and `format` are shown as the CLI's connection sees them.
    let result = async {
        client
            .batch_execute("set search_path = \"$user\", public")
            .await
            .map_err(|e| crate::db::error_text(&e))?;
        let cat = catalog::load(&client, schemas).await?;
        Ok(typescript::render(&cat, opts))
    }
    .await;
    drop(client);
    let _ = task.await;
    result
}
