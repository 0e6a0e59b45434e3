//! HTTP plumbing shared by every API: body types, responses, CORS, the router and server.

/// The `AsyncWrite` methods of a stream wrapper that pass straight through to its `inner`
/// stream: writes, vectored writes and flush (each wrapper writes its own `poll_shutdown`).
macro_rules! forward_writes {
    () => {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }
    };
}
pub(crate) use forward_writes;

pub mod body;
pub mod conns;
pub mod cors;
pub mod limits;
pub mod linger;
pub mod router;
pub mod server;
pub mod static_files;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: buffered or streamed.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
pub type Req = hyper::Request<hyper::body::Incoming>;
pub type Resp = Response<Body>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Stream a body from any `Stream<Item = Result<Bytes, E>>`.
pub fn stream<S, E>(s: S) -> Body
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + Sync + 'static,
    E: Into<BoxError> + 'static,
{
    use futures::TryStreamExt;
    http_body_util::StreamBody::new(s.map_ok(hyper::body::Frame::data).map_err(Into::into)).boxed()
}

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut r = Response::new(full(serde_json::to_vec(value).expect("json serializes")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn status_response(status: StatusCode) -> Resp {
    let mut r = Response::new(empty());
    *r.status_mut() = status;
    r
}

/// Errors of each API implement this, so one function turns any of them into a response
/// and logs internal detail once (never to the client).
pub trait ApiError: std::fmt::Debug {
    fn status(&self) -> StatusCode;
    fn body(&self) -> serde_json::Value;
    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![]
    }
    /// Detail for the log only (internal errors); never sent to the client.
    fn log_detail(&self) -> Option<String> {
        None
    }
}

pub fn error_response<E: ApiError>(e: &E) -> Resp {
    if let Some(detail) = e.log_detail() {
        let status = e.status().as_u16();
        if matches!(status, 503 | 504 | 544) {
            // The database is down, restarting or busy: expected to pass, one line per
            // request at a level below error.
            tracing::warn!(status, detail = %detail, "database unavailable");
        } else {
            tracing::error!(status, detail = %detail, "internal error");
        }
    }
    let mut r = json_response(e.status(), &e.body());
    for (k, v) in e.headers() {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

/// The client's address: the first `X-Forwarded-For` hop when `[auth] trust_forwarded_for`
/// says a proxy in front sets it (and it is an address), else the TCP peer.
pub fn client_ip(
    trust_forwarded_for: bool,
    headers: &http::HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Option<std::net::IpAddr> {
    let forwarded = trust_forwarded_for
        .then(|| headers.get("x-forwarded-for")?.to_str().ok())
        .flatten()
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok());
    forwarded.or(peer.map(|a| a.ip()))
}

/// Query-string pairs, form-decoded (`+` is a space), keys kept in order with repeats.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}
