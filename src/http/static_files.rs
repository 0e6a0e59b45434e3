//! `--static DIR` / `[server] static_dir`: a built site (an SPA's `dist/`) served at `/` for
//! every path the APIs do not own, as PocketBase serves `pb_public`.
//!
//! - GET and HEAD only; files by extension with their MIME type, `X-Content-Type-Options:
//!   nosniff`, a validator ETag (size and modification time) answered with 304 on
//!   `If-None-Match`, and `Cache-Control` by kind: HTML revalidates every time, file names
//!   carrying a content hash (`index-B3xk9_aZ.js`) are immutable for a year.
//! - A page path (no extension) that is not a file answers `index.html` to a client that
//!   accepts HTML (client-side routing); a directory answers its own `index.html` or the
//!   same fallback, never a listing.
//! - The path never leaves the root: it is percent-decoded once and refused (400) when it
//!   holds NUL, a backslash or invalid UTF-8; `.`/`..` segments and dot files are 404; the
//!   resolved file (symlinks followed) must still lie inside the canonical root.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use http::header::{
    ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;
use tokio_util::io::ReaderStream;

use super::{empty, full, Resp};

/// First path segments that belong to the APIs (or Supabase's other services): a miss
/// there stays the gateway's JSON 404, never the site's index.html.
const API_SEGMENTS: &[&str] = &[
    "rest",
    "auth",
    "storage",
    "realtime",
    "functions",
    "health",
    "metrics",
    "graphql",
    "pg",
    "analytics",
];

pub struct StaticSite {
    root: PathBuf,
}

/// A regular file inside the root, chosen to answer.
struct Found {
    path: PathBuf,
    meta: std::fs::Metadata,
}

impl StaticSite {
    /// The site at `dir` (canonicalized: symlinks inside are checked against it).
    pub fn new(dir: &Path) -> std::io::Result<StaticSite> {
        let root = std::fs::canonicalize(dir)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(StaticSite { root })
    }

    /// Whether `path` is the site's to answer (not an API's).
    pub fn owns(path: &str) -> bool {
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        !API_SEGMENTS.contains(&first)
    }

    pub async fn serve(&self, method: &Method, raw_path: &str, headers: &HeaderMap) -> Resp {
        if method != Method::GET && method != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let segments = match segments(raw_path) {
            Ok(s) => s,
            Err(status) => return text(status, reason(status)),
        };
        let found = match self.find(&segments).await {
            Some(f) => Some(f),
            None if wants_page(&segments, headers) => self.file(self.root.join("index.html")).await,
            None => None,
        };
        match found {
            Some(f) => self.answer(method, f, headers).await,
            None => text(StatusCode::NOT_FOUND, "Not Found"),
        }
    }

    /// The file at `segments`, or the index.html of the directory there.
    async fn find(&self, segments: &[String]) -> Option<Found> {
        let mut p = self.root.clone();
        p.extend(segments);
        let meta = tokio::fs::metadata(&p).await.ok()?;
        if meta.is_dir() {
            return self.file(p.join("index.html")).await;
        }
        self.file(p).await
    }

    /// A regular file that, symlinks resolved, lies inside the root.
    async fn file(&self, p: PathBuf) -> Option<Found> {
        let real = tokio::fs::canonicalize(&p).await.ok()?;
        if !real.starts_with(&self.root) {
            tracing::warn!(path = %p.display(), "static file resolves outside the root; refused");
            return None;
        }
        let meta = tokio::fs::metadata(&real).await.ok()?;
        meta.is_file().then_some(Found { path: real, meta })
    }

    async fn answer(&self, method: &Method, f: Found, headers: &HeaderMap) -> Resp {
        let etag = etag(&f.meta);
        let name = f
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        let ext = extension(&name);
        let cache = cache_control(&name, &ext);
        let mut r = if not_modified(headers, &etag) {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        } else {
            let len = f.meta.len();
            let body = if method == Method::HEAD {
                empty()
            } else {
                match tokio::fs::File::open(&f.path).await {
                    Ok(file) => super::stream(ReaderStream::new(file)),
                    Err(e) => {
                        tracing::warn!(error = %e, "static file unreadable");
                        return text(StatusCode::NOT_FOUND, "Not Found");
                    }
                }
            };
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(mime(&ext)));
            h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            r
        };
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(ETAG, v);
        }
        h.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        r
    }
}

/// The decoded path segments, empty ones dropped. 400 for what no file name holds (NUL,
/// backslash, invalid UTF-8 or percent-encoding of them); 404 for `.`, `..` and dot files.
fn segments(raw: &str) -> Result<Vec<String>, StatusCode> {
    let mut out = vec![];
    for seg in raw.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| StatusCode::BAD_REQUEST)?;
        if decoded.contains(['\0', '\\']) {
            return Err(StatusCode::BAD_REQUEST);
        }
        // A decoded slash would re-split the path: `..%2f` and friends.
        if decoded.contains('/') || decoded.starts_with('.') {
            return Err(StatusCode::NOT_FOUND);
        }
        out.push(decoded.into_owned());
    }
    Ok(out)
}

/// A page path (no extension in its last segment) asked for by a client that accepts HTML.
fn wants_page(segments: &[String], headers: &HeaderMap) -> bool {
    let last = segments.last().map(String::as_str).unwrap_or("");
    let accepts_html = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/html") || v.contains("*/*"));
    !last.contains('.') && accepts_html
}

fn extension(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

fn etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}\"", meta.len(), mtime)
}

/// `If-None-Match` lists this ETag (weak comparison, as RFC 9110 asks for GET) or `*`.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

fn cache_control(name: &str, ext: &str) -> &'static str {
    if ext == "html" || ext == "htm" {
        "no-cache"
    } else if is_hashed(name) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=0, must-revalidate"
    }
}

/// A bundler's content hash in the name: `app-ABCD1234.js`, `index.B3xk9_aZ.css` (the last
/// part of the stem: 8 to 32 word characters, letters and digits mixed).
fn is_hashed(name: &str) -> bool {
    let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
    let part = stem.rsplit(['-', '.']).next().unwrap_or("");
    (8..=32).contains(&part.len())
        && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && part.chars().any(|c| c.is_ascii_digit())
        && part.chars().any(|c| c.is_ascii_alphabetic())
}

pub fn mime(ext: &str) -> &'static str {
    match ext {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

fn text(status: StatusCode, msg: &'static str) -> Resp {
    let mut r = Response::new(full(msg));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_refuses_escapes() {
        assert_eq!(segments("/a/b.js").unwrap(), ["a", "b.js"]);
        assert_eq!(segments("/a%20b").unwrap(), ["a b"]);
        assert_eq!(segments("/../etc/passwd"), Err(StatusCode::NOT_FOUND));
        assert_eq!(segments("/%2e%2e/x"), Err(StatusCode::NOT_FOUND));
        assert_eq!(segments("/a/..%2f..%2fx"), Err(StatusCode::NOT_FOUND));
        assert_eq!(segments("/.env"), Err(StatusCode::NOT_FOUND));
        assert_eq!(segments("/a%5c..%5cx"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(segments("/a%00.js"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(segments("/%ff"), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn flag_and_variable_set_the_folder() {
        use crate::config::{Config, ServeArgs};
        let dir = std::env::temp_dir();
        let dir_s = dir.to_string_lossy().to_string();
        let var = |k: &str| (k == "OXIBASE_SERVER__STATIC_DIR").then(|| dir_s.clone());
        let cfg = Config::from_layers(None, &ServeArgs::default(), &var).unwrap();
        assert_eq!(cfg.server.static_dir.as_deref(), Some(dir.as_path()));
        let args = ServeArgs {
            static_dir: Some("/nonexistent-oxibase-site".into()),
            ..Default::default()
        };
        let err = Config::from_layers(None, &args, &var)
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.static_dir"), "{err}");
    }

    #[test]
    fn hashed_names_and_api_paths() {
        assert!(is_hashed("index-B3xk9_aZ.js"));
        assert!(is_hashed("app-ABCD1234.css"));
        assert!(is_hashed("chunk.4f9a12bc.js"));
        assert!(!is_hashed("index.html"));
        assert!(!is_hashed("bootstrap-dropdown.js"));
        assert!(!is_hashed("favicon.ico"));
        assert!(StaticSite::owns("/"));
        assert!(StaticSite::owns("/chat/123"));
        assert!(!StaticSite::owns("/rest/v2/x"));
        assert!(!StaticSite::owns("/health"));
    }
}
