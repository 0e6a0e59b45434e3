//! Prefix routing: which API a path belongs to. Each API parses the rest itself.

use matchit::Router;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Health,
    Rest,
    Auth,
    Storage,
    Realtime,
    Functions,
    Metrics,
}

pub struct ApiRouter(Router<Api>);

impl Default for ApiRouter {
    fn default() -> Self {
        let mut r = Router::new();
        for (prefix, api) in [
            ("rest", Api::Rest),
            ("auth", Api::Auth),
            ("storage", Api::Storage),
            ("realtime", Api::Realtime),
            ("functions", Api::Functions),
        ] {
            r.insert(format!("/{prefix}/v1"), api)
                .expect("static route");
            r.insert(format!("/{prefix}/v1/"), api)
                .expect("static route");
            r.insert(format!("/{prefix}/v1/{{*rest}}"), api)
                .expect("static route");
        }
        r.insert("/health", Api::Health).expect("static route");
        r.insert("/metrics", Api::Metrics).expect("static route");
        ApiRouter(r)
    }
}

impl ApiRouter {
    /// The API and the path below its prefix (without a leading `/`).
    pub fn route<'p>(&self, path: &'p str) -> Option<(Api, &'p str)> {
        let m = self.0.at(path).ok()?;
        let rest = m.params.get("rest").unwrap_or("");
        Some((*m.value, rest))
    }
}

/// Routes Supabase's gateway (Kong) serves without an API key: health, the auth links a
/// browser follows from an email or a provider (verify, callback, authorize), the JWKS,
/// and storage's public and signed object URLs (reads only). CORS preflights are answered
/// before this is asked.
pub fn is_open(method: &http::Method, path: &str) -> bool {
    if path == "/health" {
        return true;
    }
    if let Some(rest) = path.strip_prefix("/auth/v1/") {
        let rest = rest.trim_end_matches('/');
        return matches!(
            rest,
            "verify" | "callback" | "authorize" | ".well-known/jwks.json"
        );
    }
    if let Some(rest) = path.strip_prefix("/storage/v1/") {
        let read = matches!(*method, http::Method::GET | http::Method::HEAD);
        return read
            && [
                "object/public/",
                "object/sign/",
                "render/image/public/",
                "render/image/sign/",
            ]
            .iter()
            .any(|p| rest.starts_with(p));
    }
    false
}

/// Whether a request brings any credential: an `apikey` header or query parameter, an
/// `Authorization` header, or (the WebSocket function, whose browser clients cannot set
/// headers) a `token` query parameter.
pub fn has_credential(headers: &http::HeaderMap, path: &str, query: Option<&str>) -> bool {
    let present = |name: &str| headers.get(name).is_some_and(|v| !v.is_empty());
    if present("apikey") || present("authorization") {
        return true;
    }
    let ws_fn = path.trim_end_matches('/') == "/functions/v1/websocket-handler";
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(k, v)| !v.is_empty() && (k == "apikey" || (ws_fn && k == "token")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_routes_are_kongs() {
        use http::Method;
        let get = Method::GET;
        for p in [
            "/health",
            "/auth/v1/verify",
            "/auth/v1/callback",
            "/auth/v1/authorize",
            "/auth/v1/.well-known/jwks.json",
            "/storage/v1/object/public/b/a.png",
            "/storage/v1/object/sign/b/a.png",
            "/storage/v1/render/image/public/b/a.png",
            "/storage/v1/render/image/sign/b/a.png",
        ] {
            assert!(is_open(&get, p), "{p}");
        }
        for p in [
            "/rest/v1/todos",
            "/auth/v1/user",
            "/auth/v1/signup",
            "/auth/v1/verify/../user",
            "/storage/v1/object/b/a.png",
            "/storage/v1/object/authenticated/b/a.png",
            "/storage/v1/bucket",
            "/realtime/v1/websocket",
            "/functions/v1/chat-completion",
        ] {
            assert!(!is_open(&get, p), "{p}");
        }
        // Signing a URL (POST) needs a key; reading one does not.
        assert!(!is_open(&Method::POST, "/storage/v1/object/sign/b/a.png"));
        assert!(!is_open(
            &Method::DELETE,
            "/storage/v1/object/public/b/a.png"
        ));
    }

    #[test]
    fn credentials() {
        let mut h = http::HeaderMap::new();
        assert!(!has_credential(&h, "/rest/v1/t", None));
        assert!(!has_credential(&h, "/rest/v1/t", Some("apikey=&token=x")));
        assert!(has_credential(
            &h,
            "/realtime/v1/websocket",
            Some("apikey=k&vsn=1.0.0")
        ));
        assert!(!has_credential(&h, "/rest/v1/t", Some("token=x")));
        assert!(has_credential(
            &h,
            "/functions/v1/websocket-handler",
            Some("token=x")
        ));
        h.insert("apikey", "k".parse().unwrap());
        assert!(has_credential(&h, "/rest/v1/t", None));
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer x".parse().unwrap());
        assert!(has_credential(&h, "/rest/v1/t", None));
    }

    #[test]
    fn routes() {
        let r = ApiRouter::default();
        assert_eq!(r.route("/rest/v1/todos"), Some((Api::Rest, "todos")));
        assert_eq!(r.route("/rest/v1/"), Some((Api::Rest, "")));
        assert_eq!(r.route("/rest/v1"), Some((Api::Rest, "")));
        assert_eq!(r.route("/rest/v1/rpc/f"), Some((Api::Rest, "rpc/f")));
        assert_eq!(
            r.route("/storage/v1/object/b/a/b.png"),
            Some((Api::Storage, "object/b/a/b.png"))
        );
        assert_eq!(r.route("/health"), Some((Api::Health, "")));
        assert_eq!(r.route("/nope"), None);
        assert_eq!(r.route("/rest/v2/x"), None);
    }
}
