//! TODO
use maud::{html, Markup};

use super::{layout, DashReq};

pub fn page(r: &DashReq) -> Markup {
    layout::page(r, "Realtime", "realtime", html! { p { "todo" } })
}
