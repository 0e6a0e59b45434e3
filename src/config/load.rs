//! Reading the configuration: the flags (`ServeArgs`), the file, the project's
//! `supabase/config.toml`, the environment, and the checks on the result.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::*;

/// Flags and their `OXIBASE_*` environment variables (clap gives flags precedence).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Config file (default: ./oxibase.toml when present).
    #[arg(long, env = "OXIBASE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Listen addresses, comma separated.
    #[arg(long, env = "OXIBASE_BIND", value_delimiter = ',', global = true)]
    pub bind: Option<Vec<String>>,
    /// API port.
    #[arg(long, env = "OXIBASE_PORT", global = true)]
    pub port: Option<u16>,
    /// Data directory.
    #[arg(long, env = "OXIBASE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// External database URL (no embedded PostgreSQL is started).
    #[arg(
        long,
        env = "OXIBASE_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Embedded PostgreSQL port.
    #[arg(long, env = "OXIBASE_DB_PORT", global = true)]
    pub db_port: Option<u16>,
    /// Directory with the PostgreSQL binaries.
    #[arg(long, env = "OXIBASE_PG_BIN_DIR", global = true)]
    pub pg_bin_dir: Option<PathBuf>,
    /// HS256 JWT secret.
    #[arg(
        long,
        env = "OXIBASE_JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// JWK file of extra trusted (and, if private, signing) keys.
    #[arg(long, env = "OXIBASE_JWT_KEYS_FILE", global = true)]
    pub jwt_keys_file: Option<PathBuf>,
    /// Object storage URL.
    #[arg(long, env = "OXIBASE_STORAGE_URL", global = true)]
    pub storage_url: Option<String>,
    /// Schemas exposed by /rest/v1, comma separated.
    #[arg(
        long,
        env = "OXIBASE_REST_SCHEMAS",
        value_delimiter = ',',
        global = true
    )]
    pub rest_schemas: Option<Vec<String>>,
    /// Log filter.
    #[arg(long, env = "OXIBASE_LOG", global = true)]
    pub log: Option<String>,
    /// Log lines as text or json.
    #[arg(long, value_enum, env = "OXIBASE_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// A Supabase project: the directory holding `supabase/` (or that folder itself).
    #[arg(long, env = "OXIBASE_PROJECT", global = true)]
    pub project: Option<PathBuf>,
    /// Serve this built static folder (an SPA) at `/` (OXIBASE_SERVER__STATIC_DIR).
    #[arg(long = "static", value_name = "DIR", global = true)]
    pub static_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Merge every layer. `default_file` is `./oxibase.toml`, read only when present.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let default = Path::new("oxibase.toml");
        let file = match &args.config {
            Some(path) => Some(path.as_path()),
            None => Some(default).filter(|p| p.exists()),
        };
        // A `supabase/` folder in the working directory is a project (as for the CLI).
        let here = crate::project::locate(Path::new("."));
        Self::from_layers_in(file, args, &|k| std::env::var(k).ok(), here.as_deref())
    }

    /// Defaults, then `file`, then the variables `var` finds, then `args` (flags and the
    /// variables clap reads), then the providers' variables; validated.
    pub fn from_layers(
        file: Option<&Path>,
        args: &ServeArgs,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_layers_in(file, args, var, None)
    }

    /// [`Config::from_layers`] with a Supabase project's config.toml as the lowest layer:
    /// the project named by the flag, the file or the environment, else `found`.
    pub fn from_layers_in(
        file: Option<&Path>,
        args: &ServeArgs,
        var: &dyn Fn(&str) -> Option<String>,
        found: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let (cfg, table) = match file {
            Some(path) => {
                let text = read_file(path)?;
                let cfg = Self::from_toml(&text).map_err(|message| ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                })?;
                // It parsed as a Config, so it parses as a table.
                (cfg, toml::from_str(&text).unwrap_or_default())
            }
            None => (Config::default(), toml::Table::new()),
        };
        let (mut cfg, table) = match project_layer(&table, args, var, found)? {
            Some(base) => {
                let merged = merge_tables(base, table);
                let cfg = toml::Value::Table(merged.clone())
                    .try_into::<Config>()
                    .map_err(|e| {
                        ConfigError::Invalid(format!(
                            "supabase/config.toml: {}",
                            e.message().trim()
                        ))
                    })?;
                (cfg, merged)
            }
            None => (cfg, table),
        };
        if let Some(with_env) = env::overlay(table, var)? {
            cfg = with_env;
        }
        cfg.apply(args);
        cfg.functions.apply_env(var);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_string())
    }

    /// Overlay the flag/env layer.
    pub fn apply(&mut self, a: &ServeArgs) {
        if let Some(v) = &a.bind {
            self.bind = v
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = a.port {
            self.port = v;
        }
        if let Some(v) = &a.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = a.database_url.as_ref().filter(|v| !v.is_empty()) {
            self.database_url = Some(Secret(v.clone()));
        }
        if let Some(v) = a.db_port {
            self.db_port = v;
        }
        if let Some(v) = &a.pg_bin_dir {
            self.pg_bin_dir = Some(v.clone());
        }
        // An empty variable (OXIBASE_JWT_SECRET=) counts as unset.
        if let Some(v) = a.jwt_secret.as_ref().filter(|v| !v.is_empty()) {
            self.jwt_secret = Secret(v.clone());
        }
        if let Some(v) = &a.jwt_keys_file {
            self.jwt_keys_file = Some(v.clone());
        }
        if let Some(v) = &a.storage_url {
            self.storage.url = Some(v.clone());
        }
        if let Some(v) = &a.rest_schemas {
            self.rest.schemas = v.iter().map(|s| s.trim().to_string()).collect();
        }
        if let Some(v) = &a.log {
            self.log = v.clone();
        }
        if let Some(v) = a.log_format {
            self.log_format = v;
        }
        if let Some(v) = &a.static_dir {
            self.server.static_dir = Some(v.clone());
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(d) = self.server.static_dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(ConfigError::Invalid(format!(
                "server.static_dir: '{}' is not a directory",
                d.display()
            )));
        }
        if self.bind.is_empty() {
            return Err(ConfigError::Invalid(
                "bind: at least one address is needed".into(),
            ));
        }
        for b in &self.bind {
            let ip: IpAddr = b
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("bind: '{b}' is not an IP address")))?;
            if !ip.is_loopback() && self.jwt_secret.expose() == DEFAULT_JWT_SECRET {
                return Err(ConfigError::Invalid(format!(
                    "refusing to listen on {b}: the JWT secret is the Supabase CLI's well-known \
                     local secret, so anyone could mint service_role tokens. Set \
                     OXIBASE_JWT_SECRET (32+ characters) or bind a loopback address."
                )));
            }
        }
        if self.jwt_secret.expose().len() < 32 {
            return Err(ConfigError::Invalid(
                "jwt_secret must be at least 32 characters".into(),
            ));
        }
        if self.rest.schemas.is_empty() {
            return Err(ConfigError::Invalid(
                "rest.schemas: at least one schema is needed".into(),
            ));
        }
        self.functions.validate()?;
        crate::backup::validate(&self.backup).map_err(ConfigError::Invalid)?;
        if self.db_pool_size == 0 {
            return Err(ConfigError::Invalid(
                "db_pool_size must be at least 1".into(),
            ));
        }
        if self.http.header_timeout_secs == 0 || self.http.keepalive_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "http: header_timeout_secs and keepalive_timeout_secs must be at least 1".into(),
            ));
        }
        if self.db_pool_wait_timeout_ms == 0 || self.db_pool_create_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "db_pool_wait_timeout_ms and db_pool_create_timeout_ms must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether requests must bring an API key (see `require_apikey`).
    pub fn apikey_required(&self) -> bool {
        self.require_apikey
            .unwrap_or(self.jwt_secret.expose() != DEFAULT_JWT_SECRET)
    }

    pub fn external_url(&self) -> String {
        self.api_external_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", self.port))
            .trim_end_matches('/')
            .to_string()
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir.join("storage")
    }

    /// The effective configuration as TOML, secrets ([`Secret`]) shown as `***`.
    pub fn dump(&self) -> String {
        let v = serde_json::to_value(self).expect("config serializes");
        let t = json_to_toml(&v).expect("object");
        toml::to_string_pretty(&t).expect("toml")
    }

    /// Every key path (`rest.max_rows`), for keeping config.example.toml in step.
    pub fn key_paths() -> Vec<String> {
        let v = serde_json::to_value(Config::default()).expect("config serializes");
        let mut out = vec![];
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            if let serde_json::Value::Object(m) = v {
                for (k, v) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if v.is_object() {
                        walk(&p, v, out);
                    } else {
                        out.push(p);
                    }
                }
            }
        }
        walk("", &v, &mut out);
        out
    }
}

/// The project's settings table (see `project`): the flag, then the file's `project`
/// key, then `OXIBASE_PROJECT`, then `found`. None without a project.
fn project_layer(
    file: &toml::Table,
    args: &ServeArgs,
    var: &dyn Fn(&str) -> Option<String>,
    found: Option<&Path>,
) -> Result<Option<toml::Table>, ConfigError> {
    let named = args
        .project
        .clone()
        .or_else(|| {
            file.get("project")
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        })
        .or_else(|| {
            var("OXIBASE_PROJECT")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
    let dir = match named {
        Some(d) => Some(crate::project::locate(&d).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "project: {} has no supabase/ folder (config.toml or migrations/)",
                d.display()
            ))
        })?),
        None => found.map(Path::to_path_buf),
    };
    let Some(dir) = dir else { return Ok(None) };
    crate::project::settings_layer(&dir, var)
        .map(|(t, _notes)| Some(t))
        .map_err(ConfigError::Invalid)
}

/// `over`'s keys replace `base`'s, section by section.
fn merge_tables(mut base: toml::Table, over: toml::Table) -> toml::Table {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                *b = merge_tables(std::mem::take(b), o);
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        J::Object(m) => {
            let mut t = toml::map::Map::new();
            for (k, v) in m {
                if let Some(tv) = json_to_toml(v) {
                    t.insert(k.clone(), tv);
                }
            }
            toml::Value::Table(t)
        }
    })
}
