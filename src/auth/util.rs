//! Pure helpers: input validation as GoTrue does it, random tokens, OTP hashes, durations,
//! redirect checks. Nothing here touches the database.

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha224, Sha256};

use super::error::{AuthError, AuthResult};

/// Lower-cased, checked email address.
pub fn validate_email(raw: &str) -> AuthResult<String> {
    let e = raw.trim();
    if e.is_empty() {
        return Err(AuthError::validation("An email address is required"));
    }
    if e.len() > 255 {
        return Err(AuthError::validation("An email address is too long"));
    }
    if !email_is_valid(e) {
        return Err(AuthError::invalid_email());
    }
    Ok(e.to_lowercase())
}

fn email_is_valid(e: &str) -> bool {
    let Some((local, domain)) = e.rsplit_once('@') else {
        return false;
    };
    const LOCAL_EXTRA: &str = ".!#$%&'*+/=?^_`{|}~-";
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .chars()
            .all(|c| c.is_alphanumeric() || LOCAL_EXTRA.contains(c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

/// E.164 digits without `+`, spaces, dashes or parentheses.
pub fn validate_phone(raw: &str) -> AuthResult<String> {
    let p: String = raw
        .trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let ok =
        (2..=15).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()) && !p.starts_with('0');
    if ok {
        Ok(p)
    } else {
        Err(AuthError::invalid_phone())
    }
}

/// GoTrue's refresh tokens: 12 random alphanumerics (lower case).
pub fn refresh_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(12)
        .map(|c| (c as char).to_ascii_lowercase())
        .collect()
}

/// An SQL identifier, double-quoted (embedded quotes doubled).
pub use crate::db::quote_ident;

/// `schema.function` or `pg-functions://<db>/<schema>/<function>` as (schema, function).
pub fn hook_function(spec: &str) -> Option<(String, String)> {
    let s = spec.trim();
    let (schema, func) = match s.strip_prefix("pg-functions://") {
        Some(rest) => {
            let mut parts = rest.split('/');
            let (_db, schema, func) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            (schema, func)
        }
        None => s.split_once('.')?,
    };
    (!schema.is_empty() && !func.is_empty()).then(|| (schema.to_string(), func.to_string()))
}

/// A six-digit one-time code.
pub fn otp() -> String {
    format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What is stored and put in links for an OTP sent to `address` (GoTrue: sha224 hex of
/// address + code).
pub fn token_hash(address: &str, otp: &str) -> String {
    hex(&Sha224::digest(format!("{address}{otp}").as_bytes()))
}

/// PKCE: does `verifier` match the stored challenge?
pub fn pkce_matches(method: &str, challenge: &str, verifier: &str) -> bool {
    use base64::Engine;
    match method {
        "s256" => {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()))
                == challenge.trim_end_matches('=')
        }
        "plain" => verifier == challenge,
        _ => false,
    }
}

/// Check PKCE parameters as GoTrue does; `Ok(None)` when there are none.
pub fn pkce_params(
    challenge: Option<&str>,
    method: Option<&str>,
) -> AuthResult<Option<(String, String)>> {
    match (
        challenge.filter(|s| !s.is_empty()),
        method.filter(|s| !s.is_empty()),
    ) {
        (None, None) => Ok(None),
        (Some(c), Some(m)) => {
            let m = m.to_lowercase();
            if m != "s256" && m != "plain" {
                return Err(AuthError::validation(format!(
                    "code challenge method not supported: {m}"
                )));
            }
            if !(43..=128).contains(&c.len()) {
                return Err(AuthError::validation(
                    "code challenge has to be between 43 and 128 characters",
                ));
            }
            if !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-._~".contains(ch))
            {
                return Err(AuthError::validation("code challenge can only contain alphanumeric characters, hyphens, periods, underscores and tildes"));
            }
            Ok(Some((c.to_string(), m)))
        }
        _ => Err(AuthError::validation(
            "PKCE flow requires code_challenge_method and code_challenge",
        )),
    }
}

/// A Go duration (`"24h"`, `"1h30m"`, `"90s"`) in seconds; `ban_duration` uses these.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Some(if neg { -total } else { total })
}

/// The redirect a link leads to: `requested` when allowed (same origin as site_url, or
/// matching an additional URL, where `*` matches within a path segment and `**` anything),
/// else site_url.
pub fn redirect_for(cfg: &crate::config::AuthConfig, requested: Option<&str>) -> String {
    let Some(r) = requested.map(str::trim).filter(|r| !r.is_empty()) else {
        return cfg.site_url.clone();
    };
    let origin = |u: &str| -> Option<String> {
        let (scheme, rest) = u.split_once("://")?;
        let host = rest.split(['/', '?', '#']).next()?;
        Some(format!(
            "{}://{}",
            scheme.to_lowercase(),
            host.to_lowercase()
        ))
    };
    if origin(r).is_some() && origin(r) == origin(&cfg.site_url) {
        return r.to_string();
    }
    for allowed in &cfg.additional_redirect_urls {
        if glob_match(allowed, r)
            || origin(r).is_some()
                && origin(r) == origin(allowed)
                && !allowed.contains('*')
                && r.starts_with(allowed.as_str())
        {
            return r.to_string();
        }
    }
    cfg.site_url.clone()
}

fn glob_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => (0..=s.len()).any(|i| go(&p[2..], &s[i..])),
            Some(b'*') => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != b'/')
                .any(|i| go(&p[1..], &s[i..])),
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    go(pattern.as_bytes(), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(validate_email(" A@Example.COM ").unwrap(), "a@example.com");
        for bad in ["xx:;x@x.x", "a@b", "@b.c", "a@", "a b@c.d", "a@b..c", ""] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_email("xx:;x@x.x").unwrap_err().message,
            "Unable to validate email address: invalid format"
        );
    }

    #[test]
    fn phones() {
        assert_eq!(validate_phone("+1 (555) 010-9999").unwrap(), "15550109999");
        assert!(validate_phone("12345-invalid").is_err());
        assert!(validate_phone("0123").is_err());
    }

    #[test]
    fn tokens_and_pkce() {
        let t = refresh_token();
        assert_eq!(t.len(), 12);
        assert_ne!(t, refresh_token());
        assert_eq!(otp().len(), 6);
        assert_eq!(token_hash("a@b.c", "123456").len(), 56);
        // RFC 7636 appendix B.
        assert!(pkce_matches(
            "s256",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!pkce_matches(
            "s256",
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "x"
        ));
        assert!(pkce_params(Some("short"), Some("s256")).is_err());
        assert!(pkce_params(Some(&"a".repeat(43)), None).is_err());
        assert!(pkce_params(None, None).unwrap().is_none());
    }

    #[test]
    fn identifiers_and_hooks() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            hook_function("pg-functions://postgres/public/custom_access_token_hook"),
            Some(("public".into(), "custom_access_token_hook".into()))
        );
        assert_eq!(
            hook_function("app.hook"),
            Some(("app".into(), "hook".into()))
        );
        assert_eq!(hook_function("nohook"), None);
        assert_eq!(hook_function("pg-functions://postgres/public"), None);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("24h"), Some(86400.0));
        assert_eq!(parse_go_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_go_duration("500ms"), Some(0.5));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("x"), None);
    }

    #[test]
    fn redirects() {
        let c = crate::config::AuthConfig {
            additional_redirect_urls: vec!["http://localhost:5173/**".into()],
            ..Default::default()
        };
        assert_eq!(redirect_for(&c, None), c.site_url);
        assert_eq!(
            redirect_for(&c, Some("http://localhost:3000/cb")),
            "http://localhost:3000/cb"
        );
        assert_eq!(
            redirect_for(&c, Some("http://localhost:5173/a/b")),
            "http://localhost:5173/a/b"
        );
        assert_eq!(redirect_for(&c, Some("https://evil.test/")), c.site_url);
    }
}
