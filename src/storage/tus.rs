//! TUS resumable uploads. Not built yet.

use super::error::StorageError;
use crate::http::apikey::AuthContext;
use crate::http::{status_response, Req, Resp};
use crate::state::AppState;

pub fn options() -> Resp {
    status_response(http::StatusCode::NO_CONTENT)
}
pub async fn create(_s: &AppState, _c: &AuthContext, _r: Req) -> Result<Resp, StorageError> {
    Err(StorageError::Tus(501, "not implemented".into()))
}
pub async fn head(_s: &AppState, _c: &AuthContext, _id: &str) -> Result<Resp, StorageError> {
    Err(StorageError::Tus(501, "not implemented".into()))
}
pub async fn patch(
    _s: &AppState,
    _c: &AuthContext,
    _r: Req,
    _id: &str,
) -> Result<Resp, StorageError> {
    Err(StorageError::Tus(501, "not implemented".into()))
}
pub async fn delete(_s: &AppState, _c: &AuthContext, _id: &str) -> Result<Resp, StorageError> {
    Err(StorageError::Tus(501, "not implemented".into()))
}
