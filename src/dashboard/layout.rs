//! The page shell: head (CSP-safe: no inline script or style), the navigation (a sidebar
//! at desktop widths, a menu toggled by a checkbox on a phone, so it works without JS),
//! the flash message of the last change, and the page's content.

use maud::{html, Markup, DOCTYPE};

use super::{DashReq, PREFIX};

const NAV: &[(&str, &str, &str)] = &[
    ("", "Overview", "◎"),
    ("tables", "Table editor", "▦"),
    ("sql", "SQL editor", "❯"),
    ("users", "Authentication", "☺"),
    ("storage", "Storage", "▤"),
    ("realtime", "Realtime", "⇄"),
    ("functions", "Functions", "ƒ"),
    ("logs", "Logs", "≡"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="referrer" content="same-origin";
            title { (title) " · oxibase" }
            link rel="icon" href={ (PREFIX) "assets/icon.svg" } type="image/svg+xml";
            link rel="stylesheet" href={ (PREFIX) "assets/app.css" };
            script src={ (PREFIX) "assets/app.js" } defer {}
        }
    }
}

/// A page without navigation (sign-in, refusals).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare { main.center { (body) } }
        }
    }
}

/// A dashboard page: `active` is the nav entry's path.
pub fn page(r: &DashReq, title: &str, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-page=(active) {
                meta name="csrf-token" content=(r.csrf);
                input #nav-toggle type="checkbox" hidden;
                header.topbar {
                    label.menu for="nav-toggle" aria-label="Menu" { "☰" }
                    a.brand href=(PREFIX) { span.logo { "◆" } " oxibase" }
                    span.grow {}
                    form method="post" action={ (PREFIX) "signout" } {
                        input type="hidden" name="_csrf" value=(r.csrf);
                        button.link type="submit" { "Sign out" }
                    }
                }
                nav.sidebar {
                    @for (path, name, icon) in NAV {
                        a.active[*path == active] href={ (PREFIX) (path) } {
                            span.icon { (icon) } (name)
                        }
                    }
                }
                main.content {
                    h1 { (title) }
                    (flash(r))
                    (body)
                }
            }
        }
    }
}

fn flash(r: &DashReq) -> Markup {
    html! {
        @if let Some(m) = r.q("msg") { p.flash.ok role="status" { (m) } }
        @if let Some(m) = r.q("err") { p.flash.bad role="alert" { (m) } }
    }
}

/// A hidden CSRF field for a form.
pub fn csrf(r: &DashReq) -> Markup {
    html! { input type="hidden" name="_csrf" value=(r.csrf); }
}

/// A one-button form posting to `action` (a dashboard path) with hidden fields.
pub fn button_form(
    r: &DashReq,
    action: &str,
    fields: &[(&str, &str)],
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> Markup {
    html! {
        form.inline method="post" action={ (PREFIX) (action) } data-confirm=[confirm] {
            (csrf(r))
            @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
            button type="submit" class=(class) { (label) }
        }
    }
}

/// Bytes as a short human size.
pub fn size(n: i64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// An inline SVG line chart of `points` (no script; the numbers are ours).
pub fn sparkline(points: &[f64], label: &str) -> Markup {
    // One interval is a flat line, not an invisible dot.
    let points: Vec<f64> = match points {
        [v] => vec![*v, *v],
        p => p.to_vec(),
    };
    let w = 300.0;
    let h = 60.0;
    let max = points.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
    let n = points.len().max(2) as f64 - 1.0;
    let path: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{:.1},{:.1}",
                i as f64 / n * w,
                h - v / max * (h - 4.0) - 2.0
            )
        })
        .collect();
    html! {
        svg.spark viewBox={ "0 0 " (w) " " (h) } preserveAspectRatio="none" role="img" aria-label=(label) {
            polyline fill="none" stroke="currentColor" stroke-width="2" points=(path.join(" ")) {}
        }
    }
}
