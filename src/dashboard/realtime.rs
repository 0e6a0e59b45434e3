//! The realtime inspector: the page's script (assets/realtime.js) speaks the realtime
//! WebSocket protocol itself with the anon or service_role key: join a channel, watch
//! broadcast, presence and postgres_changes, send a broadcast, track presence.

use maud::{html, Markup};

use super::{layout, DashReq, PREFIX};

pub fn page(r: &DashReq) -> Markup {
    let body = html! {
        div.card {
            form.row-form #rt-join {
                label { "Channel" input name="channel" value="room1" required; }
                label { "Key" select name="key" { option value="anon" { "anon" } option value="service_role" { "service_role" } } }
                label { "postgres_changes schema" input name="schema" value="public"; }
                label { "table (empty: all)" input name="table"; }
                button.primary type="submit" #rt-join-btn { "Join" }
                button type="button" #rt-leave disabled { "Leave" }
                span #rt-status.badge { "disconnected" }
            }
        }
        div.grid.two {
            form.card.stack #rt-send {
                h2 { "Send a broadcast" }
                label { "Event" input name="event" value="message"; }
                label { "Payload (JSON)" textarea.mono name="payload" rows="3" { "{\"text\": \"hello\"}" } }
                div.toolbar { button.primary type="submit" disabled { "Send" } button type="button" #rt-track disabled { "Track presence" } }
            }
            div.card {
                h2 { "Presence" }
                ul.list #rt-presence {}
            }
        }
        div.card {
            div.toolbar { h2 { "Events" } span.grow {} button.small type="button" #rt-clear { "Clear" } }
            div.events #rt-events aria-live="polite" {}
        }
        script src={ (PREFIX) "assets/realtime.js" } defer {}
    };
    layout::page(r, "Realtime inspector", "realtime", body)
}
