//! Storage accepts what Supabase Storage's request validation coerces (Fastify's Ajv with
//! `coerceTypes: "array"`): storage3 for Python sends `expiresIn` as a string, other clients
//! send booleans and integers as strings. What Ajv refuses (non-integral numbers, words) stays
//! a 400 in the storage error shape. Also as storage-api: the download disposition, and an
//! SVG asked for through the image service comes back as is.

use crate::common;

use common::{TestServer, SERVICE_KEY};
use serde_json::{json, Value};

const SVG: &[u8] = b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"></svg>";

async fn call(
    t: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    body: Value,
) -> common::reqwest_like::Response {
    let auth = format!("Bearer {token}");
    t.http
        .send(
            method,
            &format!("{}/storage/v1/{path}", t.url),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
}

async fn upload(t: &TestServer, token: &str, path: &str, ct: &str, bytes: &[u8]) {
    let auth = format!("Bearer {token}");
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/storage/v1/object/{path}", t.url),
            &[("authorization", &auth), ("content-type", ct)],
            bytes.to_vec(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn assert_invalid(r: &common::reqwest_like::Response, param: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "InvalidParameter", "{}", r.text());
    assert_eq!(r.json()["message"], format!("Invalid Parameter {param}"));
}

#[tokio::test]
async fn signed_urls_take_expires_in_as_a_numeric_string() {
    let t = TestServer::start().await;
    let (uid, tok) = t.user().await;
    upload(
        &t,
        &tok,
        &format!("chat-files/{uid}/ab.txt"),
        "text/plain",
        b"hello",
    )
    .await;
    let path = format!("object/sign/chat-files/{uid}/ab.txt");

    for ok in [
        json!("3600"),
        json!(3600),
        json!(" 60 "),
        json!("1e2"),
        json!(60.0),
    ] {
        let r = call(&t, &tok, "POST", &path, json!({ "expiresIn": ok })).await;
        assert_eq!(r.status, 200, "{ok}: {}", r.text());
        let url = r.json()["signedURL"].as_str().unwrap().to_string();
        let got = t.http.get(&format!("{}/storage/v1{url}", t.url), &[]).await;
        assert_eq!(got.status, 200, "{ok}");
        assert_eq!(got.body.as_ref(), b"hello");
    }
    for bad in [
        json!("abc"),
        json!("60.5"),
        json!(60.5),
        json!(""),
        json!({}),
        json!(0),
    ] {
        let r = call(&t, &tok, "POST", &path, json!({ "expiresIn": bad })).await;
        assert_invalid(&r, "expiresIn");
    }

    let many = "object/sign/chat-files";
    let r = call(
        &t,
        &tok,
        "POST",
        many,
        json!({ "expiresIn": "10", "paths": [format!("{uid}/ab.txt")] }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()[0]["signedURL"].is_string(), "{}", r.text());

    // the download name as storage-api writes it: encodeURIComponent, unquoted
    let r = call(&t, &tok, "POST", &path, json!({ "expiresIn": 60 })).await;
    let url = r.json()["signedURL"].as_str().unwrap().to_string();
    let got = t
        .http
        .get(
            &format!("{}/storage/v1{url}&download=my%20file.txt", t.url),
            &[],
        )
        .await;
    assert_eq!(
        got.header("content-disposition"),
        Some("attachment; filename=my%20file.txt; filename*=UTF-8''my%20file.txt")
    );
}

#[tokio::test]
async fn booleans_and_integers_as_strings_in_buckets_and_lists() {
    let t = TestServer::start().await;
    let r = call(
        &t,
        SERVICE_KEY,
        "POST",
        "bucket",
        json!({ "name": "coerced", "public": "true" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&t, SERVICE_KEY, "GET", "bucket/coerced", json!(null)).await;
    assert_eq!(r.json()["public"], true, "{}", r.text());
    let r = call(
        &t,
        SERVICE_KEY,
        "PUT",
        "bucket/coerced",
        json!({ "public": 0 }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&t, SERVICE_KEY, "GET", "bucket/coerced", json!(null)).await;
    assert_eq!(r.json()["public"], false, "{}", r.text());
    let r = call(
        &t,
        SERVICE_KEY,
        "PUT",
        "bucket/coerced",
        json!({ "public": "yes" }),
    )
    .await;
    assert_invalid(&r, "public");

    for name in ["a.txt", "b.txt"] {
        upload(
            &t,
            SERVICE_KEY,
            &format!("coerced/d/{name}"),
            "text/plain",
            b"x",
        )
        .await;
    }
    let r = call(
        &t,
        SERVICE_KEY,
        "POST",
        "object/list/coerced",
        json!({ "prefix": "d", "limit": "1", "offset": "1" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = r.json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b.txt"]);
    let r = call(
        &t,
        SERVICE_KEY,
        "POST",
        "object/list/coerced",
        json!({ "prefix": "d", "limit": "many" }),
    )
    .await;
    assert_invalid(&r, "limit");

    // arrays given once (Ajv's "array" coercion): paths, prefixes, allowed_mime_types
    let r = call(
        &t,
        SERVICE_KEY,
        "POST",
        "object/sign/coerced",
        json!({ "expiresIn": 60, "paths": "d/a.txt" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()[0]["path"], "d/a.txt", "{}", r.text());
    assert!(r.json()[0]["signedURL"].is_string(), "{}", r.text());
    let r = call(
        &t,
        SERVICE_KEY,
        "DELETE",
        "object/coerced",
        json!({ "prefixes": "d/a.txt" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{}", r.text());
    let r = call(
        &t,
        SERVICE_KEY,
        "DELETE",
        "object/coerced",
        json!({ "prefixes": { "x": 1 } }),
    )
    .await;
    assert_invalid(&r, "prefixes");
    let r = call(
        &t,
        SERVICE_KEY,
        "PUT",
        "bucket/coerced",
        json!({ "allowed_mime_types": "image/png" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&t, SERVICE_KEY, "GET", "bucket/coerced", json!(null)).await;
    assert_eq!(
        r.json()["allowed_mime_types"],
        json!(["image/png"]),
        "{}",
        r.text()
    );
}

#[tokio::test]
async fn an_svg_through_the_image_service_comes_back_as_is() {
    let t = TestServer::start().await;
    let tok = SERVICE_KEY;
    let r = call(&t, tok, "POST", "bucket", json!({ "name": "pics" })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let key = "pics/pic.svg";
    upload(&t, tok, key, "image/svg+xml", SVG).await;
    let r = call(
        &t,
        tok,
        "POST",
        &format!("object/sign/{key}"),
        json!({ "expiresIn": "60", "transform": { "width": "200", "height": 200, "resize": "cover" } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["signedURL"].as_str().unwrap().to_string();
    assert!(url.starts_with("/render/image/sign/"), "{url}");
    let got = t.http.get(&format!("{}/storage/v1{url}", t.url), &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body.as_ref(), SVG);
    assert_eq!(got.header("content-type"), Some("image/svg+xml"));
    assert!(got
        .header("content-security-policy")
        .is_some_and(|c| c.contains("sandbox")));
    assert!(got
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment; filename=pic.svg;")));
    // a raster format cannot be made from it here: still refused
    let auth = format!("Bearer {tok}");
    let png = t
        .http
        .get(
            &format!(
                "{}/storage/v1/render/image/authenticated/{key}?format=png",
                t.url
            ),
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(png.status, 400, "{}", png.text());
}
