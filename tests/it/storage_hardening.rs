//! Storage against hostile uploads: bucket rules on copy and move, active content served
//! so it cannot run in the API's origin, declared types checked against the bytes,
//! oversized declarations refused before the body, image bombs, and a bound on open TUS
//! uploads.

use crate::common;

use base64::Engine;
use common::{Client, TestServer, SERVICE_KEY};

const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0xF8, 0xCF, 0xC0, 0xF0,
    0x1F, 0x00, 0x05, 0x00, 0x01, 0xFF, 0x89, 0x99, 0x3D, 0x1D, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];
const JPEG_HEAD: &[u8] = b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00";
const HTML: &[u8] = b"<html><body><script>fetch('/auth/v1/user')</script></body></html>";
const SVG: &[u8] =
    b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(document.domain)\"></svg>";

struct Api<'a> {
    t: &'a TestServer,
    auth: String,
}

impl<'a> Api<'a> {
    fn new(t: &'a TestServer, token: &str) -> Api<'a> {
        Api {
            t,
            auth: format!("Bearer {token}"),
        }
    }

    fn http(&self) -> &Client {
        &self.t.http
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<bytes::Bytes>,
    ) -> common::reqwest_like::Response {
        let mut hs = vec![("authorization", self.auth.as_str())];
        hs.extend_from_slice(headers);
        self.http()
            .send(
                method,
                &format!("{}/storage/v1/{path}", self.t.url),
                &hs,
                body,
            )
            .await
    }

    async fn upload(&self, path: &str, ct: &str, body: &[u8]) -> common::reqwest_like::Response {
        self.send(
            "POST",
            &format!("object/{path}"),
            &[("content-type", ct)],
            body.to_vec(),
        )
        .await
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> common::reqwest_like::Response {
        self.send(
            method,
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
    }
}

fn assert_storage_error(r: &common::reqwest_like::Response, status: &str, message: &str) {
    assert_eq!(r.status, 400, "{}", r.text());
    let j = r.json();
    assert_eq!(j["statusCode"], status, "{j}");
    assert_eq!(j["message"], message, "{j}");
}

async fn public_get(t: &TestServer, path: &str) -> common::reqwest_like::Response {
    t.http
        .get(&format!("{}/storage/v1/object/public/{path}", t.url), &[])
        .await
}

/// A user puts HTML (allowed) and a 3 MB file into chat-files, then copies and moves them
/// into the public avatars bucket (image/* only, 2 MB): refused as an upload would be, and
/// nothing appears at the public URL. Legitimate copies still work.
#[tokio::test]
async fn copy_and_move_apply_the_destination_bucket_rules() {
    let t = TestServer::start().await;
    let (uid, tok) = t.user().await;
    let api = Api::new(&t, &tok);
    let r = api
        .upload(&format!("chat-files/{uid}/x.html"), "text/html", HTML)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let big = vec![7u8; 3 << 20];
    let r = api
        .upload(&format!("chat-files/{uid}/big.png"), "image/png", &big)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api
        .upload(&format!("chat-files/{uid}/ok.png"), "image/png", PNG_1X1)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    for op in ["copy", "move"] {
        let body = |src: &str, dst: &str| {
            serde_json::json!({
                "bucketId": "chat-files", "sourceKey": format!("{uid}/{src}"),
                "destinationBucket": "avatars", "destinationKey": format!("{uid}/{dst}"),
            })
        };
        let r = api
            .json("POST", &format!("object/{op}"), body("x.html", "x.html"))
            .await;
        assert_storage_error(&r, "415", "mime type text/html is not supported");
        assert_eq!(r.json()["error"], "invalid_mime_type");
        let r = api
            .json("POST", &format!("object/{op}"), body("big.png", "big.png"))
            .await;
        assert_storage_error(&r, "413", "The object exceeded the maximum allowed size");
        assert_eq!(
            public_get(&t, &format!("avatars/{uid}/x.html"))
                .await
                .json()["statusCode"],
            "404"
        );
        assert_eq!(
            public_get(&t, &format!("avatars/{uid}/big.png"))
                .await
                .json()["statusCode"],
            "404"
        );
    }
    // The refused move left its source where it was.
    let r = api
        .send("GET", &format!("object/chat-files/{uid}/x.html"), &[], "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), HTML);

    // A real image copies and moves.
    let r = api
        .json(
            "POST",
            "object/copy",
            serde_json::json!({"bucketId": "chat-files", "sourceKey": format!("{uid}/ok.png"),
                "destinationBucket": "avatars", "destinationKey": format!("{uid}/copied.png")}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api
        .json(
            "POST",
            "object/move",
            serde_json::json!({"bucketId": "chat-files", "sourceKey": format!("{uid}/ok.png"),
                "destinationBucket": "avatars", "destinationKey": format!("{uid}/moved.png")}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for name in ["copied.png", "moved.png"] {
        let r = public_get(&t, &format!("avatars/{uid}/{name}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.as_ref(), PNG_1X1);
    }

    // Bytes that contradict their declared type are refused on copy too: HTML declared
    // image/png in a bucket without an allow-list, copied into avatars.
    let svc = Api::new(&t, SERVICE_KEY);
    let r = svc
        .json(
            "POST",
            "bucket",
            serde_json::json!({"name": "loose", "public": false}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = svc.upload("loose/fake.png", "image/png", HTML).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = svc
        .json(
            "POST",
            "object/copy",
            serde_json::json!({"bucketId": "loose", "sourceKey": "fake.png",
                "destinationBucket": "avatars", "destinationKey": "fake.png"}),
        )
        .await;
    assert_storage_error(&r, "415", "mime type text/html is not supported");
}

/// Every object response says `nosniff`; HTML, SVG and other active types also come as
/// an attachment under a sandboxing CSP, through public, authenticated and signed URLs.
#[tokio::test]
async fn objects_are_served_with_nosniff_and_active_types_sandboxed() {
    let t = TestServer::start().await;
    let svc = Api::new(&t, SERVICE_KEY);
    for (path, ct, body) in [
        ("avatars/a.svg", "image/svg+xml", SVG),
        ("avatars/p.png", "image/png", PNG_1X1),
        ("chat-files/u/x.html", "text/html", HTML),
        ("chat-files/u/y.txt", "text/plain", HTML),
    ] {
        let r = svc.upload(path, ct, body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
    let sandboxed = |r: &common::reqwest_like::Response, what: &str| {
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(
            csp.contains("sandbox") && csp.contains("default-src 'none'"),
            "{what}: {csp}"
        );
        assert!(
            r.header("content-disposition")
                .is_some_and(|d| d.starts_with("attachment")),
            "{what}"
        );
    };
    let inline = |r: &common::reqwest_like::Response, what: &str| {
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        assert_eq!(r.header("content-security-policy"), None, "{what}");
        assert_eq!(r.header("content-disposition"), None, "{what}");
    };

    let svg = public_get(&t, "avatars/a.svg").await;
    assert_eq!(svg.status, 200);
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    sandboxed(&svg, "public svg");
    inline(&public_get(&t, "avatars/p.png").await, "public png");

    let html = svc.send("GET", "object/chat-files/u/x.html", &[], "").await;
    sandboxed(&html, "authenticated html");
    let head = svc
        .send("HEAD", "object/authenticated/chat-files/u/x.html", &[], "")
        .await;
    sandboxed(&head, "HEAD html");
    inline(
        &svc.send("GET", "object/chat-files/u/y.txt", &[], "").await,
        "text/plain",
    );

    // A signed URL (what file-upload hands out) serves the HTML as an attachment too.
    let r = svc
        .json(
            "POST",
            "object/sign/chat-files/u/x.html",
            serde_json::json!({"expiresIn": 60}),
        )
        .await;
    let url = r.json()["signedURL"].as_str().unwrap().to_string();
    let signed = t.http.get(&format!("{}/storage/v1{url}", t.url), &[]).await;
    assert_eq!(signed.status, 200);
    assert_eq!(signed.body.as_ref(), HTML);
    sandboxed(&signed, "signed html");
    // `download=` still names the file.
    let named = t
        .http
        .get(
            &format!("{}/storage/v1{url}&download=page.html", t.url),
            &[],
        )
        .await;
    assert!(named
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment; filename=page.html;")));

    // Transformed images say nosniff too.
    let r = t
        .http
        .get(
            &format!(
                "{}/storage/v1/render/image/public/avatars/p.png?width=1",
                t.url
            ),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

/// HTML declared as an image, into a bucket with a MIME allow-list, is refused through
/// every way in: upload, upsert, overwrite, signed upload and TUS. Real images (even
/// labelled as another image type, as clients do) and text into a bucket without an
/// allow-list go in.
#[tokio::test]
async fn declared_types_are_checked_against_the_bytes() {
    let t = TestServer::start().await;
    let (uid, tok) = t.user().await;
    let api = Api::new(&t, &tok);
    let refused = |r: &common::reqwest_like::Response| {
        assert_storage_error(r, "415", "mime type text/html is not supported");
        assert_eq!(r.json()["error"], "invalid_mime_type");
    };
    let r = api
        .upload(&format!("avatars/{uid}/me.png"), "image/png", HTML)
        .await;
    refused(&r);
    let r = api
        .upload(&format!("avatars/{uid}/me.png"), "image/png", SVG)
        .await;
    refused(&r);
    let r = api
        .upload(&format!("avatars/{uid}/me.png"), "image/png", PNG_1X1)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = api
        .upload(
            &format!("avatars/{uid}/jpeg-as-png.png"),
            "image/png",
            JPEG_HEAD,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Overwrite (PUT) and upsert (POST + x-upsert).
    let r = api
        .send(
            "PUT",
            &format!("object/avatars/{uid}/me.png"),
            &[("content-type", "image/png")],
            HTML.to_vec(),
        )
        .await;
    refused(&r);
    let r = api
        .send(
            "POST",
            &format!("object/avatars/{uid}/me.png"),
            &[("content-type", "image/png"), ("x-upsert", "true")],
            HTML.to_vec(),
        )
        .await;
    refused(&r);
    // Multipart, the type in the part.
    let mut mp = b"--B\r\nContent-Disposition: form-data; name=\"\"; filename=\"blob\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    mp.extend_from_slice(HTML);
    mp.extend_from_slice(b"\r\n--B--\r\n");
    let r = api
        .send(
            "POST",
            &format!("object/avatars/{uid}/mp.png"),
            &[("content-type", "multipart/form-data; boundary=B")],
            mp,
        )
        .await;
    refused(&r);
    // The original is untouched.
    let r = public_get(&t, &format!("avatars/{uid}/me.png")).await;
    assert_eq!(r.body.as_ref(), PNG_1X1);

    // Signed upload.
    let r = api
        .json(
            "POST",
            &format!("object/upload/sign/avatars/{uid}/signed.png"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["url"].as_str().unwrap().to_string();
    let r = t
        .http
        .send(
            "PUT",
            &format!("{}/storage/v1{url}", t.url),
            &[("content-type", "image/png")],
            HTML.to_vec(),
        )
        .await;
    refused(&r);

    // TUS: creation with upload, finished at once.
    let meta = |k: &str, v: &str| {
        format!(
            "{k} {}",
            base64::engine::general_purpose::STANDARD.encode(v)
        )
    };
    let md = [
        meta("bucketName", "avatars"),
        meta("objectName", &format!("{uid}/tus.png")),
        meta("contentType", "image/png"),
    ]
    .join(",");
    let len = HTML.len().to_string();
    let r = api
        .send(
            "POST",
            "upload/resumable",
            &[
                ("tus-resumable", "1.0.0"),
                ("upload-length", &len),
                ("upload-metadata", &md),
                ("content-type", "application/offset+octet-stream"),
            ],
            HTML.to_vec(),
        )
        .await;
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(r.json()["message"], "mime type text/html is not supported");
    assert_eq!(
        public_get(&t, &format!("avatars/{uid}/tus.png"))
            .await
            .json()["statusCode"],
        "404"
    );

    // No allow-list: the declared type is the uploader's business (served with nosniff).
    let svc = Api::new(&t, SERVICE_KEY);
    let r = svc
        .json("POST", "bucket", serde_json::json!({"name": "docs"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = svc.upload("docs/page.txt", "text/plain", HTML).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = svc
        .upload("docs/unknown.png", "image/png", b"\x01\x02")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Send a request head over TCP with a few bytes of body and no more: the answer must come
/// without the server waiting for (or reading) the declared body.
async fn answer_without_body(t: &TestServer, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = t.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(head.replace("{addr}", &addr).as_bytes())
        .await
        .unwrap();
    s.write_all(b"0123456789").await.unwrap();
    let mut resp = Vec::new();
    // Well under the 10 s a refused body would otherwise be drained for.
    let read = tokio::time::timeout(std::time::Duration::from_secs(6), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&buf[..n]);
            if resp.windows(4).any(|w| w == b"\r\n\r\n")
                && String::from_utf8_lossy(&resp).contains('}')
            {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body is outstanding");
    String::from_utf8_lossy(&resp).to_string()
}

/// A declared 2 GB body is refused from its Content-Length (or Upload-Length) at once, in
/// Storage's shape, for standard, signed and TUS uploads.
#[tokio::test]
async fn declared_oversize_is_refused_before_the_body() {
    let t = TestServer::start().await;
    let (uid, tok) = t.user().await;
    let two_gb = 2u64 << 30;
    // Standard upload (bucket limit 2 MB; and the global limit, here to a bucket without one).
    for path in [
        format!("avatars/{uid}/big.png"),
        "loose/big.bin".to_string(),
    ] {
        if path.starts_with("loose") {
            t.batch("insert into storage.buckets (id, name) values ('loose', 'loose')")
                .await;
        }
        let bearer = if path.starts_with("loose") {
            SERVICE_KEY
        } else {
            &tok
        };
        let text = answer_without_body(
            &t,
            &format!(
                "POST /storage/v1/object/{path} HTTP/1.1\r\nhost: {{addr}}\r\n\
                 authorization: Bearer {bearer}\r\ncontent-type: image/png\r\n\
                 content-length: {two_gb}\r\n\r\n"
            ),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains(r#""statusCode":"413""#), "{text}");
    }
    // Signed upload.
    let api = Api::new(&t, &tok);
    let r = api
        .json(
            "POST",
            &format!("object/upload/sign/avatars/{uid}/s.png"),
            serde_json::json!({}),
        )
        .await;
    let url = r.json()["url"].as_str().unwrap().to_string();
    let text = answer_without_body(
        &t,
        &format!(
            "PUT /storage/v1{url} HTTP/1.1\r\nhost: {{addr}}\r\ncontent-type: image/png\r\n\
             content-length: {two_gb}\r\n\r\n"
        ),
    )
    .await;
    assert!(text.contains(r#""statusCode":"413""#), "{text}");
    // TUS: Upload-Length over the limit, and a PATCH longer than what is left.
    let md = format!(
        "bucketName {},objectName {},contentType {}",
        base64::engine::general_purpose::STANDARD.encode("avatars"),
        base64::engine::general_purpose::STANDARD.encode(format!("{uid}/t.png")),
        base64::engine::general_purpose::STANDARD.encode("image/png"),
    );
    let text = answer_without_body(
        &t,
        &format!(
            "POST /storage/v1/upload/resumable HTTP/1.1\r\nhost: {{addr}}\r\n\
             authorization: Bearer {tok}\r\ntus-resumable: 1.0.0\r\nupload-length: {two_gb}\r\n\
             upload-metadata: {md}\r\ncontent-type: application/offset+octet-stream\r\n\
             content-length: {two_gb}\r\n\r\n"
        ),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let r = api
        .send(
            "POST",
            "upload/resumable",
            &[
                ("tus-resumable", "1.0.0"),
                ("upload-length", "1000"),
                ("upload-metadata", &md),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").unwrap().to_string();
    let text = answer_without_body(
        &t,
        &format!(
            "PATCH {loc} HTTP/1.1\r\nhost: {{addr}}\r\nauthorization: Bearer {tok}\r\n\
             tus-resumable: 1.0.0\r\nupload-offset: 0\r\n\
             content-type: application/offset+octet-stream\r\ncontent-length: {two_gb}\r\n\r\n"
        ),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // The upload is still there, at offset 0, and can be finished.
    let r = api
        .send(
            "HEAD",
            loc.trim_start_matches("/storage/v1/"),
            &[("tus-resumable", "1.0.0")],
            "",
        )
        .await;
    assert_eq!(r.header("upload-offset"), Some("0"));
}

/// A PNG of 6000 × 6000 16-bit RGBA pixels, all zero, compressed by hand (fixed-Huffman
/// deflate of 258-byte runs): about 1.8 MB on disk, 288 MB decoded.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, v: u32, len: u32) {
            self.acc |= u64::from(v) << self.n;
            self.n += len;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u32, len: u32) {
            let rev = (0..len).fold(0, |r, i| r | (((code >> i) & 1) << (len - 1 - i)));
            self.put(rev, len);
        }
    }
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let raw: u64 = u64::from(h) * (1 + u64::from(w) * 8);
    let mut z = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    z.put(1, 1); // last block
    z.put(1, 2); // fixed Huffman
    z.code(0x30, 8); // literal 0
    let mut left = raw - 1;
    while left >= 258 {
        z.code(0xC5, 8); // length 258 (symbol 285)
        z.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        z.code(0x30, 8);
    }
    z.code(0, 7); // end of block
    if z.n > 0 {
        z.put(0, 8 - z.n);
    }
    let adler = (((raw % 65521) as u32) << 16) | 1;
    z.out.extend_from_slice(&adler.to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |ty: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut td = ty.to_vec();
        td.extend_from_slice(data);
        png.extend_from_slice(&td);
        png.extend_from_slice(&crc32(&td).to_be_bytes());
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[16, 6, 0, 0, 0]); // 16-bit RGBA
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z.out);
    chunk(b"IEND", &[]);
    png
}

/// A small file that decodes to hundreds of megabytes is refused before decoding, with a
/// client error in Storage's shape; a normal image still transforms.
#[tokio::test]
async fn image_transforms_refuse_decompression_bombs() {
    let t = TestServer::start().await;
    let svc = Api::new(&t, SERVICE_KEY);
    // The generator makes valid PNGs: a small one decodes.
    let small = png_bomb(40, 30);
    let img = image::load_from_memory(&small).expect("a valid PNG");
    assert_eq!((img.width(), img.height()), (40, 30));
    let r = svc.upload("avatars/small.png", "image/png", &small).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let bomb = png_bomb(6000, 6000);
    assert!(bomb.len() < 2 << 20, "{}", bomb.len());
    let r = svc.upload("avatars/bomb.png", "image/png", &bomb).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let render = |name: &str| {
        let url = format!(
            "{}/storage/v1/render/image/public/avatars/{name}?width=100",
            t.url
        );
        let t = &t;
        async move { t.http.get(&url, &[]).await }
    };
    let r = render("bomb.png").await;
    assert_storage_error(&r, "400", "The image is too large to transform");
    let r = render("small.png").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn create(
    api: &Api<'_>,
    owner: &str,
    name: &str,
    len: usize,
) -> common::reqwest_like::Response {
    let md = format!(
        "bucketName {},objectName {},contentType {}",
        base64::engine::general_purpose::STANDARD.encode("avatars"),
        base64::engine::general_purpose::STANDARD.encode(format!("{owner}/{name}")),
        base64::engine::general_purpose::STANDARD.encode("image/png"),
    );
    let len = len.to_string();
    api.send(
        "POST",
        "upload/resumable",
        &[
            ("tus-resumable", "1.0.0"),
            ("upload-length", &len),
            ("upload-metadata", &md),
        ],
        "",
    )
    .await
}

/// At most `max_resumable_uploads_per_user` unfinished TUS uploads per user: past it, a
/// creation is refused in TUS's way (429 with Tus-Resumable); terminating or finishing
/// one makes room; another user and the service role are not affected.
#[tokio::test]
async fn unfinished_tus_uploads_are_bounded_per_user() {
    let t = TestServer::start_with(|c| c.storage.max_resumable_uploads_per_user = 3).await;
    let (uid, tok) = t.user().await;
    let api = Api::new(&t, &tok);
    let mut locations = vec![];
    for i in 0..3 {
        let r = create(&api, &uid, &format!("{i}.png"), PNG_1X1.len()).await;
        assert_eq!(r.status, 201, "{}", r.text());
        locations.push(r.header("location").unwrap().to_string());
    }
    let r = create(&api, &uid, "3.png", PNG_1X1.len()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("tus-resumable"), Some("1.0.0"));
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("Too many unfinished resumable uploads"));

    // Another user has their own allowance; the service role has none.
    let (uid2, tok2) = t.user().await;
    let api2 = Api::new(&t, &tok2);
    let r = create(&api2, &uid2, "a.png", 10).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let svc = Api::new(&t, SERVICE_KEY);
    for i in 0..4 {
        let r = create(&svc, "svc", &format!("{i}.png"), 10).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }

    // Terminating one makes room.
    let path = |loc: &str| loc.trim_start_matches("/storage/v1/").to_string();
    let r = api
        .send(
            "DELETE",
            &path(&locations[0]),
            &[("tus-resumable", "1.0.0")],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    let r = create(&api, &uid, "3.png", PNG_1X1.len()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Finishing one makes room too (and the upload lands).
    let r = api
        .send(
            "PATCH",
            &path(&locations[1]),
            &[
                ("tus-resumable", "1.0.0"),
                ("upload-offset", "0"),
                ("content-type", "application/offset+octet-stream"),
            ],
            PNG_1X1.to_vec(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        public_get(&t, &format!("avatars/{uid}/1.png"))
            .await
            .body
            .as_ref(),
        PNG_1X1
    );
    let r = create(&api, &uid, "4.png", PNG_1X1.len()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = create(&api, &uid, "5.png", PNG_1X1.len()).await;
    assert_eq!(r.status, 429, "{}", r.text());
}

/// The issue's case through the file-upload function: HTML it accepts (chat-files allows
/// text/html) comes back from its signed URL as an attachment under a sandboxing CSP.
#[tokio::test]
async fn file_upload_html_is_not_served_inline_from_its_signed_url() {
    let t = TestServer::start().await;
    let (_, tok) = t.user().await;
    let mut body = b"--B\r\ncontent-disposition: form-data; name=\"file\"; filename=\"page.html\"\r\ncontent-type: text/html\r\n\r\n".to_vec();
    body.extend_from_slice(HTML);
    body.extend_from_slice(b"\r\n--B--\r\n");
    let auth = format!("Bearer {tok}");
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/functions/v1/file-upload", t.url),
            &[
                ("apikey", common::ANON_KEY),
                ("authorization", &auth),
                ("content-type", "multipart/form-data; boundary=B"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let signed = r.json()["signed_url"].as_str().unwrap().to_string();
    let at = signed.find("/storage/v1/").unwrap();
    let got = t
        .http
        .get(&format!("{}{}", t.url, &signed[at..]), &[])
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.as_ref(), HTML);
    assert_eq!(got.header("content-type"), Some("text/html"));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert!(got
        .header("content-security-policy")
        .is_some_and(|c| c.contains("sandbox")));
    assert!(got
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment; filename=")));
}
