//! Token checks with Supabase Realtime's rules and texts: a JWT needs `role` and `exp`;
//! `sb_…` API keys map to their role.

use serde_json::Value;

use crate::identity::AuthContext;
use crate::jwt::JwtError;
use crate::state::AppState;

#[derive(Debug, Clone, PartialEq)]
pub enum TokenError {
    Expired(String),
    MissingClaims,
    Malformed,
    Signature,
    InvalidApiKey,
}

impl TokenError {
    /// The text Supabase puts in a join error reason (`Code: message`).
    pub fn reason(&self) -> String {
        match self {
            TokenError::Expired(m) => format!("InvalidJWTToken: {m}"),
            TokenError::MissingClaims => {
                "InvalidJWTToken: Fields `role` and `exp` are required in JWT".into()
            }
            TokenError::Malformed => "MalformedJWT: The token provided is not a valid JWT".into(),
            TokenError::Signature => "JwtSignatureError: Failed to validate JWT signature".into(),
            TokenError::InvalidApiKey => "InvalidJWTToken: Invalid API key".into(),
        }
    }
    /// The bare message (system messages and HTTP errors).
    pub fn message(&self) -> String {
        let r = self.reason();
        match r.split_once(": ") {
            Some((_, m)) => m.to_string(),
            None => r,
        }
    }
}

fn unverified_exp(token: &str) -> Option<i64> {
    use base64::Engine;
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_i64()
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Verify a token: the caller's context and the expiry (None for API keys without one).
pub fn verify(state: &AppState, token: &str) -> Result<(AuthContext, Option<i64>), TokenError> {
    if token.starts_with("sb_") {
        return state
            .keys
            .resolve(token)
            .map(|c| (c, None))
            .map_err(|_| TokenError::InvalidApiKey);
    }
    if token.split('.').count() != 3 {
        return Err(TokenError::Malformed);
    }
    match state.keys.resolve(token) {
        Ok(ctx) => {
            let exp = ctx.claims.get("exp").and_then(Value::as_i64);
            let role = ctx.claims.get("role").and_then(Value::as_str);
            match (exp, role) {
                (Some(exp), Some(_)) => {
                    if exp <= now() {
                        return Err(TokenError::Expired(format!(
                            "Token has expired {} seconds ago",
                            now() - exp
                        )));
                    }
                    Ok((ctx, Some(exp)))
                }
                _ => Err(TokenError::MissingClaims),
            }
        }
        Err(JwtError::Expired) => {
            let ago = unverified_exp(token)
                .map(|e| (now() - e).max(0))
                .unwrap_or(0);
            Err(TokenError::Expired(format!(
                "Token has expired {ago} seconds ago"
            )))
        }
        Err(JwtError::InvalidApiKey) => Err(TokenError::InvalidApiKey),
        Err(JwtError::Invalid(m)) => {
            if m.to_ascii_lowercase().contains("signature") {
                Err(TokenError::Signature)
            } else {
                Err(TokenError::Malformed)
            }
        }
    }
}
