//! TODO
use maud::{html, Markup};

use super::{layout, DashReq, DashResult};
use crate::http::Resp;
use crate::state::AppState;

pub async fn page(_state: &AppState, r: &DashReq) -> DashResult<Markup> {
    Ok(layout::page(r, "users", "users", html! { p { "todo" } }))
}

pub async fn action(_state: &AppState, _r: &DashReq, _what: &str) -> Resp {
    super::back("users", Err("todo".into()))
}
