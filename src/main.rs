//! Thin entry point: parse the command line, set up logging, hand over to the library.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use oxibase::cli::{keys_text, Cli, Command};
use oxibase::{Config, Server};

fn main() -> ExitCode {
    // A code-execution sandbox child: nothing else (no config, no logging, no runtime).
    if std::env::args_os().nth(1).as_deref()
        == Some(oxibase::functions::code::sandbox::SUBCOMMAND.as_ref())
    {
        oxibase::functions::code::sandbox::child_main();
    }
    let cli = Cli::parse();
    // Run by PostgreSQL's archiver and recovery: no config file, no logging set-up.
    match &cli.command {
        Some(Command::WalPush(a)) => return oxibase::backup::cli::wal_push(a),
        Some(Command::WalFetch(a)) => return oxibase::backup::cli::wal_fetch(a),
        _ => {}
    }
    let cfg = match Config::load(&cli.args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("oxibase: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        oxibase::config::LogFormat::Json => logs.json().flatten_event(true).init(),
        oxibase::config::LogFormat::Text => logs.init(),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command.unwrap_or(Command::Serve) {
        Command::Keys => {
            print!("{}", keys_text(&cfg, &cfg.external_url()));
            ExitCode::SUCCESS
        }
        Command::Config { .. } => {
            print!("{}", cfg.dump());
            ExitCode::SUCCESS
        }
        Command::Migrate => rt.block_on(migrate(cfg)),
        Command::Gen {
            what: oxibase::cli::GenCommand::Types { lang },
        } => rt.block_on(oxibase::gentypes::cli::run(cfg, lang, progress())),
        Command::Db(c) => rt.block_on(project_cli::db(cfg, c)),
        Command::Migration(c) => rt.block_on(project_cli::migration(cfg, c)),
        Command::Import(a) => {
            rt.block_on(async { project_cli::done(oxibase::project::import::run(cfg, &a).await) })
        }
        Command::Status => {
            let keys = keys_text(&cfg, &cfg.external_url());
            print!(
                "{}",
                rt.block_on(oxibase::project::commands::status(&cfg, &keys))
            );
            ExitCode::SUCCESS
        }
        Command::Backup(a) => rt.block_on(oxibase::backup::cli::backup(cfg, a)),
        Command::Restore(a) => rt.block_on(oxibase::backup::cli::restore(cfg, a)),
        Command::WalPush(_) | Command::WalFetch(_) => ExitCode::FAILURE, // handled above
        Command::Serve => rt.block_on(serve(cfg)),
    }
}

/// `db` and `migration`: the CLI's local workflow (oxibase::project::commands).
mod project_cli {
    use super::*;
    use oxibase::project::commands::{self as c, DbCommand, MigrationCommand};

    pub fn done(r: Result<String, String>) -> ExitCode {
        match r {
            Ok(s) => {
                if !s.is_empty() {
                    eprintln!("{s}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("oxibase: {e}");
                ExitCode::FAILURE
            }
        }
    }

    pub async fn db(cfg: Config, cmd: DbCommand) -> ExitCode {
        match cmd {
            DbCommand::Dump(a) => done(c::dump(&cfg, &a).await),
            DbCommand::Reset => match c::reset_files(&cfg).await {
                Ok(said) => {
                    said.iter().for_each(|l| eprintln!("{l}"));
                    eprintln!("Resetting local database...");
                    let code = migrate(cfg).await;
                    if code == ExitCode::SUCCESS {
                        eprintln!("Finished oxibase db reset.");
                    }
                    code
                }
                Err(e) => done(Err(e)),
            },
        }
    }

    pub async fn migration(cfg: Config, cmd: MigrationCommand) -> ExitCode {
        match cmd {
            MigrationCommand::New { name } => done(c::migration_new(&cfg, &name)),
            MigrationCommand::List => match c::migration_list(&cfg).await {
                Ok(t) => {
                    print!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => done(Err(e)),
            },
            MigrationCommand::Up => done(c::migration_up(&cfg).await),
        }
    }
}

fn progress() -> oxibase::Progress {
    Arc::new(|line: &str| eprintln!("{line}"))
}

async fn migrate(mut cfg: Config) -> ExitCode {
    // Start the database and apply migrations without serving: bind nothing public.
    cfg.port = 0;
    cfg.bind = vec!["127.0.0.1".into()];
    match Server::start(cfg, progress()).await {
        Ok(s) => {
            eprintln!("Migrations are up to date.");
            s.shutdown().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("oxibase: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: Config) -> ExitCode {
    let server = match Server::start(cfg.clone(), progress()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("oxibase: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listening: Vec<String> = server.addrs.iter().map(|a| a.to_string()).collect();
    tracing::info!(addrs = %listening.join(", "), "listening");
    let mut shown = cfg.clone();
    shown.port = server.port();
    println!(
        "oxibase is running.\n\n{}",
        keys_text(&shown, &shown.external_url())
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
