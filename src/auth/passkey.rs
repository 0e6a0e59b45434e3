//! Passkeys: discoverable WebAuthn credentials (ES256, attestation "none") for
//! password-less sign-in. Registration needs a session; authentication does not, the
//! user is found from the credential. Challenges are single use and expire.

use base64::Engine;
use chrono::Utc;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::{AuthError, AuthResult, RowExt};
use super::guard::AuthedUser;
use super::tx::{as_admin, execute_found};
use super::{load_token_user, no_content, ok, session, users, Call};
use crate::db::error::{DbClass, DbError};
use crate::http::Resp;
use crate::state::AppState;
use cbor::Get;

const CHALLENGE_SECS: i64 = 300;
const MAX_PASSKEYS: i64 = 25;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn disabled() -> AuthError {
    AuthError::unprocessable("passkey_disabled", "Passkeys are disabled")
}

fn failed() -> AuthError {
    AuthError::bad_request(
        "webauthn_verification_failed",
        "Credential verification failed",
    )
}

fn not_found() -> AuthError {
    AuthError::not_found("validation_failed", "Passkey not found")
}

/// The passkey endpoints of a signed-in user.
pub async fn route_user(
    state: &AppState,
    call: &Call,
    t: AuthedUser,
    rest: &[&str],
) -> AuthResult<Resp> {
    if !state.config.auth.passkeys {
        return Err(disabled());
    }
    match (call.method.as_str(), rest) {
        ("POST", ["registration", "options"]) => registration_options(state, t).await,
        ("POST", ["registration", "verify"]) => registration_verify(state, call, t).await,
        ("GET", []) => list_own(state, t).await,
        ("PATCH", [id]) => rename(state, call, t, id).await,
        ("DELETE", [id]) => delete_own(state, t, id).await,
        _ => Err(not_supported(call, rest)),
    }
}

/// Signing in with a passkey (`/passkeys/authentication/...`): no user yet.
pub async fn route_public(state: &AppState, call: &Call, rest: &[&str]) -> AuthResult<Resp> {
    if !state.config.auth.passkeys {
        return Err(disabled());
    }
    match (call.method.as_str(), rest) {
        ("POST", ["authentication", "options"]) => authentication_options(state).await,
        ("POST", ["authentication", "verify"]) => authentication_verify(state, call).await,
        _ => Err(not_supported(call, rest)),
    }
}

fn not_supported(call: &Call, rest: &[&str]) -> AuthError {
    AuthError::not_found(
        "not_found",
        format!(
            "{} /auth/v1/passkeys/{} is not supported",
            call.method,
            rest.join("/")
        ),
    )
}

fn rp_id(state: &AppState) -> String {
    let a = &state.config.auth;
    if !a.webauthn_rp_id.is_empty() {
        return a.webauthn_rp_id.clone();
    }
    let host = a
        .site_url
        .split_once("://")
        .map_or(a.site_url.as_str(), |(_, r)| r);
    let host = host.split(['/', '?', '#']).next().unwrap_or("");
    host.rsplit_once(':').map_or(host, |(h, _)| h).to_string()
}

fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{host}"))
}

fn origins(state: &AppState) -> Vec<String> {
    let a = &state.config.auth;
    if !a.webauthn_rp_origins.is_empty() {
        return a.webauthn_rp_origins.clone();
    }
    std::iter::once(&a.site_url)
        .chain(a.additional_redirect_urls.iter())
        .filter_map(|u| origin_of(u))
        .collect()
}

fn new_challenge() -> String {
    let mut b = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    B64.encode(b)
}

async fn registration_options(state: &AppState, t: AuthedUser) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        let existing = tx
            .query(
                "select credential_id from auth.webauthn_credentials where user_id = $1",
                &[&u.id],
            )
            .await.map_err(AuthError::pg)?;
        if existing.len() as i64 >= MAX_PASSKEYS {
            return Err(AuthError::unprocessable(
                "too_many_passkeys",
                "Maximum number of passkeys reached",
            ));
        }
        let challenge = new_challenge();
        let id = Uuid::new_v4();
        tx.execute(
            "insert into auth.webauthn_challenges (id, user_id, challenge_type, challenge, expires_at)
             values ($1, $2, 'registration', $3, now() + make_interval(secs => $4))",
            &[&id, &u.id, &challenge, &(CHALLENGE_SECS as f64)],
        )
        .await.map_err(AuthError::pg)?;
        let name = u.email.clone().or(u.phone.clone()).unwrap_or_else(|| u.id.to_string());
        let exclude: Vec<Value> = existing
            .iter()
            .map(|r| -> AuthResult<Value> {
                Ok(json!({"type": "public-key", "id": B64.encode(r.col::<Vec<u8>>(0)?)}))
            })
            .collect::<AuthResult<_>>()?;
        Ok(json!({
            "challenge_id": id,
            "expires_at": Utc::now().timestamp() + CHALLENGE_SECS,
            "options": {
                "rp": {"name": "oxibase", "id": rp_id(state)},
                "user": {"name": name, "displayName": name, "id": B64.encode(u.id.as_bytes())},
                "challenge": challenge,
                "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
                "timeout": CHALLENGE_SECS * 1000,
                "excludeCredentials": exclude,
                "authenticatorSelection": {"residentKey": "required", "requireResidentKey": true, "userVerification": "preferred"},
                "attestation": "none",
            },
        }))
    })
    .await
    .map(ok)
}

/// Take a challenge out of the table (single use); `user` restricts registrations.
async fn consume_challenge(
    tx: &tokio_postgres::Transaction<'_>,
    call: &Call,
    kind: &str,
    user: Option<Uuid>,
) -> AuthResult<String> {
    let cid = call
        .s("challenge_id")
        .ok_or_else(|| AuthError::validation("challenge_id is required"))?;
    if call.body.get("credential").is_none_or(Value::is_null) {
        return Err(AuthError::validation("credential is required"));
    }
    let cid: Uuid = cid
        .parse()
        .map_err(|_| AuthError::validation("challenge_id must be a valid UUID"))?;
    let row = tx
        .query_opt(
            "delete from auth.webauthn_challenges where id = $1 and challenge_type = $2
               and ($3::uuid is null or user_id = $3) returning challenge, expires_at < now()",
            &[&cid, &kind, &user],
        )
        .await
        .map_err(AuthError::pg)?
        .ok_or_else(|| {
            AuthError::bad_request(
                "webauthn_challenge_not_found",
                "Challenge not found or already used",
            )
        })?;
    if row.col::<bool>(1)? {
        return Err(
            AuthError::bad_request("webauthn_challenge_expired", "Challenge has expired")
                .keep_commit(),
        );
    }
    row.col(0)
}

fn b64_field(v: &Value, path: &[&str]) -> AuthResult<Vec<u8>> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p).ok_or_else(|| {
            AuthError::bad_request(
                "webauthn_verification_failed",
                "Invalid credential response",
            )
        })?;
    }
    let s = cur.as_str().ok_or_else(|| {
        AuthError::bad_request(
            "webauthn_verification_failed",
            "Invalid credential response",
        )
    })?;
    B64.decode(s.trim_end_matches('=')).map_err(|_| {
        AuthError::bad_request(
            "webauthn_verification_failed",
            "Invalid credential response",
        )
    })
}

/// clientDataJSON: the ceremony type, our challenge, an allowed origin.
fn check_client_data(state: &AppState, raw: &[u8], kind: &str, challenge: &str) -> AuthResult<()> {
    let cd: Value = serde_json::from_slice(raw).map_err(|_| failed())?;
    let origin = cd["origin"].as_str().unwrap_or("");
    if cd["type"] != kind
        || cd["challenge"].as_str().map(|c| c.trim_end_matches('=')) != Some(challenge)
        || !origins(state).iter().any(|o| o == origin)
    {
        return Err(failed());
    }
    Ok(())
}

/// The fixed head of authenticator data: rpIdHash, flags (user present), sign count.
fn check_auth_data(state: &AppState, ad: &[u8]) -> AuthResult<(u8, u32)> {
    if ad.len() < 37 || ad[..32] != Sha256::digest(rp_id(state).as_bytes())[..] {
        return Err(failed());
    }
    let flags = ad[32];
    if flags & 0x01 == 0 {
        return Err(failed());
    }
    Ok((flags, u32::from_be_bytes([ad[33], ad[34], ad[35], ad[36]])))
}

async fn registration_verify(state: &AppState, call: &Call, t: AuthedUser) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let u = load_token_user(tx, &t).await?;
        let challenge = consume_challenge(tx, call, "registration", Some(u.id)).await?;
        let cred = &call.body["credential"];
        let client_data = b64_field(cred, &["response", "clientDataJSON"])?;
        let att = b64_field(cred, &["response", "attestationObject"])?;
        check_client_data(state, &client_data, "webauthn.create", &challenge).map_err(AuthError::keep_commit)?;
        let (att, _) = cbor::decode(&att).ok_or_else(failed)?;
        let ad = att.get_text("authData").and_then(|v| v.bytes()).ok_or_else(failed)?;
        let (flags, count) = check_auth_data(state, ad)?;
        if flags & 0x40 == 0 || ad.len() < 55 {
            return Err(failed());
        }
        let aaguid = Uuid::from_slice(&ad[37..53]).ok();
        let id_len = u16::from_be_bytes([ad[53], ad[54]]) as usize;
        let cred_id = ad.get(55..55 + id_len).ok_or_else(failed)?.to_vec();
        let (cose, _) = cbor::decode(&ad[55 + id_len..]).ok_or_else(failed)?;
        let key = cose_es256(&cose).ok_or_else(|| {
            AuthError::bad_request("webauthn_verification_failed", "Only ES256 (P-256) passkeys are supported")
        })?;
        let transports = cred["response"]["transports"].clone();
        let id = Uuid::new_v4();
        let res = tx
            .query_one(
                "insert into auth.webauthn_credentials (id, user_id, credential_id, public_key, aaguid, sign_count,
                   transports, backup_eligible, backed_up)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9) returning created_at",
                &[
                    &id,
                    &u.id,
                    &cred_id,
                    &key,
                    &aaguid,
                    &(count as i64),
                    &if transports.is_array() { transports } else { json!([]) },
                    &(flags & 0x08 != 0),
                    &(flags & 0x10 != 0),
                ],
            )
            .await;
        match res {
            Ok(row) => Ok(json!({"id": id, "created_at": row.col::<chrono::DateTime<Utc>>(0)?})),
            Err(e) if DbError::of(&e).class == DbClass::UniqueViolation => Err(
                AuthError::unprocessable("webauthn_credential_exists", "This credential is already registered"),
            ),
            Err(e) => Err(AuthError::pg(e)),
        }
    })
    .await
    .map(ok)
}

async fn authentication_options(state: &AppState) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let challenge = new_challenge();
        let id = Uuid::new_v4();
        tx.execute(
            "insert into auth.webauthn_challenges (id, challenge_type, challenge, expires_at)
             values ($1, 'authentication', $2, now() + make_interval(secs => $3))",
            &[&id, &challenge, &(CHALLENGE_SECS as f64)],
        )
        .await
        .map_err(AuthError::pg)?;
        Ok(json!({
            "challenge_id": id,
            "expires_at": Utc::now().timestamp() + CHALLENGE_SECS,
            "options": {
                "challenge": challenge,
                "timeout": CHALLENGE_SECS * 1000,
                "rpId": rp_id(state),
                "allowCredentials": [],
                "userVerification": "preferred",
            },
        }))
    })
    .await
    .map(ok)
}

async fn authentication_verify(state: &AppState, call: &Call) -> AuthResult<Resp> {
    as_admin(state, async |tx| {
        let challenge = consume_challenge(tx, call, "authentication", None).await?;
        // From here on a failure still spends the challenge.
        let verified: AuthResult<(Uuid, Uuid, i64)> = async {
            let cred = &call.body["credential"];
            let raw_id = b64_field(cred, &["rawId"]).or_else(|_| b64_field(cred, &["id"]))?;
            let client_data = b64_field(cred, &["response", "clientDataJSON"])?;
            let ad = b64_field(cred, &["response", "authenticatorData"])?;
            let sig = b64_field(cred, &["response", "signature"])?;
            let row = tx
                .query_opt(
                    "select id, user_id, public_key, sign_count from auth.webauthn_credentials
                     where credential_id = $1 for update",
                    &[&raw_id],
                )
                .await.map_err(AuthError::pg)?
                .ok_or_else(failed)?;
            let (pk_id, user_id, key, stored): (Uuid, Uuid, Vec<u8>, i64) =
                (row.col(0)?, row.col(1)?, row.col(2)?, row.col(3)?);
            check_client_data(state, &client_data, "webauthn.get", &challenge)?;
            let (_, count) = check_auth_data(state, &ad)?;
            let mut msg = ad.clone();
            msg.extend_from_slice(&Sha256::digest(&client_data));
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &key)
                .verify(&msg, &sig)
                .map_err(|_| failed())?;
            if let Ok(handle) = b64_field(cred, &["response", "userHandle"]) {
                if !handle.is_empty() && handle != user_id.as_bytes() {
                    return Err(AuthError::validation("Invalid user handle in assertion"));
                }
            }
            if stored > 0 && (count as i64) <= stored {
                return Err(failed());
            }
            Ok((pk_id, user_id, count as i64))
        }
        .await;
        let (pk_id, user_id, count) = verified.map_err(AuthError::keep_commit)?;
        let u = users::by_id(tx, user_id).await?.ok_or_else(failed)?;
        if u.deleted_at.is_some() {
            return Err(failed());
        }
        if u.is_banned() {
            return Err(AuthError::forbidden("user_banned", "User is banned"));
        }
        tx.execute(
            "update auth.webauthn_credentials set sign_count = $2, last_used_at = now(), updated_at = now() where id = $1",
            &[&pk_id, &count],
        )
        .await.map_err(AuthError::pg)?;
        session::issue(state, tx, user_id, "passkey", &call.origin()).await
    })
    .await
    .map(ok)
}

fn item(r: &tokio_postgres::Row) -> AuthResult<Value> {
    let mut v = json!({
        "id": r.col::<Uuid>(0)?,
        "friendly_name": r.col::<Option<String>>(1)?,
        "created_at": r.col::<chrono::DateTime<Utc>>(2)?,
        "last_used_at": r.col::<Option<chrono::DateTime<Utc>>>(3)?,
    });
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    Ok(v)
}

const ITEM_COLS: &str = "id, friendly_name, created_at, last_used_at";

pub async fn list_for(state: &AppState, user_id: Uuid) -> AuthResult<Value> {
    as_admin(state, async |tx| {
        let rows = tx
            .query(
                &format!("select {ITEM_COLS} from auth.webauthn_credentials where user_id = $1 order by created_at"),
                &[&user_id],
            )
            .await.map_err(AuthError::pg)?;
        Ok(Value::Array(
            rows.iter().map(item).collect::<AuthResult<_>>()?,
        ))
    })
    .await
}

pub async fn delete_for(state: &AppState, user_id: Uuid, id: &str) -> AuthResult<Resp> {
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    execute_found(
        state,
        "delete from auth.webauthn_credentials where id = $1 and user_id = $2",
        &[&id, &user_id],
        not_found,
    )
    .await?;
    Ok(no_content())
}

async fn list_own(state: &AppState, t: AuthedUser) -> AuthResult<Resp> {
    Ok(ok(list_for(state, t.user_id).await?))
}

async fn delete_own(state: &AppState, t: AuthedUser, id: &str) -> AuthResult<Resp> {
    delete_for(state, t.user_id, id).await
}

async fn rename(state: &AppState, call: &Call, t: AuthedUser, id: &str) -> AuthResult<Resp> {
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let name = call
        .s("friendly_name")
        .ok_or_else(|| AuthError::validation("friendly_name is required"))?;
    if name.chars().count() > 120 {
        return Err(AuthError::validation(
            "friendly_name must be 120 characters or less",
        ));
    }
    as_admin(state, async |tx| {
        let row = tx
            .query_opt(
                &format!(
                    "update auth.webauthn_credentials set friendly_name = $3, updated_at = now()
                          where id = $1 and user_id = $2 returning {ITEM_COLS}"
                ),
                &[&id, &t.user_id, &name],
            )
            .await
            .map_err(AuthError::pg)?
            .ok_or_else(not_found)?;
        item(&row)
    })
    .await
    .map(ok)
}

/// An uncompressed P-256 point (04 || x || y) from a COSE_Key with kty EC2, alg ES256.
fn cose_es256(k: &cbor::Value) -> Option<Vec<u8>> {
    if k.get_int(1)?.int()? != 2 || k.get_int(3)?.int()? != -7 || k.get_int(-1)?.int()? != 1 {
        return None;
    }
    let (x, y) = (k.get_int(-2)?.bytes()?, k.get_int(-3)?.bytes()?);
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut out = vec![4];
    out.extend_from_slice(x);
    out.extend_from_slice(y);
    Some(out)
}

/// CBOR (RFC 8949) as WebAuthn uses it, decoded by `ciborium`, with the lookups the
/// attestation object and COSE key need.
mod cbor {
    pub use ciborium::Value;

    /// Map lookups and scalar views on a decoded [`Value`].
    pub trait Get {
        fn int(&self) -> Option<i64>;
        fn bytes(&self) -> Option<&[u8]>;
        fn get_int(&self, k: i64) -> Option<&Value>;
        fn get_text(&self, k: &str) -> Option<&Value>;
    }

    impl Get for Value {
        fn int(&self) -> Option<i64> {
            self.as_integer().and_then(|i| i64::try_from(i).ok())
        }
        fn bytes(&self) -> Option<&[u8]> {
            self.as_bytes().map(Vec::as_slice)
        }
        fn get_int(&self, k: i64) -> Option<&Value> {
            let m = self.as_map()?;
            m.iter()
                .find(|(key, _)| key.int() == Some(k))
                .map(|(_, v)| v)
        }
        fn get_text(&self, k: &str) -> Option<&Value> {
            let m = self.as_map()?;
            m.iter()
                .find(|(key, _)| key.as_text() == Some(k))
                .map(|(_, v)| v)
        }
    }

    /// Decode one item; returns it and the rest of the input.
    pub fn decode(b: &[u8]) -> Option<(Value, &[u8])> {
        let mut rest = b;
        let v = ciborium::from_reader(&mut rest).ok()?;
        Some((v, rest))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn decodes_maps_ints_and_strings() {
            // {"fmt": "none", 1: -7, "b": h'0102'}
            let data = [
                0xa3, 0x63, b'f', b'm', b't', 0x64, b'n', b'o', b'n', b'e', 0x01, 0x26, 0x61, b'b',
                0x42, 1, 2, 0xff,
            ];
            let (v, rest) = decode(&data).unwrap();
            assert_eq!(rest, &[0xff]);
            assert_eq!(v.get_text("fmt"), Some(&Value::Text("none".into())));
            assert_eq!(v.get_int(1).and_then(Value::int), Some(-7));
            assert_eq!(v.get_text("b").and_then(Value::bytes), Some(&[1u8, 2][..]));
            assert!(
                decode(&[0x5a, 0xff, 0xff, 0xff, 0xff]).is_none(),
                "length past the end"
            );
        }

        #[test]
        fn attestation_object_to_es256_point() {
            // COSE_Key {1: 2, 3: -7, -1: 1, -2: x, -3: y}
            let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
            cose.extend([7u8; 32]);
            cose.extend([0x22, 0x58, 0x20]);
            cose.extend([9u8; 32]);
            // rpIdHash, flags (UP|AT), signCount, aaguid, credential id length and id, key.
            let mut ad = vec![0u8; 32];
            ad.extend([0x41, 0, 0, 0, 1]);
            ad.extend([0u8; 16]);
            ad.extend([0, 2, 0xaa, 0xbb]);
            ad.extend(&cose);
            let mut att = vec![0xa3, 0x63, b'f', b'm', b't', 0x64, b'n', b'o', b'n', b'e'];
            att.extend([0x67, b'a', b't', b't', b'S', b't', b'm', b't', 0xa0]);
            att.extend([0x68, b'a', b'u', b't', b'h', b'D', b'a', b't', b'a', 0x58]);
            att.push(ad.len() as u8);
            att.extend(&ad);
            let (v, rest) = decode(&att).unwrap();
            assert!(rest.is_empty());
            let got = v.get_text("authData").and_then(|v| v.bytes()).unwrap();
            assert_eq!(got, &ad[..]);
            let (key, rest) = decode(&got[57..]).unwrap();
            assert!(rest.is_empty());
            let point = super::super::cose_es256(&key).unwrap();
            assert_eq!(point.len(), 65);
            assert_eq!((point[0], point[1], point[33]), (4, 7, 9));
            // RS256 (alg -257) is refused.
            let mut rs = cose.clone();
            rs.splice(4..5, [0x39, 0x01, 0x00]);
            assert!(super::super::cose_es256(&decode(&rs).unwrap().0).is_none());
            // Truncated inside the key: no value.
            assert!(decode(&got[57..got.len() - 1]).is_none());
        }
    }
}
