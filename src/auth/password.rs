//! Passwords: bcrypt like GoTrue (so hashes imported from Supabase keep working), run on
//! the blocking pool because a hash costs tens of milliseconds, and the strength rules.

use super::error::{AuthError, AuthResult};
use crate::config::AuthConfig;

/// A hash of nothing in particular at the configured cost, verified when the user does not
/// exist or has no password, so the answer takes as long. It is made once, on the blocking
/// pool, by the first caller or by the warm-up that `auth::spawn_background` starts after
/// the server listens (a hash costs as long as a sign-in, so start-up does not wait for it).
pub struct DummyHash {
    cost: u32,
    hash: tokio::sync::OnceCell<String>,
}

impl DummyHash {
    pub fn new(cost: u32) -> DummyHash {
        DummyHash {
            cost,
            hash: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn get(&self) -> &str {
        let cost = self.cost;
        self.hash
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || dummy_hash(cost))
                    .await
                    .unwrap_or_default()
            })
            .await
    }
}

fn dummy_hash(cost: u32) -> String {
    bcrypt::hash("oxibase-timing-equalizer", cost).unwrap_or_default()
}

pub async fn hash(password: &str, cost: u32) -> AuthResult<String> {
    let p = password.to_string();
    tokio::task::spawn_blocking(move || bcrypt::hash(p, cost))
        .await
        .map_err(|e| AuthError::internal("Error during password storage", e.to_string()))?
        .map_err(|e| AuthError::internal("Error during password storage", e.to_string()))
}

/// Does `password` match `stored`? A missing or malformed hash never matches.
pub async fn verify(password: &str, stored: Option<&str>, dummy: &DummyHash) -> bool {
    let p = password.to_string();
    let (h, real) = match stored.filter(|s| s.starts_with("$2")) {
        Some(s) => (s.to_string(), true),
        None => (dummy.get().await.to_string(), false),
    };
    let ok = tokio::task::spawn_blocking(move || bcrypt::verify(p, &h).unwrap_or(false))
        .await
        .unwrap_or(false);
    ok && real
}

/// GoTrue's weak-password checks: minimum length, then required character sets.
pub fn check_strength(cfg: &AuthConfig, password: &str) -> AuthResult<()> {
    // bcrypt reads at most 72 bytes; GoTrue refuses longer passwords outright.
    if password.len() > 72 {
        return Err(AuthError::validation(
            "Password cannot be longer than 72 characters",
        ));
    }
    let (mut messages, mut reasons) = (vec![], vec![]);
    let min = cfg.minimum_password_length;
    if password.chars().count() < min {
        messages.push(format!("Password should be at least {min} characters."));
        reasons.push("length");
    }
    const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
    const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const DIGITS: &str = "0123456789";
    const SYMBOLS: &str = "!@#$%^&*()_+-=[]{};'\\:\"|<>?,./`~";
    const LETTERS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let sets: &[&str] = match cfg.password_requirements.as_str() {
        "letters_digits" => &[LETTERS, DIGITS],
        "lower_upper_letters_digits" => &[LOWER, UPPER, DIGITS],
        "lower_upper_letters_digits_symbols" => &[LOWER, UPPER, DIGITS, SYMBOLS],
        _ => &[],
    };
    if sets
        .iter()
        .any(|set| !password.chars().any(|c| set.contains(c)))
    {
        messages.push(format!(
            "Password should contain at least one character of each: {}.",
            sets.join(", ")
        ));
        reasons.push("characters");
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(AuthError::weak_password(messages.join(" "), reasons))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_rules() {
        let mut c = AuthConfig::default();
        let e = check_strength(&c, "12345").unwrap_err();
        assert_eq!(e.message, "Password should be at least 6 characters.");
        assert_eq!(e.reasons, Some(vec!["length"]));
        assert!(check_strength(&c, "123456").is_ok());
        c.password_requirements = "lower_upper_letters_digits".into();
        let e = check_strength(&c, "abcdef1").unwrap_err();
        assert_eq!(e.reasons, Some(vec!["characters"]));
        assert!(check_strength(&c, "abcDef1").is_ok());
        let e = check_strength(&c, "abc").unwrap_err();
        assert_eq!(e.reasons, Some(vec!["length", "characters"]));
        let e = check_strength(&c, &"aB1".repeat(30)).unwrap_err();
        assert_eq!(e.code, "validation_failed");
    }

    #[tokio::test]
    async fn bcrypt_roundtrip_and_imported_hashes() {
        let h = hash("secret-pw", 4).await.unwrap();
        let dummy = DummyHash::new(4);
        assert!(verify("secret-pw", Some(&h), &dummy).await);
        assert!(!verify("wrong", Some(&h), &dummy).await);
        assert!(!verify("oxibase-timing-equalizer", None, &dummy).await);
        assert!(dummy.get().await.starts_with("$2"));
    }
}
