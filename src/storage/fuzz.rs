//! Fuzz targets for what storage parses from a request before any I/O: object paths and
//! keys ([`object_path`]), the `Range` header ([`range_header`]) and upload bodies, raw or
//! multipart ([`upload_body`]). None may panic, and each checks the invariants its callers
//! rely on (a parsed key never escapes its bucket; a range lies inside the object; an
//! upload's declared type is a valid header value). `cargo test --lib fuzz_storage` replays
//! the seed corpora under `fuzz/corpus/` and generated inputs; with a nightly toolchain,
//! `fuzz/` drives the same functions with cargo-fuzz (libFuzzer).

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use super::endpoint::{self, Endpoint, ObjectRef, MAX_KEY_BYTES};
use super::error::StorageError;
use super::objects;

/// What every key that reaches a handler must be: a relative path inside its bucket.
fn check_key(key: &str, input: &str) {
    assert!(!key.is_empty(), "{input:?}: empty key");
    assert!(key.len() <= MAX_KEY_BYTES, "{input:?}: key too long");
    assert!(!key.starts_with('/'), "{input:?}: absolute key {key:?}");
    assert!(
        !key.chars().any(|c| c.is_control()),
        "{input:?}: control character in {key:?}"
    );
    assert!(
        key.split('/').all(|s| s != ".." && s != "."),
        "{input:?}: dot segment in {key:?}"
    );
    assert!(!key.contains("//"), "{input:?}: empty segment in {key:?}");
    assert!(!key.contains('\\'), "{input:?}: backslash in {key:?}");
}

fn check_bucket(bucket: &str, input: &str) {
    assert!(
        endpoint::validate_bucket_name(bucket).is_ok(),
        "{input:?}: bucket {bucket:?}"
    );
    assert!(
        !bucket.contains('/'),
        "{input:?}: slash in bucket {bucket:?}"
    );
}

fn check_object(obj: &ObjectRef, input: &str) {
    check_bucket(&obj.bucket, input);
    check_key(&obj.name, input);
    // The signed-URL path written for it parses back to the same object.
    let path = format!(
        "object/sign/{}",
        super::signed::encode_path(&obj.full_path())
    );
    match endpoint::parse(&Method::GET, &path) {
        Ok(Endpoint::GetSigned(back)) => assert_eq!(&back, obj, "{input:?}: round trip"),
        other => panic!("{input:?}: {path} parsed as {other:?}"),
    }
}

fn check_endpoint(ep: &Endpoint, input: &str) {
    use Endpoint::*;
    match ep {
        SignUrl(o) | GetSigned(o) | SignUpload(o) | UploadSigned(o) | DeleteObject(o) => {
            check_object(o, input)
        }
        GetObject { obj, .. } | Info { obj, .. } | Upload { obj, .. } | Render { obj, .. } => {
            check_object(obj, input)
        }
        GetBucket(b) | UpdateBucket(b) | DeleteBucket(b) | EmptyBucket(b) | ListObjects(b)
        | ListObjectsV2(b) | SignUrls(b) | DeleteObjects(b) => check_bucket(b, input),
        TusHead(id) | TusPatch(id) | TusDelete(id) => {
            assert!(!id.contains('/'), "{input:?}: upload id {id:?}")
        }
        ListBuckets | CreateBucket | MoveObject | CopyObject | TusOptions | TusCreate => {}
    }
}

/// Client mistakes only: a parse never fails as an internal error.
fn check_refusal(e: &StorageError, input: &str) {
    assert!(
        !matches!(e, StorageError::Internal(_)),
        "{input:?}: internal error {e:?}"
    );
}

/// The fuzz target for paths and keys: the bytes as a `/storage/v1/...` path under every
/// method, as a key given in a JSON body (move, copy) and as TUS `Upload-Metadata`.
pub fn object_path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let method = Method::from_bytes(m.as_bytes()).expect("static method");
        match endpoint::parse(&method, &text) {
            Ok(ep) => check_endpoint(&ep, &text),
            Err(e) => check_refusal(&e, &text),
        }
    }
    match endpoint::object_ref(&text) {
        Ok(obj) => check_object(&obj, &text),
        Err(e) => check_refusal(&e, &text),
    }
    if endpoint::validate_key(&text).is_ok() {
        check_key(&text, &text);
    }
    // As move/copy take keys: raw (not percent-decoded) strings in JSON.
    let (src, dst) = text.split_once('\n').unwrap_or((&text, "x"));
    let body = serde_json::json!({
        "bucketId": "b", "sourceKey": src, "destinationKey": dst, "destinationBucket": dst,
    });
    if let Ok((s, d)) = objects::fuzz_move_copy(&body) {
        check_object(&s, &text);
        check_object(&d, &text);
    }
    // As TUS takes them: base64 values in Upload-Metadata.
    if let Ok(meta) = super::tus::parse_metadata(&text) {
        if let (Some(b), Some(k)) = (meta.get("bucketName"), meta.get("objectName")) {
            if endpoint::validate_bucket_name(b).is_ok() && endpoint::validate_key(k).is_ok() {
                check_bucket(b, &text);
                check_key(k, &text);
            }
        }
    }
}

/// The fuzz target for `Range`: the bytes as the header against objects of several sizes
/// (one of them taken from the input). A range served is never empty or outside the
/// object; a refusal is only ever 416 for that size.
pub fn range_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let from_input = data
        .iter()
        .take(8)
        .fold(0u64, |n, b| (n << 8) | u64::from(*b));
    for size in [0, 1, 2, 20, 1000, u64::MAX / 2, u64::MAX, from_input] {
        match objects::parse_range(Some(&text), size) {
            Ok(Some(r)) => {
                assert!(r.start < r.end, "{text:?} size {size}: empty {r:?}");
                assert!(r.end <= size, "{text:?} size {size}: past the end {r:?}");
            }
            Ok(None) => {}
            Err(StorageError::InvalidRange(n)) => assert_eq!(n, size, "{text:?}"),
            Err(e) => panic!("{text:?} size {size}: {e:?}"),
        }
    }
}

/// The fuzz target for upload bodies: the first line of the input is the request's
/// `Content-Type`, the rest its body, fed in small chunks (so every boundary and header can
/// straddle two). Whatever is read must be a valid upload: a declared type that can go back
/// out as a header, user metadata that is an object, a file no longer than the body.
pub fn upload_body(data: &[u8]) {
    let (ct, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(ct.strip_suffix(b"\r").unwrap_or(ct)) {
        headers.insert(http::header::CONTENT_TYPE, v);
    }
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let input = String::from_utf8_lossy(data);
    futures::executor::block_on(async {
        match objects::read_upload_from(&headers, futures::stream::iter(chunks)).await {
            Ok(mut src) => {
                assert!(
                    HeaderValue::from_str(&src.content_type).is_ok(),
                    "{input:?}: content type {:?}",
                    src.content_type
                );
                assert!(
                    src.cache_control == "no-cache"
                        || src
                            .cache_control
                            .strip_prefix("max-age=")
                            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
                    "{input:?}: cache control {:?}",
                    src.cache_control
                );
                if let Some(m) = &src.user_metadata {
                    assert!(matches!(m, Value::Object(_)), "{input:?}: metadata {m}");
                }
                let mut n = 0;
                while let Some(chunk) = src.stream.next().await {
                    match chunk {
                        Ok(c) => n += c.len(),
                        Err(e) => {
                            check_refusal(&e, &input);
                            break;
                        }
                    }
                }
                assert!(n <= body.len(), "{input:?}: file longer than the body");
                // What an allow-listed bucket would sniff of it: any bytes, no panic.
                let _ = crate::functions::sniff::contradicts(&src.content_type, body);
            }
            Err(e) => check_refusal(&e, &input),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Every file of `fuzz/corpus/<target>/` (the committed seeds).
    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 10, "{target}: only {} seeds", files.len());
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// Random splices of the seeds and of `fragments`, with random byte damage.
    fn generated(seeds: &[Vec<u8>], fragments: &[&str], seed: u64, f: impl Fn(&[u8])) {
        let iters: u64 = std::env::var("OXIBASE_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3_000);
        let mut x = seed;
        for _ in 0..iters {
            let mut s = seeds[(xorshift(&mut x) % seeds.len() as u64) as usize].clone();
            for _ in 0..(xorshift(&mut x) % 4) {
                let frag = fragments[(xorshift(&mut x) % fragments.len() as u64) as usize];
                let at = (xorshift(&mut x) % (s.len() as u64 + 1)) as usize;
                s.splice(at..at, frag.bytes());
            }
            if !s.is_empty() && xorshift(&mut x).is_multiple_of(3) {
                let at = (xorshift(&mut x) % s.len() as u64) as usize;
                s[at] = (xorshift(&mut x) % 256) as u8;
            }
            if !s.is_empty() && xorshift(&mut x).is_multiple_of(5) {
                let cut = (xorshift(&mut x) % s.len() as u64) as usize;
                s.truncate(cut);
            }
            f(&s);
        }
    }

    const PATH_FRAGMENTS: &[&str] = &[
        "/",
        "..",
        ".",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%00",
        "%5c",
        "\\",
        "%",
        "%zz",
        "%c3%a9",
        "é",
        "//",
        "object/",
        "public/",
        "sign/",
        "bucket/",
        "upload/resumable/",
        "render/image/",
        "authenticated/",
        "info/",
        "list/",
        "a",
        " ",
        "\0",
        "\n",
        "?",
        "#",
        "bucketName YQ==,",
        "objectName Li4vZXRj,",
        "objectName ../x,",
    ];

    const RANGE_FRAGMENTS: &[&str] = &[
        "bytes=",
        "-",
        ",",
        "0",
        "1",
        "9",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999",
        " ",
        "=",
        "items=",
        "+1",
        "-0",
        "\t",
    ];

    const UPLOAD_FRAGMENTS: &[&str] = &[
        "--B\r\n",
        "--B--\r\n",
        "\r\n",
        "\r\n\r\n",
        "Content-Disposition: form-data; name=\"\"; filename=\"a\"\r\n",
        "Content-Disposition: form-data; name=\"metadata\"\r\n",
        "Content-Disposition: form-data; name=\"cacheControl\"\r\n",
        "Content-Type: text/html\r\n",
        "Content-Type: image/png\r\n",
        "{\"a\":1}",
        "[1]",
        "3600",
        "max-age=",
        "<html>",
        "\u{0}",
        "é",
    ];

    #[test]
    fn fuzz_storage_corpus_object_path() {
        let seeds = corpus("storage_object_path");
        for s in &seeds {
            object_path(s);
        }
        generated(&seeds, PATH_FRAGMENTS, 0x9E37_79B9_7F4A_7C15, object_path);
    }

    #[test]
    fn fuzz_storage_corpus_range_header() {
        let seeds = corpus("storage_range");
        for s in &seeds {
            range_header(s);
        }
        generated(&seeds, RANGE_FRAGMENTS, 0xD1B5_4A32_D192_ED03, range_header);
    }

    #[test]
    fn fuzz_storage_corpus_upload_body() {
        let seeds = corpus("storage_upload");
        for s in &seeds {
            upload_body(s);
        }
        generated(&seeds, UPLOAD_FRAGMENTS, 0x2545_F491_4F6C_DD1D, upload_body);
    }

    /// The one the range target found: an end of u64::MAX overflowed `end + 1`.
    #[test]
    fn fuzz_storage_range_end_at_u64_max() {
        range_header(b"bytes=5-18446744073709551615");
        assert_eq!(
            objects::parse_range(Some("bytes=5-18446744073709551615"), 100).unwrap(),
            Some(5..100)
        );
    }
}
