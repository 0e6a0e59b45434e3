//! `supabase/config.toml` → oxibase settings.
//!
//! The file is read as the Supabase CLI reads it: a string `env(NAME)` stands for the
//! variable NAME. Keys with an oxibase meaning become a TOML table in oxibase's own shape
//! (`rest.schemas`, `auth.disable_signup`...), layered under oxibase's file, environment and
//! flags. Keys of the CLI's local Docker stack (ports, Studio, Inbucket...) have no meaning
//! here and are passed over; every other key is named once in the notes, never fatal.
//! Sections switched off (`enabled = false`) are passed over whole.

use toml::{Table, Value};

/// The mapped settings, and one note per key that oxibase does not act on.
#[derive(Debug, Default)]
pub struct Mapped {
    pub table: Table,
    pub notes: Vec<String>,
}

/// Parse the file's text, substituting `env(NAME)` from `var`.
pub fn parse(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<Table, String> {
    let mut t: Table = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
    substitute(&mut t, var);
    Ok(t)
}

fn substitute(t: &mut Table, var: &dyn Fn(&str) -> Option<String>) {
    fn walk(v: &mut Value, var: &dyn Fn(&str) -> Option<String>) {
        match v {
            Value::String(s) => {
                let trimmed = s.trim();
                if let Some(name) = trimmed
                    .strip_prefix("env(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    // The CLI leaves an unset variable's reference as it is.
                    if let Some(val) = var(name.trim()) {
                        *s = val;
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, var)),
            Value::Table(t) => t.iter_mut().for_each(|(_, v)| walk(v, var)),
            _ => {}
        }
    }
    t.iter_mut().for_each(|(_, v)| walk(v, var));
}

/// Keys (as dotted prefixes) of the CLI's local stack that mean nothing to one binary.
const NO_MEANING: &[&str] = &[
    "project_id",
    "api.enabled",
    "api.port",
    "api.tls",
    "db.port",
    "db.shadow_port",
    "db.health_timeout",
    "db.major_version",
    "db.pooler",
    "db.network_restrictions",
    "db.root_key",
    "db.settings",
    "db.vault",
    "realtime.enabled",
    "realtime.ip_version",
    "realtime.max_header_length",
    "studio",
    "inbucket",
    "analytics",
    "edge_runtime",
    "experimental",
    "remotes",
    "storage.enabled",
    "storage.s3_protocol",
    "storage.image_transformation",
    "storage.analytics",
    "storage.vector",
    "auth.enabled",
    "auth.jwt_issuer",
    "auth.sms.twilio",
    "auth.sms.twilio_verify",
    "auth.sms.messagebird",
    "auth.sms.textlocal",
    "auth.sms.vonage",
    "auth.email.smtp",
    "auth.email.notification",
    "auth.web3",
    "auth.third_party",
    "auth.oauth_server",
    "auth.captcha",
];

/// Handled when the project is applied (buckets, seed, migrations), not as settings.
const APPLIED_LATER: &[&str] = &["storage.buckets", "db.seed", "db.migrations.enabled"];

struct Mapper {
    out: Table,
    notes: Vec<String>,
}

impl Mapper {
    fn set(&mut self, path: &str, v: Value) {
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut t = &mut self.out;
        for p in parts {
            t = t
                .entry(p)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .expect("a section");
        }
        t.insert(last.to_string(), v);
    }

    fn note(&mut self, key: &str, why: &str) {
        self.notes.push(format!("{key}: {why}"));
    }
}

/// Map the parsed file onto oxibase's settings.
pub fn map(file: &Table) -> Mapped {
    let mut m = Mapper {
        out: Table::new(),
        notes: vec![],
    };
    let mut leaves = vec![];
    collect(file, "", &mut leaves);
    for (key, v) in leaves {
        if matches_prefix(&key, NO_MEANING) || matches_prefix(&key, APPLIED_LATER) {
            continue;
        }
        // A sign-in provider is one note, not one per key.
        if let Some(rest) = key.strip_prefix("auth.external.") {
            let provider = format!("auth.external.{}", rest.split('.').next().unwrap_or(rest));
            if !m
                .notes
                .iter()
                .any(|n| n.starts_with(&format!("{provider}:")))
            {
                m.note(
                    &provider,
                    "this sign-in provider is not offered by oxibase (ignored)",
                );
            }
            continue;
        }
        if let Err(why) = map_one(&mut m, &key, &v) {
            m.note(&key, &why);
        }
    }
    Mapped {
        table: m.out,
        notes: m.notes,
    }
}

fn matches_prefix(key: &str, list: &[&str]) -> bool {
    list.iter()
        .any(|p| key == *p || key.starts_with(&format!("{p}.")))
}

/// Leaf keys with their values; a section switched off (`enabled = false`, or an MFA
/// method with enrolment and verification off) is left out whole.
fn collect(t: &Table, prefix: &str, out: &mut Vec<(String, Value)>) {
    let off = |k: &str| t.get(k).and_then(Value::as_bool) == Some(false);
    if !prefix.is_empty() && (off("enabled") || (off("enroll_enabled") && off("verify_enabled"))) {
        return;
    }
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            // Maps of the CLI that are values, not sections.
            Value::Table(sub) if key != "auth.sms.test_otp" => collect(sub, &key, out),
            _ => out.push((key, v.clone())),
        }
    }
}

const UNSUPPORTED: &str = "not supported by oxibase (ignored)";

fn map_one(m: &mut Mapper, key: &str, v: &Value) -> Result<(), String> {
    let bool_of = || {
        v.as_bool()
            .ok_or_else(|| "expected true or false".to_string())
    };
    let int_of = || {
        v.as_integer()
            .filter(|n| *n >= 0)
            .ok_or_else(|| "expected a number".to_string())
    };
    match key {
        "api.schemas" => m.set("rest.schemas", v.clone()),
        "api.extra_search_path" => m.set("rest.extra_search_path", v.clone()),
        "api.max_rows" => m.set("rest.max_rows", Value::Integer(int_of()?)),
        "auth.site_url" => m.set("auth.site_url", v.clone()),
        "auth.additional_redirect_urls" => m.set("auth.additional_redirect_urls", v.clone()),
        "auth.jwt_expiry" => m.set("jwt_expiry", Value::Integer(int_of()?)),
        "auth.enable_signup" => m.set("auth.disable_signup", Value::Boolean(!bool_of()?)),
        "auth.enable_anonymous_sign_ins" => {
            m.set("auth.anonymous_sign_ins", Value::Boolean(bool_of()?))
        }
        "auth.minimum_password_length" => {
            m.set("auth.minimum_password_length", Value::Integer(int_of()?))
        }
        "auth.password_requirements" => m.set("auth.password_requirements", v.clone()),
        "auth.refresh_token_reuse_interval" => m.set(
            "auth.refresh_token_reuse_interval",
            Value::Integer(int_of()?),
        ),
        "auth.enable_refresh_token_rotation" if bool_of()? => {}
        "auth.enable_manual_linking" if !bool_of()? => {}
        "auth.email.enable_signup" if bool_of()? => {}
        "auth.email.enable_confirmations" => m.set("auth.autoconfirm", Value::Boolean(!bool_of()?)),
        "auth.email.double_confirm_changes" => {
            m.set("auth.secure_email_change", Value::Boolean(bool_of()?))
        }
        "auth.email.secure_password_change" if !bool_of()? => {}
        "auth.email.max_frequency" => {
            m.set("auth.email_max_frequency", Value::Integer(seconds(v)?))
        }
        "auth.email.otp_expiry" => m.set("auth.otp_expiry", Value::Integer(int_of()?)),
        "auth.email.otp_length" if int_of()? == 6 => {}
        // Phone sign-ups are offered (codes go to SMS or, without a provider, the inbox).
        "auth.sms.enable_signup" => {}
        "auth.sms.enable_confirmations" if !bool_of()? => {}
        "auth.sms.template" | "auth.sms.max_frequency" => {}
        "auth.sms.test_otp" => m.set("auth.sms_test_otp", v.clone()),
        "auth.sessions.timebox" => m.set("auth.session_timebox", Value::Integer(seconds(v)?)),
        "auth.sessions.inactivity_timeout" => m.set(
            "auth.session_inactivity_timeout",
            Value::Integer(seconds(v)?),
        ),
        "auth.hook.custom_access_token.uri" => m.set("auth.custom_access_token_hook", v.clone()),
        // TOTP is always offered; the CLI's defaults (off) mean nothing more than unused.
        "auth.mfa.totp.enroll_enabled" | "auth.mfa.totp.verify_enabled" => {}
        "auth.mfa.max_enrolled_factors" if int_of()? == 10 => {}
        "storage.file_size_limit" => m.set("storage.file_size_limit", Value::Integer(size(v)?)),
        k if k.starts_with("auth.rate_limit.") => m.set(k, Value::Integer(int_of()?)),
        k if k.starts_with("auth.email.template.") && k.ends_with(".subject") => {
            let name = &k["auth.email.template.".len()..k.len() - ".subject".len()];
            m.set(&format!("auth.email_subjects.{name}"), v.clone())
        }
        _ => return Err(UNSUPPORTED.into()),
    }
    Ok(())
}

/// A size as the CLI writes it: a number of bytes or "50MiB", "5MB", "1GB", "512KiB".
pub fn size(v: &Value) -> Result<i64, String> {
    if let Some(n) = v.as_integer() {
        return Ok(n);
    }
    let s = v
        .as_str()
        .ok_or("expected a size such as \"50MiB\"")?
        .trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as \"50MiB\""))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("'{s}' is not a size such as \"50MiB\"")),
    };
    Ok((n * mult) as i64)
}

/// A duration as the CLI writes it ("1s", "5m", "24h", "1h30m"), in whole seconds.
pub fn seconds(v: &Value) -> Result<i64, String> {
    if let Some(n) = v.as_integer() {
        return Ok(n);
    }
    let s = v
        .as_str()
        .ok_or("expected a duration such as \"1h\"")?
        .trim();
    let bad = || format!("'{s}' is not a duration such as \"24h\"");
    let (mut total, mut num) = (0f64, String::new());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(*n);
            chars.next();
        }
        let n: f64 = num.parse().map_err(|_| bad())?;
        num.clear();
        total += n * match unit.as_str() {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
    }
    if !num.is_empty() {
        if s == "0" {
            return Ok(0);
        }
        return Err(bad());
    }
    Ok(total as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_keys_with_a_meaning_and_notes_the_rest() {
        let text = r#"
project_id = "x"
[api]
port = 54321
schemas = ["public", "api"]
max_rows = 500
[auth]
site_url = "env(SITE)"
enable_signup = false
jwt_expiry = 7200
enable_manual_linking = true
[auth.rate_limit]
email_sent = 5
[auth.email]
enable_confirmations = true
max_frequency = "1m"
[auth.external.github]
enabled = false
client_id = "x"
[auth.external.google]
enabled = true
[storage]
file_size_limit = "5MiB"
[storage.buckets.avatars]
public = true
"#;
        let t = parse(text, &|k| (k == "SITE").then(|| "https://app.test".into())).unwrap();
        let m = map(&t);
        let o = &m.table;
        assert_eq!(o["rest"]["schemas"][1].as_str(), Some("api"));
        assert_eq!(o["rest"]["max_rows"].as_integer(), Some(500));
        assert_eq!(o["auth"]["site_url"].as_str(), Some("https://app.test"));
        assert_eq!(o["auth"]["disable_signup"].as_bool(), Some(true));
        assert_eq!(o["auth"]["autoconfirm"].as_bool(), Some(false));
        assert_eq!(o["auth"]["email_max_frequency"].as_integer(), Some(60));
        assert_eq!(o["auth"]["rate_limit"]["email_sent"].as_integer(), Some(5));
        assert_eq!(o["jwt_expiry"].as_integer(), Some(7200));
        assert_eq!(
            o["storage"]["file_size_limit"].as_integer(),
            Some(5 * 1024 * 1024)
        );
        assert!(m
            .notes
            .iter()
            .any(|n| n.starts_with("auth.enable_manual_linking")));
        assert!(m
            .notes
            .iter()
            .any(|n| n.starts_with("auth.external.google:")));
        assert!(!m
            .notes
            .iter()
            .any(|n| n.starts_with("auth.external.github") || n.starts_with("api.port")));
    }

    #[test]
    fn sizes_and_durations() {
        let s = |x: &str| size(&Value::String(x.into())).unwrap();
        assert_eq!(s("50MiB"), 52_428_800);
        assert_eq!(s("1GB"), 1_000_000_000);
        assert!(size(&Value::String("lots".into())).is_err());
        let d = |x: &str| seconds(&Value::String(x.into())).unwrap();
        assert_eq!(d("24h"), 86_400);
        assert_eq!(d("1h30m"), 5400);
        assert_eq!(d("0"), 0);
        assert!(seconds(&Value::String("soon".into())).is_err());
    }
}
