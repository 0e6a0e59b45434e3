//! Storage: buckets (create, edit public/limit/MIME types, empty, delete) through the
//! storage API's bucket functions; a folder browser (its list function); uploads from
//! the page's JS straight to the storage API (with progress); downloads, previews and
//! signed URLs through its signing code; deletes through its delete function. All as the
//! service_role, as Studio does.

use maud::{html, Markup};
use serde_json::{json, Value};

use super::layout::{self, button_form, csrf, size};
use super::{answer_json, back, db, qs, DashError, DashReq, DashResult, PREFIX};
use crate::http::{error_response, Resp};
use crate::identity::AuthContext;
use crate::state::AppState;
use crate::storage::buckets;
use crate::storage::endpoint::ObjectRef;
use crate::storage::objects;
use crate::storage::signed;

type Answer = Result<Resp, crate::storage::error::StorageError>;

async fn read(a: Answer) -> Result<Value, String> {
    match a {
        Ok(r) => answer_json(r).await,
        Err(e) => answer_json(error_response(&e)).await,
    }
}

struct Bucket {
    id: String,
    public: bool,
    limit: Option<i64>,
    mimes: Option<Vec<String>>,
}

async fn buckets_list(state: &AppState) -> Result<Vec<Bucket>, String> {
    let c = db::connect(state).await?;
    let rows = c
        .query(
            "select id, public, file_size_limit, allowed_mime_types from storage.buckets order by id",
            &[],
        )
        .await
        .map_err(|e| db::err(&e))?;
    Ok(rows
        .iter()
        .map(|r| Bucket {
            id: r.get(0),
            public: r.get::<_, Option<bool>>(1).unwrap_or(false),
            limit: r.get(2),
            mimes: r.get(3),
        })
        .collect())
}

async fn sign(state: &AppState, bucket: &str, name: &str, ttl: i64) -> Result<String, String> {
    let obj = ObjectRef {
        bucket: bucket.into(),
        name: name.into(),
    };
    let v = read(
        signed::sign_one(
            state,
            &AuthContext::service(),
            json!({"expiresIn": ttl}),
            obj,
        )
        .await,
    )
    .await?;
    Ok(format!(
        "/storage/v1{}",
        v.get("signedURL").and_then(Value::as_str).unwrap_or("")
    ))
}

pub async fn page(state: &AppState, r: &DashReq) -> DashResult<Markup> {
    let all = buckets_list(state).await?;
    let current = r.q("bucket").and_then(|b| all.iter().find(|x| x.id == b));
    let main = match current {
        Some(b) => bucket_view(state, r, b).await?,
        None => html! { div.card { p.muted { "Choose a bucket, or create one." } } },
    };
    let body = html! {
        div.split {
            aside.card {
                h3 { "Buckets" }
                ul.list #bucket-list {
                    @for b in &all {
                        li { a.active[current.is_some_and(|c| c.id == b.id)] href={ (PREFIX) "storage?" (qs(&[("bucket", &b.id)])) } {
                            (b.id) @if b.public { " " span.badge.on { "public" } } } }
                    }
                    @if all.is_empty() { li.muted { "none" } }
                }
                details {
                    summary { "New bucket" }
                    form.stack method="post" action={ (PREFIX) "storage/bucket/create" } {
                        (csrf(r))
                        label { "Name" input name="name" required; }
                        label.check { input type="checkbox" name="public" value="1"; "Public" }
                        label { "File size limit (bytes, empty: global)" input name="file_size_limit" inputmode="numeric"; }
                        label { "Allowed MIME types (comma separated)" input name="allowed_mime_types" placeholder="image/*, application/pdf"; }
                        button.primary type="submit" { "Create bucket" }
                    }
                }
            }
            section { (main) }
        }
    };
    Ok(layout::page(r, "Storage", "storage", body))
}

async fn bucket_view(state: &AppState, r: &DashReq, b: &Bucket) -> DashResult<Markup> {
    let prefix = r.q("prefix").unwrap_or("").trim_matches('/').to_string();
    let body =
        json!({"prefix": prefix, "limit": 500, "sortBy": {"column": "name", "order": "asc"}});
    let items = read(objects::list(state, &AuthContext::service(), body, &b.id).await)
        .await
        .map_err(DashError::Bad)?;
    let items = items.as_array().cloned().unwrap_or_default();
    let full = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    let here = format!("storage?{}", qs(&[("bucket", &b.id), ("prefix", &prefix)]));
    let preview = match r.q("preview") {
        Some(p) => Some((
            p.to_string(),
            sign(state, &b.id, p, 600).await.map_err(DashError::Bad)?,
        )),
        None => None,
    };
    let mut crumbs = vec![(b.id.clone(), String::new())];
    let mut acc = String::new();
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        acc = if acc.is_empty() {
            part.to_string()
        } else {
            format!("{acc}/{part}")
        };
        crumbs.push((part.to_string(), acc.clone()));
    }
    let limit = b.limit.map(|l| l.to_string()).unwrap_or_default();
    let mimes = b.mimes.clone().unwrap_or_default().join(", ");
    Ok(html! {
        div.card {
            div.toolbar {
                h2 { @for (i, (name, p)) in crumbs.iter().enumerate() {
                    @if i > 0 { " / " }
                    a href={ (PREFIX) "storage?" (qs(&[("bucket", &b.id), ("prefix", p)])) } { (name) }
                } }
                span.grow {}
                (button_form(r, "storage/bucket/empty", &[("bucket", &b.id)], "Empty", "small", Some("Delete every object in this bucket?")))
                (button_form(r, "storage/bucket/delete", &[("bucket", &b.id)], "Delete bucket", "small danger", Some("Delete this bucket? It must be empty.")))
            }
            details {
                summary { "Bucket settings" }
                form.row-form method="post" action={ (PREFIX) "storage/bucket/update" } {
                    (csrf(r))
                    input type="hidden" name="bucket" value=(b.id);
                    label.check { input type="checkbox" name="public" value="1" checked[b.public]; "Public" }
                    label { "File size limit (bytes)" input name="file_size_limit" value=(limit); }
                    label { "Allowed MIME types" input name="allowed_mime_types" value=(mimes); }
                    button.primary type="submit" { "Save" }
                }
            }
        }
        div.card {
            div #drop.drop data-bucket=(b.id) data-prefix=(prefix) {
                p { "Drop files here, or " }
                input #file-input type="file" multiple;
                div #upload-status {}
            }
            form.row-form method="get" action={ (PREFIX) "storage" } {
                input type="hidden" name="bucket" value=(b.id);
                label { "Open folder" input name="prefix" value=(prefix) placeholder="folder/sub"; }
                button type="submit" { "Open" }
            }
        }
        @if let Some((name, url)) = &preview {
            div.card.preview { h2 { (name) } img src=(url) alt=(name); }
        }
        div.card.scroll {
            table.grid #objects {
                thead { tr { th { "Name" } th { "Size" } th { "Type" } th { "Updated" } th {} } }
                tbody {
                    @for it in &items {
                        @let name = it.get("name").and_then(Value::as_str).unwrap_or("");
                        @let path = full(name);
                        @if it.get("id").is_none_or(Value::is_null) {
                            tr { td { a href={ (PREFIX) "storage?" (qs(&[("bucket", &b.id), ("prefix", &path)])) } { "📁 " (name) } } td {} td {} td {} td {} }
                        } @else {
                            @let mime = it.pointer("/metadata/mimetype").and_then(Value::as_str).unwrap_or("");
                            @let bytes = it.pointer("/metadata/size").and_then(Value::as_i64).unwrap_or(0);
                            tr {
                                td.name { (name) }
                                td { (size(bytes)) }
                                td { (mime) }
                                td.mono { (it.get("updated_at").and_then(Value::as_str).unwrap_or("").get(..16).unwrap_or("")) }
                                td {
                                    a.button.small href={ (PREFIX) "storage/download?" (qs(&[("bucket", &b.id), ("path", &path)])) } { "Download" } " "
                                    @if mime.starts_with("image/") {
                                        a.button.small href={ (PREFIX) "storage?" (qs(&[("bucket", &b.id), ("prefix", &prefix), ("preview", &path)])) } { "Preview" } " "
                                    }
                                    (button_form(r, "storage/object/sign", &[("bucket", &b.id), ("path", &path), ("back", &here)], "Signed URL", "small", None))
                                    " "
                                    (button_form(r, "storage/object/delete", &[("bucket", &b.id), ("path", &path), ("back", &here)], "Delete", "small danger", Some("Delete this file?")))
                                }
                            }
                        }
                    }
                    @if items.is_empty() { tr { td colspan="5" .muted { "Empty folder." } } }
                }
            }
        }
    })
}

/// A download: a short-lived signed URL, followed by the browser.
pub async fn download(state: &AppState, r: &DashReq) -> Resp {
    let (Some(b), Some(p)) = (r.q("bucket"), r.q("path")) else {
        return back("storage", Err("bucket and path are needed".into()));
    };
    match sign(state, b, p, 60).await {
        Ok(url) => super::redirect(&format!("{url}&download=")),
        Err(e) => back(&format!("storage?{}", qs(&[("bucket", b)])), Err(e)),
    }
}

fn bucket_body(r: &DashReq, with_name: bool) -> Value {
    let mimes: Vec<String> = r
        .fs("allowed_mime_types")
        .split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    let limit = r.fs("file_size_limit");
    let mut body = json!({
        "public": r.f("public") == Some("1"),
        "file_size_limit": if limit.is_empty() { Value::Null } else { json!(limit) },
        "allowed_mime_types": if mimes.is_empty() { Value::Null } else { json!(mimes) },
    });
    if with_name {
        body["name"] = json!(r.fs("name"));
    }
    body
}

pub async fn action(state: &AppState, r: &DashReq, what: &str) -> Resp {
    let svc = AuthContext::service();
    let bucket = r.fs("bucket");
    let here = format!("storage?{}", qs(&[("bucket", &bucket)]));
    let to = r
        .f("back")
        .filter(|b| b.starts_with("storage?"))
        .map(str::to_string)
        .unwrap_or_else(|| here.clone());
    match what {
        "bucket/create" => {
            let name = r.fs("name");
            let res = read(buckets::create(state, &svc, bucket_body(r, true)).await).await;
            let to = if res.is_ok() {
                format!("storage?{}", qs(&[("bucket", &name)]))
            } else {
                "storage".into()
            };
            back(&to, res.map(|_| format!("Bucket {name} created")))
        }
        "bucket/update" => {
            let res =
                read(buckets::update(state, &svc, bucket_body(r, false), &bucket).await).await;
            back(&here, res.map(|_| "Bucket saved".to_string()))
        }
        "bucket/empty" => {
            let res = read(buckets::empty(state, &svc, &bucket).await).await;
            back(&here, res.map(|_| "Bucket emptied".to_string()))
        }
        "bucket/delete" => {
            let res = read(buckets::delete(state, &svc, &bucket).await).await;
            match res {
                Ok(_) => back("storage", Ok(format!("Bucket {bucket} deleted"))),
                Err(e) => back(&here, Err(e)),
            }
        }
        "object/delete" => {
            let obj = ObjectRef {
                bucket: bucket.clone(),
                name: r.fs("path"),
            };
            let res = read(objects::delete_one(state, &svc, obj).await).await;
            back(&to, res.map(|_| "File deleted".to_string()))
        }
        "object/sign" => {
            let res = sign(state, &bucket, &r.fs("path"), 3600).await;
            back(&to, res.map(|u| format!("Signed URL (1 hour): {u}")))
        }
        _ => back("storage", Err("unknown action".into())),
    }
}
