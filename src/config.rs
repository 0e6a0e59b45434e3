//! Configuration: flags > `OXIBASE_*` environment > TOML file > defaults.
//!
//! The file layer is deserialized straight into [`Config`] (missing keys take their
//! defaults). The environment layer ([`env`]) derives a variable for every key from
//! Config's shape: `OXIBASE_<KEY>` at the top, `OXIBASE_<SECTION>__<KEY>` in a section
//! (`OXIBASE_AUTH__SITE_URL`). The flag layer is clap's (`ServeArgs`, which also reads the
//! older names such as `OXIBASE_STORAGE_URL` and `OXIBASE_REST_SCHEMAS`); its `Some` values
//! override, and the providers' `OPENAI_API_KEY` etc. come last.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod env;
mod load;
#[cfg(test)]
mod tests;

pub use load::{ConfigError, ServeArgs};

/// The Supabase CLI's well-known local JWT secret. With it, the CLI's published anon and
/// service_role keys verify, so `supabase start` habits work unchanged.
pub const DEFAULT_JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";

/// A value that must never reach a log line or a dump: `Debug`, `Display` and `Serialize`
/// give `***` (so `config --dump` hides every secret by its type); `expose` gives the value.
/// It deserializes as the value itself.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(pub T);

impl<T> Serialize for Secret<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl<T> Secret<T> {
    pub fn expose(&self) -> &T {
        &self.0
    }
}
impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses the API listens on. Loopback only by default (both families, because
    /// `localhost` may resolve to either).
    pub bind: Vec<String>,
    /// The one HTTP port serving every API.
    pub port: u16,
    /// Postgres data, stored objects and logs live here.
    pub data_dir: PathBuf,
    /// An external database; when set, no PostgreSQL is started.
    pub database_url: Option<Secret<String>>,
    /// Port of the embedded PostgreSQL (127.0.0.1 only).
    pub db_port: u16,
    /// Directory holding `initdb`/`postgres`; found automatically when unset.
    pub pg_bin_dir: Option<PathBuf>,
    /// Size of the request connection pool.
    pub db_pool_size: usize,
    /// fsync in the embedded PostgreSQL; off trades crash safety for speed (tests).
    pub db_fsync: bool,
    /// HS256 secret that signs and verifies JWTs.
    pub jwt_secret: Secret<String>,
    /// Lifetime of issued access tokens, in seconds.
    pub jwt_expiry: u64,
    /// A JSON file with a JWK or an array of JWKs (private or public, RS256/ES256) that
    /// oxibase also trusts; a private key there signs issued access tokens.
    pub jwt_keys_file: Option<PathBuf>,
    /// The URL clients reach this server at (used in `iss`, links); defaults to
    /// `http://127.0.0.1:<port>`.
    pub api_external_url: Option<String>,
    /// Largest request body accepted by JSON APIs, in bytes.
    pub max_body_bytes: usize,
    /// Log filter (tracing's EnvFilter syntax).
    pub log: String,
    /// Log lines as `text` or `json` (one object a line; `--log-format`).
    pub log_format: LogFormat,
    /// Apply the AI chat platform's tables, buckets and policies (sql/0002). Off leaves a
    /// bare Supabase-like database for another project's SQL.
    pub app_schema: bool,
    /// Longest a request waits for a free pooled database connection, in ms; then REST
    /// answers 504 PGRST003 (and the other APIs their own 504).
    pub db_pool_wait_timeout_ms: u64,
    /// Longest the making of a new database connection may take, in ms; then the request
    /// answers 503 (the database is unreachable).
    pub db_pool_create_timeout_ms: u64,
    pub rest: RestConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub functions: FunctionsConfig,
    pub http: HttpConfig,
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub backup: BackupConfig,
    pub dashboard: DashboardConfig,
    /// Answer 401 "No API key found in request" to requests with no `apikey` (header or
    /// query parameter) and no `Authorization`, as Supabase's gateway does; health, auth
    /// links, the JWKS and public/signed storage URLs stay open. Unset: off with the
    /// well-known local JWT secret (local development, as the Supabase CLI), on otherwise.
    pub require_apikey: Option<bool>,
    /// A Supabase project's `supabase/` folder (or the directory holding it): its
    /// config.toml settings apply under this file's, its migrations and seed run at start,
    /// and the demo app's tables are not installed. Found in the working directory when unset.
    pub project: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The Prometheus endpoint `GET /metrics` (service_role key only).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// `[backup]`: base backups, continuous WAL archiving and object versions in one target
/// (see `oxibase backup` / `oxibase restore` and src/backup/).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// A folder (`/path` or `file:///path`) or `s3://bucket[/prefix]` (S3 credentials and
    /// endpoint from the same AWS_* variables as the S3 storage backend). Unset: no
    /// archiving and no scheduled backups (`oxibase backup --to` still works).
    pub target: Option<String>,
    /// A base backup every this long while the server runs (`30m`, `6h`, `1d`, `1w`);
    /// "" = none scheduled (WAL and objects are still archived).
    pub interval: String,
    /// Keep the newest this many base backups (0 = no count rule).
    pub keep: u32,
    /// Keep base backups younger than this many days too (0 = no age rule).
    pub keep_days: u32,
    /// Seconds after which a WAL segment with changes is archived even if not full: the
    /// most a point-in-time restore can lose (PostgreSQL's archive_timeout).
    pub archive_timeout_secs: u64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            target: None,
            interval: "1d".into(),
            keep: 7,
            keep_days: 0,
            archive_timeout_secs: 60,
        }
    }
}

/// The built-in dashboard at `/_/` (see `src/dashboard/`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// The sign-in password (OXIBASE_DASHBOARD__PASSWORD); a bcrypt hash (`$2b$...`) is
    /// taken as is. Without it the dashboard opens only on loopback with the local secret.
    pub password: Option<Secret<String>>,
    /// Open without a password for loopback peers when the JWT secret is the well-known
    /// local one (as the CLI's Studio); false asks for the password everywhere.
    pub trust_loopback: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            enabled: true,
            password: None,
            trust_loopback: true,
        }
    }
}

/// What the server hosts besides the APIs.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// A built static site (an SPA's `dist/`) served at `/` for every path the APIs do not
    /// own (`--static DIR`); index.html answers unknown page paths.
    pub static_dir: Option<PathBuf>,
}

/// Connection limits and timeouts of the HTTP server. A connection counts from accept to
/// close, WebSockets included; past a cap the server first closes an idle connection of
/// the same client (or of the biggest one), else answers a short 503 and closes.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Open connections at most; 0 = derived from the descriptor limit (raised to the hard
    /// limit at start), leaving room for the database pools, files and sandboxes.
    pub max_connections: usize,
    /// Open connections from one client IP at most; 0 = half of max_connections.
    pub max_connections_per_ip: usize,
    /// Seconds a client has to send a request's whole header, from its connection or its
    /// request's first byte.
    pub header_timeout_secs: u64,
    /// Seconds an idle keep-alive connection stays open between two requests.
    pub keepalive_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 0,
            max_connections_per_ip: 0,
            header_timeout_secs: 10,
            keepalive_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestConfig {
    /// Schemas exposed through /rest/v1; the first is the default profile.
    pub schemas: Vec<String>,
    /// Schemas appended to the search_path of each request.
    pub extra_search_path: Vec<String>,
    /// Upper bound on rows a read returns (none by default).
    pub max_rows: Option<u64>,
    /// Allow `Accept: application/vnd.pgrst.plan` (EXPLAIN). Off by default, as in Supabase.
    pub db_plan_enabled: bool,
    /// Allow aggregate functions in `select`.
    pub db_aggregates_enabled: bool,
    /// Allow `Prefer: tx=rollback` to override commit.
    pub db_tx_allow_override: bool,
    /// statement_timeout for requests not made as service_role, in milliseconds (0 = none);
    /// a role's own `statement_timeout` setting wins.
    pub statement_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Where email links send users.
    pub site_url: String,
    /// Extra allowed redirect URLs.
    pub additional_redirect_urls: Vec<String>,
    /// Sign-ups confirm immediately (as `supabase start`).
    pub autoconfirm: bool,
    pub disable_signup: bool,
    pub anonymous_sign_ins: bool,
    pub minimum_password_length: usize,
    /// Seconds an already-rotated refresh token may still be reused.
    pub refresh_token_reuse_interval: u64,
    /// SMTP server URL (`smtp://user:pass@host:port`); when unset mail goes to the log and
    /// the local inbox.
    pub smtp_url: Option<Secret<String>>,
    pub smtp_sender: String,
    /// Requests per hour per IP for sign-up/sign-in/OTP/verify (0 = none). When set, it
    /// replaces the per-5-minute `rate_limit.sign_in_sign_ups` and `token_verifications`
    /// defaults (an explicit `rate_limit` value still applies too).
    pub rate_limit_per_hour: u32,
    /// Emails sent per hour per address.
    pub email_rate_limit_per_hour: u32,
    /// Token refreshes per hour per IP (0 = none); when set, it replaces the default of
    /// `rate_limit.token_refresh`.
    pub refresh_rate_limit_per_hour: u32,
    /// bcrypt cost for new password hashes (GoTrue uses 10).
    pub password_hash_cost: u32,
    /// Characters a password must mix: "" (none), "letters_digits",
    /// "lower_upper_letters_digits" or "lower_upper_letters_digits_symbols".
    pub password_requirements: String,
    /// Seconds an emailed OTP or link stays valid.
    pub otp_expiry: u64,
    /// Minimum seconds between two emails of one kind to one user.
    pub email_max_frequency: u64,
    /// Take the client IP for rate limits from `X-Forwarded-For` (only behind a proxy).
    pub trust_forwarded_for: bool,
    /// Passkey (WebAuthn) sign-in and registration.
    pub passkeys: bool,
    /// WebAuthn relying-party id; empty = the host of site_url.
    pub webauthn_rp_id: String,
    /// Origins allowed in WebAuthn ceremonies; empty = the origins of site_url and
    /// additional_redirect_urls.
    pub webauthn_rp_origins: Vec<String>,
    /// With no SMS provider, put SMS codes in the local inbox instead of refusing to send.
    pub sms_to_inbox: bool,
    /// Fixed SMS codes per phone number (E.164 digits), as the Supabase CLI's test OTPs.
    pub sms_test_otp: std::collections::BTreeMap<String, String>,
    /// Custom access token hook: a SQL function (`schema.function` or Supabase's
    /// `pg-functions://postgres/schema/function`) that may rewrite the claims; "" = none.
    pub custom_access_token_hook: String,
    /// Email changes must be confirmed from both the old and the new address (GoTrue's
    /// "secure email change"; applies when autoconfirm is off).
    pub secure_email_change: bool,
    /// Sessions end this many seconds after sign-in (0 = never), as GoTrue's timebox.
    pub session_timebox: u64,
    /// Sessions end after this many seconds without a refresh (0 = never).
    pub session_inactivity_timeout: u64,
    /// A directory of HTML email templates as Supabase names them (`confirmation.html`,
    /// `invite.html`, `magic_link.html`, `recovery.html`, `email_change.html`,
    /// `reauthentication.html`) using `{{ .ConfirmationURL }}`, `{{ .Token }}`,
    /// `{{ .TokenHash }}`, `{{ .SiteURL }}`, `{{ .RedirectTo }}`, `{{ .Email }}`,
    /// `{{ .NewEmail }}`; missing files keep the built-in text.
    pub email_templates_dir: Option<PathBuf>,
    /// Email subjects by template name (same names, without `.html`).
    pub email_subjects: std::collections::BTreeMap<String, String>,
    /// GoTrue's rate limits, named as the Supabase CLI's `[auth.rate_limit]`.
    pub rate_limit: AuthRateLimits,
}

/// `[auth.rate_limit]`: the Supabase CLI's keys and windows, counted per client IP (see
/// `trust_forwarded_for`). Unset keys take the CLI's defaults, except that a per-hour key
/// of `[auth]` set to a non-zero value stands in for the defaults it overlaps.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthRateLimits {
    /// Sign-ups, password sign-ins and OTP/magic-link/recovery requests per 5 minutes per
    /// IP, each endpoint counted on its own, anonymous sign-ins excluded (CLI default 30).
    pub sign_in_sign_ups: Option<u32>,
    /// OTP and link verifications per 5 minutes per IP (CLI default 30).
    pub token_verifications: Option<u32>,
    /// Token refreshes per 5 minutes per IP (CLI default 150).
    pub token_refresh: Option<u32>,
    /// Anonymous sign-ins per hour per IP (CLI default 30).
    pub anonymous_users: Option<u32>,
    /// Emails sent per hour in all, only when SMTP is configured (CLI default 2).
    pub email_sent: Option<u32>,
    /// SMS codes sent per hour in all (CLI default 30).
    pub sms_sent: Option<u32>,
    /// Web3 sign-ins per 5 minutes per IP; accepted for config.toml compatibility (web3
    /// sign-in is not offered).
    pub web3: Option<u32>,
    /// Failed password sign-ins per account per 5 minutes before the account's password
    /// sign-ins are refused with 429 until the window ends (0 = no per-account limit).
    pub password_failures_per_account: Option<u32>,
}

impl AuthRateLimits {
    pub const DEFAULT_SIGN_IN_SIGN_UPS: u32 = 30;
    pub const DEFAULT_TOKEN_VERIFICATIONS: u32 = 30;
    pub const DEFAULT_TOKEN_REFRESH: u32 = 150;
    pub const DEFAULT_ANONYMOUS_USERS: u32 = 30;
    pub const DEFAULT_EMAIL_SENT: u32 = 2;
    pub const DEFAULT_SMS_SENT: u32 = 30;
    pub const DEFAULT_PASSWORD_FAILURES_PER_ACCOUNT: u32 = 10;

    /// Limits high enough for test suites that sign many users up and in from one
    /// address in one server (the defaults would refuse them).
    pub fn generous() -> AuthRateLimits {
        let n = Some(100_000);
        AuthRateLimits {
            sign_in_sign_ups: n,
            token_verifications: n,
            token_refresh: n,
            anonymous_users: n,
            email_sent: n,
            sms_sent: n,
            web3: n,
            password_failures_per_account: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `file:///path`, `s3://bucket` (AWS_* variables) or `memory://`; local files under
    /// `<data_dir>/storage` when unset.
    pub url: Option<String>,
    /// Global upload limit, in bytes.
    pub file_size_limit: u64,
    /// Unfinished TUS uploads one user may hold at once (0: no bound).
    pub max_resumable_uploads_per_user: u32,
}

/// The built-in functions (`/functions/v1`): chat-completion's LLM providers.
/// `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `MISTRAL_API_KEY`, `OPENAI_BASE_URL`,
/// `ANTHROPIC_BASE_URL` and `MISTRAL_BASE_URL` override the file (an empty variable counts
/// as unset). Keys are [`Secret`]s: never printed, logged or dumped.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionsConfig {
    /// The server's provider keys, used when a request brings no `api_key` of its own.
    pub openai_api_key: Option<Secret<String>>,
    pub anthropic_api_key: Option<Secret<String>>,
    pub mistral_api_key: Option<Secret<String>>,
    /// Provider API roots (OpenAI's and Mistral's include `/v1`; Anthropic's does not).
    pub openai_base_url: String,
    pub anthropic_base_url: String,
    pub mistral_base_url: String,
    /// Seconds to wait for a provider's whole answer, or for a stream's first bytes.
    pub provider_timeout_secs: u64,
    /// Seconds a streamed answer may stay silent before it is abandoned.
    pub stream_idle_timeout_secs: u64,
    /// Earlier turns of a conversation sent to the provider: at most this many messages...
    pub context_max_messages: usize,
    /// ...and at most about this many characters (the newest turns are kept).
    pub context_max_chars: usize,
    /// `max_tokens` sent to Anthropic (which requires one) when the request gives none.
    pub default_max_tokens: u32,
    /// Largest chat-completion request body, in bytes.
    pub chat_max_body_bytes: usize,
    /// code-execution: the default and largest `timeout_ms` of a run (wall time; CPU time is
    /// bounded to this plus one second).
    pub code_timeout_ms: u64,
    /// code-execution: memory a run may allocate beyond the sandbox's own start-up, in MB.
    pub code_memory_mb: u64,
    /// code-execution: most bytes of stdout and stderr together; the rest is cut off.
    pub code_output_bytes: usize,
    /// code-execution: largest `code`, and largest `stdin`, in bytes (400 beyond).
    pub code_max_code_bytes: usize,
    pub code_max_stdin_bytes: usize,
    /// code-execution: runs at once; more wait up to `code_queue_timeout_ms` for a slot,
    /// then get 503 `too_many_runs`.
    pub code_max_concurrent: usize,
    pub code_queue_timeout_ms: u64,
    /// code-execution: the binary started as the sandbox (`<exe> __sandbox`); unset: this
    /// server's own executable.
    pub code_sandbox_exe: Option<PathBuf>,
    /// code-execution: runs one user may have going at once (their share of
    /// `code_max_concurrent`); unset: half of them, at least one.
    pub code_max_concurrent_per_user: Option<usize>,
    /// code-execution: requests one user may have waiting beyond their share; more get 429
    /// `user_run_limit` at once.
    pub code_max_queued_per_user: usize,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        FunctionsConfig {
            openai_api_key: None,
            anthropic_api_key: None,
            mistral_api_key: None,
            openai_base_url: "https://api.openai.com/v1".into(),
            anthropic_base_url: "https://api.anthropic.com".into(),
            mistral_base_url: "https://api.mistral.ai/v1".into(),
            provider_timeout_secs: 120,
            stream_idle_timeout_secs: 60,
            context_max_messages: 50,
            context_max_chars: 48_000,
            default_max_tokens: 1024,
            chat_max_body_bytes: 1024 * 1024,
            code_timeout_ms: 5000,
            code_memory_mb: 128,
            code_output_bytes: 1024 * 1024,
            code_max_code_bytes: 256 * 1024,
            code_max_stdin_bytes: 1024 * 1024,
            code_max_concurrent: 4,
            code_queue_timeout_ms: 5000,
            code_sandbox_exe: None,
            code_max_concurrent_per_user: None,
            code_max_queued_per_user: 4,
        }
    }
}

impl FunctionsConfig {
    /// Overlay the providers' usual environment variables; `var` reads one.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        let get = |k: &str| {
            var(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        for (name, slot) in [
            ("OPENAI_API_KEY", &mut self.openai_api_key),
            ("ANTHROPIC_API_KEY", &mut self.anthropic_api_key),
            ("MISTRAL_API_KEY", &mut self.mistral_api_key),
        ] {
            if let Some(v) = get(name) {
                *slot = Some(Secret(v));
            }
        }
        for (name, slot) in [
            ("OPENAI_BASE_URL", &mut self.openai_base_url),
            ("ANTHROPIC_BASE_URL", &mut self.anthropic_base_url),
            ("MISTRAL_BASE_URL", &mut self.mistral_base_url),
        ] {
            if let Some(v) = get(name) {
                *slot = v;
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, url) in [
            ("openai_base_url", &self.openai_base_url),
            ("anthropic_base_url", &self.anthropic_base_url),
            ("mistral_base_url", &self.mistral_base_url),
        ] {
            let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if !ok {
                return Err(ConfigError::Invalid(format!(
                    "functions.{name}: '{url}' is not an http(s) URL"
                )));
            }
        }
        if self.provider_timeout_secs == 0 || self.stream_idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "functions: provider_timeout_secs and stream_idle_timeout_secs must be at least 1"
                    .into(),
            ));
        }
        if self.default_max_tokens == 0 {
            return Err(ConfigError::Invalid(
                "functions.default_max_tokens must be at least 1".into(),
            ));
        }
        if !(100..=600_000).contains(&self.code_timeout_ms) {
            return Err(ConfigError::Invalid(
                "functions.code_timeout_ms must be between 100 and 600000".into(),
            ));
        }
        if !(32..=65_536).contains(&self.code_memory_mb) {
            return Err(ConfigError::Invalid(
                "functions.code_memory_mb must be between 32 and 65536".into(),
            ));
        }
        if self.code_output_bytes < 1024
            || self.code_output_bytes > 256 * 1024 * 1024
            || self.code_max_code_bytes == 0
            || self.code_max_concurrent == 0
        {
            return Err(ConfigError::Invalid(
                "functions: code_output_bytes must be between 1024 and 268435456, \
                 code_max_code_bytes and code_max_concurrent at least 1"
                    .into(),
            ));
        }
        if let Some(n) = self.code_max_concurrent_per_user {
            if n == 0 || n > self.code_max_concurrent {
                return Err(ConfigError::Invalid(
                    "functions.code_max_concurrent_per_user must be between 1 and \
                     code_max_concurrent"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: vec!["127.0.0.1".into(), "::1".into()],
            port: 54321,
            data_dir: PathBuf::from("./.oxibase"),
            database_url: None,
            db_port: 54322,
            pg_bin_dir: None,
            db_pool_size: 16,
            db_fsync: true,
            jwt_secret: Secret(DEFAULT_JWT_SECRET.to_string()),
            jwt_expiry: 3600,
            jwt_keys_file: None,
            api_external_url: None,
            max_body_bytes: 10 * 1024 * 1024,
            log: "info".into(),
            log_format: LogFormat::Text,
            app_schema: true,
            db_pool_wait_timeout_ms: 10_000,
            db_pool_create_timeout_ms: 5_000,
            rest: RestConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            functions: FunctionsConfig::default(),
            http: HttpConfig::default(),
            server: ServerConfig::default(),
            metrics: MetricsConfig::default(),
            backup: BackupConfig::default(),
            dashboard: DashboardConfig::default(),
            require_apikey: None,
            project: None,
        }
    }
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            schemas: vec!["public".into(), "graphql_public".into()],
            extra_search_path: vec!["public".into(), "extensions".into()],
            max_rows: None,
            db_plan_enabled: false,
            db_aggregates_enabled: false,
            db_tx_allow_override: false,
            statement_timeout_ms: 8000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            site_url: "http://localhost:3000".into(),
            additional_redirect_urls: vec![],
            autoconfirm: true,
            disable_signup: false,
            anonymous_sign_ins: true,
            minimum_password_length: 6,
            refresh_token_reuse_interval: 10,
            smtp_url: None,
            smtp_sender: "noreply@oxibase.local".into(),
            rate_limit_per_hour: 0,
            email_rate_limit_per_hour: 100,
            refresh_rate_limit_per_hour: 0,
            password_hash_cost: 10,
            password_requirements: String::new(),
            otp_expiry: 3600,
            email_max_frequency: 1,
            trust_forwarded_for: false,
            passkeys: true,
            webauthn_rp_id: String::new(),
            webauthn_rp_origins: vec![],
            sms_to_inbox: false,
            sms_test_otp: Default::default(),
            custom_access_token_hook: String::new(),
            secure_email_change: true,
            session_timebox: 0,
            session_inactivity_timeout: 0,
            email_templates_dir: None,
            email_subjects: Default::default(),
            rate_limit: AuthRateLimits::default(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: None,
            file_size_limit: 50 * 1024 * 1024,
            max_resumable_uploads_per_user: 20,
        }
    }
}
