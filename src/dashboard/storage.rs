//! TODO
use maud::{html, Markup};

use super::{layout, DashReq, DashResult};
use crate::http::Resp;
use crate::state::AppState;

pub async fn page(_state: &AppState, r: &DashReq) -> DashResult<Markup> {
    Ok(layout::page(
        r,
        "storage",
        "storage",
        html! { p { "todo" } },
    ))
}

pub async fn action(_state: &AppState, _r: &DashReq, _what: &str) -> Resp {
    super::back("storage", Err("todo".into()))
}

pub async fn download(_state: &AppState, _r: &DashReq) -> Resp {
    super::back("storage", Err("todo".into()))
}
