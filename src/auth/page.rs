//! Pagination of the admin listings (users, audit log, OAuth clients): `page`/`per_page`
//! parsing with GoTrue's defaults and bounds, and the `x-total-count` and `link` headers.

use http::{HeaderValue, StatusCode};
use serde_json::Value;

use super::error::{AuthError, AuthResult};
use super::Call;
use crate::http::{json_response, Resp};
use crate::state::AppState;

#[derive(Clone, Copy)]
pub struct Page {
    pub page: i64,
    pub per_page: i64,
}

impl Page {
    /// `page` (default 1) and `per_page` (default 50, at most 1000) from the query.
    pub fn from_call(call: &Call) -> AuthResult<Page> {
        let num = |k: &str, default: i64| -> AuthResult<i64> {
            match call.q(k).map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(default),
                Some(s) => s.parse::<u32>().map(i64::from).map_err(|e| {
                    AuthError::validation(format!("Bad Pagination Parameters: {k}: {e}"))
                }),
            }
        };
        Ok(Page {
            page: num("page", 1)?.max(1),
            per_page: num("per_page", 50)?.clamp(1, 1000),
        })
    }

    /// Rows to skip before this page.
    pub fn offset(&self) -> i64 {
        (self.page - 1) * self.per_page
    }

    /// A 200 with `body`, `x-total-count: total` and `link` to the next and last pages of
    /// the listing at `path` (below `/auth/v1/`).
    pub fn response(&self, state: &AppState, path: &str, total: i64, body: &Value) -> Resp {
        let Page { page, per_page } = *self;
        let mut resp = json_response(StatusCode::OK, body);
        let last = ((total + per_page - 1) / per_page).max(1);
        let base = format!("{}/auth/v1/{path}", state.config.external_url());
        let mut links = vec![];
        if page < last {
            links.push(format!(
                "<{base}?page={}&per_page={per_page}>; rel=\"next\"",
                page + 1
            ));
        }
        links.push(format!(
            "<{base}?page={last}&per_page={per_page}>; rel=\"last\""
        ));
        let h = resp.headers_mut();
        h.insert("x-total-count", HeaderValue::from(total));
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            h.insert("link", v);
        }
        resp
    }
}
