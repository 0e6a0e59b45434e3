//! JWT keys: the HS256 secret, plus asymmetric JWKs (RS256/ES256) read from
//! `jwt_keys_file`. A token verifies if any configured key accepts it; issued tokens are
//! signed with the first private JWK when there is one, else with the HS256 secret.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("JWT expired")]
    Expired,
    #[error("invalid JWT: unable to parse or verify signature, {0}")]
    Invalid(String),
    #[error("Invalid API key")]
    InvalidApiKey,
}

pub struct JwtKeys {
    hs_secret: Vec<u8>,
    /// (kid, alg, key) for every trusted asymmetric key.
    asym: Vec<(Option<String>, Algorithm, DecodingKey)>,
    /// Public halves, served at /auth/v1/.well-known/jwks.json.
    public_jwks: Vec<Value>,
    /// Signing key for issued access tokens (kid, alg, key); HS256 when None.
    signer: Option<(Option<String>, Algorithm, EncodingKey)>,
}

impl JwtKeys {
    pub fn new(secret: &str) -> JwtKeys {
        JwtKeys {
            hs_secret: secret.as_bytes().to_vec(),
            asym: vec![],
            public_jwks: vec![],
            signer: None,
        }
    }

    /// Load a JWK, an array of JWKs, or a `{keys:[...]}` set from JSON text.
    pub fn add_jwks_json(&mut self, text: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let list = match v {
            Value::Array(a) => a,
            Value::Object(ref m) if m.contains_key("keys") => m["keys"]
                .as_array()
                .cloned()
                .ok_or("keys is not an array")?,
            Value::Object(_) => vec![v],
            _ => return Err("expected a JWK object or an array of them".into()),
        };
        for k in list {
            let jwk: Jwk =
                serde_json::from_value(k.clone()).map_err(|e| format!("bad JWK: {e}"))?;
            let alg = match k.get("alg").and_then(Value::as_str) {
                Some("RS256") => Algorithm::RS256,
                Some("ES256") => Algorithm::ES256,
                Some("HS256") => continue,
                Some(other) => return Err(format!("unsupported JWK alg {other}")),
                None => match k.get("kty").and_then(Value::as_str) {
                    Some("RSA") => Algorithm::RS256,
                    Some("EC") => Algorithm::ES256,
                    _ => return Err("JWK without a usable alg/kty".into()),
                },
            };
            let kid = jwk.common.key_id.clone();
            let dk = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad JWK: {e}"))?;
            self.asym.push((kid.clone(), alg, dk));
            let mut public = serde_json::Map::new();
            for (name, val) in k.as_object().into_iter().flatten() {
                if !matches!(
                    name.as_str(),
                    "d" | "p" | "q" | "dp" | "dq" | "qi" | "oth" | "key_ops"
                ) {
                    public.insert(name.clone(), val.clone());
                }
            }
            public.insert("key_ops".into(), serde_json::json!(["verify"]));
            self.public_jwks.push(Value::Object(public));
            if self.signer.is_none() && k.get("d").is_some() {
                if let Some(ek) = private_jwk_to_encoding_key(&k, alg) {
                    self.signer = Some((kid, alg, ek));
                }
            }
        }
        Ok(())
    }

    pub fn public_jwks(&self) -> Value {
        serde_json::json!({ "keys": self.public_jwks })
    }

    /// Verify signature and `exp` (when present); returns the claims.
    pub fn verify(&self, token: &str) -> Result<Value, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| JwtError::Invalid(format!("malformed token: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let result = match header.alg {
            Algorithm::HS256 => jsonwebtoken::decode::<Value>(
                token,
                &DecodingKey::from_secret(&self.hs_secret),
                &validation,
            ),
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let mut last = None;
                let candidates = self.asym.iter().filter(|(kid, a, _)| {
                    *a == alg && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
                });
                let mut found = None;
                for (_, _, key) in candidates {
                    match jsonwebtoken::decode::<Value>(token, key, &validation) {
                        Ok(d) => {
                            found = Some(Ok(d));
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                match (found, last) {
                    (Some(r), _) => r,
                    (None, Some(e)) => Err(e),
                    (None, None) => {
                        return Err(JwtError::Invalid("no matching signing key".into()))
                    }
                }
            }
            other => {
                return Err(JwtError::Invalid(format!(
                    "signing method {other:?} is not allowed"
                )))
            }
        };
        match result {
            Ok(data) => {
                if !data.claims.is_object() {
                    return Err(JwtError::Invalid("claims are not an object".into()));
                }
                Ok(data.claims)
            }
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(JwtError::Expired),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    Err(JwtError::Invalid("signature is invalid".into()))
                }
                _ => Err(JwtError::Invalid(e.to_string())),
            },
        }
    }

    /// Sign claims with the issuing key.
    pub fn sign(&self, claims: &Value) -> String {
        match &self.signer {
            Some((kid, alg, key)) => {
                let mut h = Header::new(*alg);
                h.kid = kid.clone();
                jsonwebtoken::encode(&h, claims, key).expect("signing with a loaded key")
            }
            None => self.sign_hs256(claims),
        }
    }

    pub fn sign_hs256(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&self.hs_secret),
        )
        .expect("HS256 signing cannot fail")
    }

    pub fn hs_secret(&self) -> &[u8] {
        &self.hs_secret
    }
}

/// A private JWK as a signing key. RSA keys are re-encoded as PKCS#1 DER, EC P-256 keys
/// as PKCS#8 DER (what jsonwebtoken's ring backend takes).
fn private_jwk_to_encoding_key(k: &Value, alg: Algorithm) -> Option<EncodingKey> {
    use base64::Engine;
    let b = |name: &str| -> Option<Vec<u8>> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(k.get(name)?.as_str()?.trim_end_matches('='))
            .ok()
    };
    match alg {
        Algorithm::RS256 => {
            let parts = ["n", "e", "d", "p", "q", "dp", "dq", "qi"]
                .iter()
                .map(|n| b(n))
                .collect::<Option<Vec<_>>>()?;
            let mut body = der_uint(&[0]);
            for p in &parts {
                body.extend(der_uint(p));
            }
            Some(EncodingKey::from_rsa_der(&der_tlv(0x30, &body)))
        }
        Algorithm::ES256 => {
            let (d, x, y) = (b("d")?, b("x")?, b("y")?);
            // ECPrivateKey { version 1, privateKey, [1] publicKey }
            let mut point = vec![0x04];
            point.extend(&x);
            point.extend(&y);
            let mut bitstr = vec![0];
            bitstr.extend(point);
            let mut ec = der_uint(&[1]);
            ec.extend(der_tlv(0x04, &d));
            ec.extend(der_tlv(0xa1, &der_tlv(0x03, &bitstr)));
            let ec = der_tlv(0x30, &ec);
            // PrivateKeyInfo { 0, { id-ecPublicKey, prime256v1 }, OCTET STRING ec }
            let algid = der_tlv(
                0x30,
                &[
                    der_tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
                    der_tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
                ]
                .concat(),
            );
            let mut pki = der_uint(&[0]);
            pki.extend(algid);
            pki.extend(der_tlv(0x04, &ec));
            Some(EncodingKey::from_ec_der(&der_tlv(0x30, &pki)))
        }
        _ => None,
    }
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        let mut v = vec![0x80 | bytes.len() as u8];
        v.extend(bytes);
        v
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(der_len(content.len()));
    v.extend_from_slice(content);
    v
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = bytes.iter().copied().skip_while(|x| *x == 0).collect();
    if b.is_empty() || b[0] & 0x80 != 0 {
        b.insert(0, 0);
    }
    der_tlv(0x02, &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_JWT_SECRET;
    use serde_json::json;

    const ANON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";

    #[test]
    fn well_known_anon_key_verifies() {
        let k = JwtKeys::new(DEFAULT_JWT_SECRET);
        assert_eq!(k.verify(ANON).unwrap()["role"], "anon");
        assert!(JwtKeys::new("another-secret-another-secret-another")
            .verify(ANON)
            .is_err());
    }

    #[test]
    fn expired_tampered_and_none_are_rejected() {
        let k = JwtKeys::new(DEFAULT_JWT_SECRET);
        let expired = k.sign_hs256(&json!({"role":"anon","exp": 1000}));
        assert_eq!(k.verify(&expired), Err(JwtError::Expired));
        let good = k.sign_hs256(&json!({"role":"authenticated","exp": 4_000_000_000u64}));
        assert!(k.verify(&good).is_ok());
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        parts[1] = base64_url(br#"{"role":"service_role","exp":4000000000}"#);
        assert!(matches!(
            k.verify(&parts.join(".")),
            Err(JwtError::Invalid(_))
        ));
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(br#"{"role":"service_role"}"#)
        );
        assert!(matches!(k.verify(&none), Err(JwtError::Invalid(_))));
        assert!(matches!(k.verify("garbage"), Err(JwtError::Invalid(_))));
        assert!(matches!(k.verify(""), Err(JwtError::Invalid(_))));
        // No exp at all is accepted (as PostgREST).
        assert!(k.verify(&k.sign_hs256(&json!({"role":"anon"}))).is_ok());
    }

    fn base64_url(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}
