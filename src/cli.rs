//! The command line: `oxibase [serve]`, `keys`, `migrate`, `config --dump`.

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::{Config, ServeArgs, DEFAULT_JWT_SECRET};
use crate::identity::OpaqueKeys;
use crate::jwt::JwtKeys;

#[derive(Debug, Parser)]
#[command(
    name = "oxibase",
    version,
    about = "One binary that serves the Supabase APIs on a real PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub args: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (the default).
    Serve,
    /// Print the API URL, the anon and service_role keys and the database URL.
    Keys,
    /// Apply the SQL migrations and exit.
    Migrate,
    /// Show the effective configuration.
    Config {
        /// Print every setting as TOML (secrets as ***).
        #[arg(long)]
        dump: bool,
    },
    /// The local database, as `supabase db`: reset, dump.
    #[command(subcommand)]
    Db(crate::project::commands::DbCommand),
    /// The project's migrations, as `supabase migration`: new, list, up.
    #[command(subcommand)]
    Migration(crate::project::commands::MigrationCommand),
    /// Whether the server runs, the project, URLs and keys (as `supabase status`).
    Status,
    /// Move a project off Supabase: restore `supabase db dump` files and copy the objects.
    Import(crate::project::import::ImportArgs),
    /// Back up now: the database (pg_basebackup) and the stored objects, to `[backup] target`
    /// or --to (`--list` shows the backups there).
    Backup(crate::backup::cli::BackupArgs),
    /// Restore a backup, to a time or the latest archived change, into a fresh --data-dir.
    Restore(crate::backup::cli::RestoreArgs),
    /// PostgreSQL's archive_command when backups are on (internal).
    #[command(hide = true)]
    WalPush(crate::backup::cli::WalPushArgs),
    /// PostgreSQL's restore_command during a restore (internal).
    #[command(hide = true)]
    WalFetch(crate::backup::cli::WalFetchArgs),
    /// Generate types from the database schema (like `supabase gen types`).
    Gen {
        #[command(subcommand)]
        what: GenCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Generate types: `oxibase gen types typescript [--schema S]... [--db-url URL]`.
    Types {
        #[command(subcommand)]
        lang: crate::gentypes::cli::Lang,
    },
}

pub const WELL_KNOWN_ANON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";
pub const WELL_KNOWN_SERVICE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

/// The anon and service_role API keys for the configured secret (the CLI's well-known
/// ones for the default secret).
pub fn api_keys(cfg: &Config) -> (String, String) {
    let secret = cfg.jwt_secret.expose();
    if secret == DEFAULT_JWT_SECRET {
        return (WELL_KNOWN_ANON.into(), WELL_KNOWN_SERVICE.into());
    }
    let k = JwtKeys::new(secret);
    let key = |role: &str| {
        k.sign_hs256(&json!({"iss": "supabase-demo", "role": role, "exp": 1983812996}))
    };
    (key("anon"), key("service_role"))
}

/// The block `oxibase` and `oxibase keys` print, like `supabase status`.
pub fn keys_text(cfg: &Config, api_url: &str) -> String {
    let (anon, service) = api_keys(cfg);
    let opaque = OpaqueKeys::for_secret(cfg.jwt_secret.expose());
    // The built-in dashboard (src/dashboard): with a password of its own off loopback.
    let dashboard = match (&cfg.dashboard.enabled, &cfg.dashboard.password) {
        (false, _) => "(disabled)".to_string(),
        (true, Some(_)) => format!("{api_url}/_/ (sign in with [dashboard] password)"),
        (true, None) => format!("{api_url}/_/"),
    };
    format!(
        "         API URL: {api_url}\n   Dashboard URL: {dashboard}\n     GraphQL URL: (not served)\n          DB URL: {}\n      JWT secret: {}\n        anon key: {anon}\nservice_role key: {service}\n Publishable key: {}\n      Secret key: {}\n",
        crate::display_db_url(cfg),
        if secret_is_default(cfg) { DEFAULT_JWT_SECRET } else { "(configured; not shown)" },
        opaque.publishable,
        opaque.secret,
    )
}

fn secret_is_default(cfg: &Config) -> bool {
    cfg.jwt_secret.expose() == DEFAULT_JWT_SECRET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keys_are_the_well_known_ones_and_verify() {
        let cfg = Config::default();
        let (a, s) = api_keys(&cfg);
        assert_eq!(a, WELL_KNOWN_ANON);
        let k = JwtKeys::new(DEFAULT_JWT_SECRET);
        assert_eq!(k.verify(&s).unwrap()["role"], "service_role");
        let text = keys_text(&cfg, "http://127.0.0.1:54321");
        assert!(text.contains(WELL_KNOWN_ANON));
        assert!(text.contains("Dashboard URL: http://127.0.0.1:54321/_/\n"));
    }

    #[test]
    fn custom_secret_keys_verify_with_it() {
        let cfg = Config {
            jwt_secret: crate::config::Secret("q".repeat(40)),
            ..Config::default()
        };
        let (a, _) = api_keys(&cfg);
        assert_eq!(
            JwtKeys::new(&"q".repeat(40)).verify(&a).unwrap()["role"],
            "anon"
        );
        assert!(!keys_text(&cfg, "x").contains(&"q".repeat(40)));
    }
}
