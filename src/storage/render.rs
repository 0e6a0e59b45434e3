//! Image transformations (/render/image/...). Not built yet.

use super::endpoint::{Access, ObjectRef};
use super::error::StorageError;
use crate::http::apikey::AuthContext;
use crate::http::{Req, Resp};
use crate::state::AppState;

pub async fn render(
    _state: &AppState,
    _req: Req,
    _ctx: Option<&AuthContext>,
    _obj: ObjectRef,
    _access: Access,
) -> Result<Resp, StorageError> {
    Err(StorageError::InvalidRequest(
        "image transformation is not available yet".into(),
    ))
}
