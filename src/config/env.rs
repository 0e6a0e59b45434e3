//! The environment layer, derived from [`Config`]'s own shape: every key has a variable.
//!
//! A top-level key `k` is `OXIBASE_K`; a key of a section joins the path with a double
//! underscore: `auth.site_url` is `OXIBASE_AUTH__SITE_URL`, `auth.rate_limit.email_sent`
//! is `OXIBASE_AUTH__RATE_LIMIT__EMAIL_SENT`. A value is read with its key's type: a
//! boolean (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`), a number, a string (as is),
//! a list (comma separated, or a TOML array `["a", "b"]`) or a map (a TOML inline table
//! `{ "k" = "v" }`). An empty variable counts as unset.

use serde_json::Value as J;
use toml::Value as T;

use super::{Config, ConfigError};

/// The variable of a key path (`["auth", "site_url"]` → `OXIBASE_AUTH__SITE_URL`).
pub fn var_name(path: &[String]) -> String {
    format!("OXIBASE_{}", path.join("__").to_ascii_uppercase())
}

/// Every settable key: its path and its default as JSON (null for an unset option).
/// Non-empty objects are sections; an object empty by default is a map (one key).
pub fn leaves() -> Vec<(Vec<String>, J)> {
    fn walk(prefix: &mut Vec<String>, v: &J, out: &mut Vec<(Vec<String>, J)>) {
        if let J::Object(m) = v {
            for (k, v) in m {
                prefix.push(k.clone());
                match v {
                    J::Object(sub) if !sub.is_empty() => walk(prefix, v, out),
                    _ => out.push((prefix.clone(), v.clone())),
                }
                prefix.pop();
            }
        }
    }
    let defaults = serde_json::to_value(Config::default()).expect("config serializes");
    let mut out = vec![];
    walk(&mut vec![], &defaults, &mut out);
    out
}

/// Overlay the variables `var` finds onto `table` (the file layer, as parsed) and
/// deserialize the result. A value that does not fit its key names the variable.
pub fn overlay(
    mut table: toml::Table,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Config>, ConfigError> {
    let mut last = None;
    for (path, default) in leaves() {
        let name = var_name(&path);
        let Some(raw) = var(&name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
        else {
            continue;
        };
        let invalid = |why: String| ConfigError::Invalid(format!("{name}: {why}"));
        let mut error = String::new();
        let mut done = false;
        for candidate in candidates(&default, &raw).map_err(invalid)? {
            set(&mut table, &path, candidate);
            match T::Table(table.clone()).try_into::<Config>() {
                Ok(cfg) => {
                    last = Some(cfg);
                    done = true;
                    break;
                }
                Err(e) => error = e.message().trim().to_string(),
            }
        }
        if !done {
            return Err(invalid(error));
        }
    }
    Ok(last)
}

/// The values `raw` may stand for, in the order tried, given the key's default.
fn candidates(default: &J, raw: &str) -> Result<Vec<T>, String> {
    Ok(match default {
        J::String(_) => vec![T::String(raw.to_string())],
        J::Bool(_) => vec![T::Boolean(parse_bool(raw).ok_or("expected true or false")?)],
        J::Number(_) => match parse_toml(raw) {
            Some(v @ (T::Integer(_) | T::Float(_))) => vec![v],
            _ => return Err("expected a number".into()),
        },
        J::Array(_) if raw.starts_with('[') => match parse_toml(raw) {
            Some(v @ T::Array(_)) => vec![v],
            _ => return Err("expected a TOML array or a comma-separated list".into()),
        },
        J::Array(_) => vec![T::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| T::String(s.to_string()))
                .collect(),
        )],
        J::Object(_) => match parse_toml(raw) {
            Some(v @ T::Table(_)) => vec![v],
            _ => return Err("expected a TOML inline table such as { \"k\" = \"v\" }".into()),
        },
        // An unset option: its type is unknown here, so a typed reading is tried first.
        J::Null => match parse_toml(raw) {
            Some(T::String(_)) | None => vec![T::String(raw.to_string())],
            Some(v) => vec![v, T::String(raw.to_string())],
        },
    })
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `raw` read as one TOML value (`42`, `true`, `["a"]`, `{ k = 1 }`), if it is one.
fn parse_toml(raw: &str) -> Option<T> {
    let mut t: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
    if t.len() != 1 {
        return None;
    }
    t.remove("v")
}

fn set(table: &mut toml::Table, path: &[String], value: T) {
    let (last, sections) = path.split_last().expect("non-empty path");
    let mut t = table;
    for s in sections {
        let entry = t
            .entry(s.clone())
            .or_insert_with(|| T::Table(Default::default()));
        if !entry.is_table() {
            *entry = T::Table(Default::default());
        }
        t = entry.as_table_mut().expect("table");
    }
    t.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;
    use crate::config::ServeArgs;

    fn load(file: &str, vars: &[(&str, &str)], args: ServeArgs) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oxibase.toml");
        std::fs::write(&path, file).unwrap();
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_layers(Some(&path), &args, &|k| vars.get(k).cloned())
    }

    #[test]
    fn names_follow_the_key_path() {
        let p = |s: &str| s.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(var_name(&p("port")), "OXIBASE_PORT");
        assert_eq!(var_name(&p("auth.site_url")), "OXIBASE_AUTH__SITE_URL");
        assert_eq!(
            var_name(&p("auth.rate_limit.email_sent")),
            "OXIBASE_AUTH__RATE_LIMIT__EMAIL_SENT"
        );
        // Every key of the example file has a variable, and no two keys share one.
        let names: Vec<String> = leaves().iter().map(|(p, _)| var_name(p)).collect();
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for key in Config::key_paths() {
            assert!(names.contains(&var_name(&p(&key))), "{key} has no variable");
        }
        for map in ["auth.sms_test_otp", "auth.email_subjects"] {
            assert!(names.contains(&var_name(&p(map))), "{map}");
        }
    }

    #[test]
    fn every_section_reads_its_variables_over_the_file() {
        let file = "db_pool_size = 3\n[rest]\nmax_rows = 10\n[auth]\nsite_url = \"http://file\"\n\
                    autoconfirm = true\n[auth.rate_limit]\nemail_sent = 1\n[storage]\n\
                    file_size_limit = 5\n[functions]\nprovider_timeout_secs = 9\n[http]\n\
                    max_connections = 11\n";
        let cfg = load(
            file,
            &[
                // top level: integer, boolean, list, optional boolean and string, secret
                ("OXIBASE_DB_POOL_SIZE", "7"),
                ("OXIBASE_DB_FSYNC", "false"),
                ("OXIBASE_BIND", " 127.0.0.1 , ::1 ,"),
                ("OXIBASE_REQUIRE_APIKEY", "true"),
                ("OXIBASE_API_EXTERNAL_URL", "true"),
                ("OXIBASE_DATABASE_URL", "postgres://u:pw@h/db"),
                ("OXIBASE_JWT_EXPIRY", "60"),
                // sections
                ("OXIBASE_REST__SCHEMAS", "[\"api\", \"public\"]"),
                ("OXIBASE_REST__MAX_ROWS", "100"),
                ("OXIBASE_REST__DB_PLAN_ENABLED", "on"),
                ("OXIBASE_AUTH__SITE_URL", "http://env.test"),
                ("OXIBASE_AUTH__AUTOCONFIRM", "0"),
                (
                    "OXIBASE_AUTH__ADDITIONAL_REDIRECT_URLS",
                    "http://a, http://b",
                ),
                ("OXIBASE_AUTH__SMTP_SENDER", "123"),
                (
                    "OXIBASE_AUTH__SMS_TEST_OTP",
                    "{ \"4152127777\" = \"123456\" }",
                ),
                ("OXIBASE_AUTH__RATE_LIMIT__EMAIL_SENT", "5"),
                ("OXIBASE_STORAGE__URL", "memory://"),
                ("OXIBASE_STORAGE__FILE_SIZE_LIMIT", "1024"),
                ("OXIBASE_FUNCTIONS__OPENAI_API_KEY", "sk-new-name"),
                ("OXIBASE_FUNCTIONS__CODE_SANDBOX_EXE", "/bin/true"),
                ("OXIBASE_HTTP__MAX_CONNECTIONS", "64"),
                ("OXIBASE_HTTP__KEEPALIVE_TIMEOUT_SECS", ""),
            ],
            ServeArgs::default(),
        )
        .unwrap();
        assert_eq!(cfg.db_pool_size, 7);
        assert!(!cfg.db_fsync);
        assert_eq!(cfg.bind, ["127.0.0.1", "::1"]);
        assert_eq!(cfg.require_apikey, Some(true));
        assert_eq!(cfg.api_external_url.as_deref(), Some("true"));
        assert_eq!(
            cfg.database_url.as_ref().unwrap().expose(),
            "postgres://u:pw@h/db"
        );
        assert_eq!(cfg.jwt_expiry, 60);
        assert_eq!(cfg.rest.schemas, ["api", "public"]);
        assert_eq!(cfg.rest.max_rows, Some(100));
        assert!(cfg.rest.db_plan_enabled);
        assert_eq!(cfg.auth.site_url, "http://env.test");
        assert!(!cfg.auth.autoconfirm);
        assert_eq!(cfg.auth.additional_redirect_urls, ["http://a", "http://b"]);
        assert_eq!(cfg.auth.smtp_sender, "123");
        assert_eq!(cfg.auth.sms_test_otp["4152127777"], "123456");
        assert_eq!(cfg.auth.rate_limit.email_sent, Some(5));
        assert_eq!(cfg.auth.rate_limit.sms_sent, None);
        assert_eq!(cfg.storage.url.as_deref(), Some("memory://"));
        assert_eq!(cfg.storage.file_size_limit, 1024);
        assert_eq!(
            cfg.functions.openai_api_key.as_ref().unwrap().expose(),
            "sk-new-name"
        );
        assert_eq!(
            cfg.functions.code_sandbox_exe,
            Some(PathBuf::from("/bin/true"))
        );
        assert_eq!(cfg.functions.provider_timeout_secs, 9, "file, no variable");
        assert_eq!(cfg.http.max_connections, 64);
        assert_eq!(cfg.http.keepalive_timeout_secs, 60, "empty = unset");
        assert_eq!(cfg.port, 54321, "default, no file key, no variable");
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file =
            "port = 1111\ndb_port = 2222\n[auth]\npasskeys = false\nsite_url = \"http://f\"\n";
        let vars = [("OXIBASE_PORT", "3333"), ("OXIBASE_AUTH__PASSKEYS", "true")];
        let cfg = load(file, &vars, ServeArgs::default()).unwrap();
        assert_eq!((cfg.port, cfg.db_port), (3333, 2222));
        assert!(cfg.auth.passkeys, "env beats file");
        assert_eq!(cfg.auth.site_url, "http://f", "file beats default");
        assert_eq!(cfg.db_pool_size, 16, "default");
        let args = ServeArgs {
            port: Some(4444),
            rest_schemas: Some(vec!["flagged".into()]),
            ..Default::default()
        };
        let vars = [("OXIBASE_PORT", "3333"), ("OXIBASE_REST__SCHEMAS", "a,b")];
        let cfg = load(file, &vars, args).unwrap();
        assert_eq!(cfg.port, 4444, "flag beats env");
        assert_eq!(cfg.rest.schemas, ["flagged"]);
    }

    #[test]
    fn older_names_keep_working_and_win() {
        // The clap-read names arrive through ServeArgs; the providers' through apply_env.
        let args = ServeArgs {
            storage_url: Some("memory://".into()),
            jwt_secret: Some("s".repeat(40)),
            ..Default::default()
        };
        let vars = [
            ("OXIBASE_STORAGE__URL", "file:///tmp/x"),
            ("OPENAI_API_KEY", "sk-old-name"),
            ("OXIBASE_FUNCTIONS__OPENAI_API_KEY", "sk-new-name"),
        ];
        let cfg = load("", &vars, args).unwrap();
        assert_eq!(cfg.storage.url.as_deref(), Some("memory://"));
        assert_eq!(cfg.jwt_secret.expose(), &"s".repeat(40));
        assert_eq!(
            cfg.functions.openai_api_key.as_ref().unwrap().expose(),
            "sk-old-name"
        );
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_variable() {
        for (name, value) in [
            ("OXIBASE_DB_POOL_SIZE", "many"),
            ("OXIBASE_DB_FSYNC", "maybe"),
            ("OXIBASE_DB_PORT", "99999"),
            ("OXIBASE_REST__MAX_ROWS", "-1"),
            ("OXIBASE_AUTH__SMS_TEST_OTP", "x"),
        ] {
            let err = load("", &[(name, value)], ServeArgs::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{name}: {err}");
        }
        // A file error is still reported as one.
        let err = load("prot = 1", &[], ServeArgs::default()).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
