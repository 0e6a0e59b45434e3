//! The `gen types` subcommand: flags as the Supabase CLI has them where they mean
//! something here (`--schema` repeatable, `--db-url`, `--postgrest-v9-compat`).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{typescript_for_url, Options};
use crate::{Config, Progress, Server};

#[derive(Debug, Subcommand)]
pub enum Lang {
    /// TypeScript `Database` type for `createClient<Database>()`, printed to stdout.
    Typescript(TypesArgs),
}

#[derive(Debug, Args)]
pub struct TypesArgs {
    /// Schema to include (repeatable, or comma-separated); default `public`.
    #[arg(long = "schema", short = 's', value_delimiter = ',')]
    pub schema: Vec<String>,
    /// Read this database instead of the embedded one.
    #[arg(long)]
    pub db_url: Option<String>,
    /// Leave out `isOneToOne` in relationships (for PostgREST v9 clients).
    #[arg(long)]
    pub postgrest_v9_compat: bool,
    /// Add `__InternalSupabase: { PostgrestVersion }` as the hosted generator does.
    #[arg(long)]
    pub postgrest_version: Option<String>,
}

pub async fn run(mut cfg: Config, lang: Lang, progress: Progress) -> ExitCode {
    let Lang::Typescript(args) = lang;
    let schemas = if args.schema.is_empty() {
        vec!["public".to_string()]
    } else {
        args.schema.clone()
    };
    let opts = Options {
        detect_one_to_one: !args.postgrest_v9_compat,
        postgrest_version: args.postgrest_version.clone(),
    };
    let (url, server) = match &args.db_url {
        Some(u) => (u.clone(), None),
        None => {
            // The embedded database, started without serving anything public.
            cfg.port = 0;
            cfg.bind = vec!["127.0.0.1".into()];
            match Server::start(cfg, progress).await {
                Ok(s) => (s.db_url.clone(), Some(s)),
                Err(e) => {
                    eprintln!("oxibase: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let out = typescript_for_url(&url, &schemas, &opts).await;
    if let Some(s) = server {
        s.shutdown().await;
    }
    match out {
        Ok(ts) => {
            print!("{ts}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxibase: {e}");
            ExitCode::FAILURE
        }
    }
}
