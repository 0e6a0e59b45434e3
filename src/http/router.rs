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

#[cfg(test)]
mod tests {
    use super::*;

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
