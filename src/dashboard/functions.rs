//! TODO
use maud::{html, Markup};

use super::{layout, DashReq, DashResult};
use crate::state::AppState;

pub async fn page(_state: &AppState, r: &DashReq) -> DashResult<Markup> {
    Ok(layout::page(
        r,
        "Functions",
        "functions",
        html! { p { "todo" } },
    ))
}
