//! CORS as Supabase's gateway answers it: any origin, the request's headers echoed on
//! preflight, and the headers clients read (Content-Range, Location, ...) exposed.

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use super::{status_response, Resp};

const METHODS: &str = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS";
const EXPOSE: &str = "Content-Range, Content-Location, Location, Range-Unit, Preference-Applied, \
    X-Total-Count, Link, X-Supabase-Api-Version, sb-request-id, X-Request-Id, ETag, \
    Content-Disposition, Content-Length, Content-Type, Upload-Offset, Upload-Length, \
    Tus-Resumable, Tus-Version, Tus-Max-Size, Tus-Extension, x-relay-error";
const DEFAULT_ALLOW_HEADERS: &str = "authorization, x-client-info, apikey, content-type, \
    accept-profile, content-profile, prefer, range, x-upsert, x-metadata, cache-control, \
    x-supabase-api-version, x-region, if-none-match, upload-length, upload-offset, \
    upload-metadata, tus-resumable";

pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS && headers.contains_key("access-control-request-method")
}

pub fn preflight(headers: &HeaderMap) -> Resp {
    let mut r = status_response(StatusCode::OK);
    let h = r.headers_mut();
    let allow = headers
        .get("access-control-request-headers")
        .cloned()
        .unwrap_or(HeaderValue::from_static(DEFAULT_ALLOW_HEADERS));
    h.insert("access-control-allow-headers", allow);
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static(METHODS),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("3600"));
    h.insert("content-length", HeaderValue::from_static("0"));
    r
}

/// Added to every response.
pub fn decorate(request_origin: Option<&HeaderValue>, resp: &mut Resp) {
    let h = resp.headers_mut();
    let origin = request_origin
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    h.insert("access-control-allow-origin", origin);
    h.insert(
        "access-control-allow-credentials",
        HeaderValue::from_static("true"),
    );
    h.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(EXPOSE),
    );
    h.append("vary", HeaderValue::from_static("Origin"));
}
