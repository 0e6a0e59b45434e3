//! `Prefer` and `Accept` headers, parsed without the database.

use super::error::RestError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    #[default]
    Minimal,
    HeadersOnly,
    Representation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Exact,
    Planned,
    Estimated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Merge,
    Ignore,
}

#[derive(Debug, Clone, Default)]
pub struct Prefer {
    pub ret: Option<Return>,
    pub count: Option<Count>,
    pub resolution: Option<Resolution>,
    pub missing_default: bool,
    pub tx_rollback: Option<bool>,
    pub strict: bool,
    pub max_affected: Option<i64>,
    pub single_object: bool,
    pub timezone: Option<String>,
    /// Parts we did not understand (an error under `handling=strict`).
    pub invalid: Vec<String>,
}

impl Prefer {
    /// `handling=strict, max-affected=n`: the most rows a write may touch (else none).
    pub fn strict_max_affected(&self) -> Option<i64> {
        self.max_affected.filter(|_| self.strict)
    }

    /// Every `Prefer` header value, each a comma-separated list.
    pub fn parse<'a>(values: impl Iterator<Item = &'a str>) -> Prefer {
        let mut p = Prefer::default();
        for v in values {
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (k, val) = part
                    .split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .unwrap_or((part, ""));
                match (k, val) {
                    ("return", "minimal") => p.ret = Some(Return::Minimal),
                    ("return", "headers-only") => p.ret = Some(Return::HeadersOnly),
                    ("return", "representation") => p.ret = Some(Return::Representation),
                    ("count", "exact") => p.count = Some(Count::Exact),
                    ("count", "planned") => p.count = Some(Count::Planned),
                    ("count", "estimated") => p.count = Some(Count::Estimated),
                    ("resolution", "merge-duplicates") => p.resolution = Some(Resolution::Merge),
                    ("resolution", "ignore-duplicates") => p.resolution = Some(Resolution::Ignore),
                    ("missing", "default") => p.missing_default = true,
                    ("missing", "null") => p.missing_default = false,
                    ("tx", "rollback") => p.tx_rollback = Some(true),
                    ("tx", "commit") => p.tx_rollback = Some(false),
                    ("handling", "strict") => p.strict = true,
                    ("handling", "lenient") => p.strict = false,
                    ("params", "single-object") => p.single_object = true,
                    ("max-affected", n) if n.parse::<i64>().is_ok() => {
                        p.max_affected = n.parse().ok()
                    }
                    ("timezone", tz) if !tz.is_empty() => p.timezone = Some(tz.to_string()),
                    _ => p.invalid.push(part.to_string()),
                }
            }
        }
        p
    }

    pub fn check_strict(&self) -> Result<(), RestError> {
        if self.strict && !self.invalid.is_empty() {
            return Err(RestError::new(
                400,
                "PGRST122",
                "Invalid preferences given with handling=strict",
            )
            .details(format!("Invalid preferences: {}", self.invalid.join(", "))));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    Json,
    Object,
    Csv,
    GeoJson,
    OpenApi,
    Plan {
        text: bool,
        for_media: String,
        options: Vec<String>,
    },
    /// `*/*` for a function returning a custom type: plain text/octet output.
    Text,
    Octet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    pub media: Media,
    pub strip_nulls: bool,
}

/// The first media type we can produce from an `Accept` header.
pub fn parse_accept(header: Option<&str>) -> Result<Accept, RestError> {
    parse_accept_for(header, true)
}

/// As `parse_accept`; `raw` says whether the resource can answer text/plain and
/// application/octet-stream (scalar functions can, tables cannot: those are skipped).
pub fn parse_accept_for(header: Option<&str>, raw: bool) -> Result<Accept, RestError> {
    let h = match header {
        None => {
            return Ok(Accept {
                media: Media::Json,
                strip_nulls: false,
            })
        }
        Some(h) if h.trim().is_empty() => {
            return Ok(Accept {
                media: Media::Json,
                strip_nulls: false,
            })
        }
        Some(h) => h,
    };
    for item in split_media_list(h) {
        let mut parts = item.split(';').map(str::trim);
        let ty = parts.next().unwrap_or("").to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    v.trim().trim_matches('"').to_string(),
                ),
                None => (p.to_ascii_lowercase(), String::new()),
            })
            .collect();
        let strip = params.iter().any(|(k, v)| k == "nulls" && v == "stripped");
        let media = match ty.as_str() {
            "application/json"
            | "application/*"
            | "*/*"
            | "application/vnd.pgrst.array+json"
            | "application/vnd.pgrst.array" => Media::Json,
            "application/vnd.pgrst.object+json" | "application/vnd.pgrst.object" => Media::Object,
            "text/csv" => Media::Csv,
            "application/geo+json" => Media::GeoJson,
            "application/openapi+json" => Media::OpenApi,
            "text/plain" if raw => Media::Text,
            "application/octet-stream" if raw => Media::Octet,
            "application/vnd.pgrst.plan"
            | "application/vnd.pgrst.plan+json"
            | "application/vnd.pgrst.plan+text" => {
                let for_media = params
                    .iter()
                    .find(|(k, _)| k == "for")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| "application/json".into());
                let options = params
                    .iter()
                    .find(|(k, _)| k == "options")
                    .map(|(_, v)| {
                        v.split('|')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                Media::Plan {
                    text: ty.ends_with("+text"),
                    for_media,
                    options,
                }
            }
            _ => continue,
        };
        return Ok(Accept {
            media,
            strip_nulls: strip,
        });
    }
    Err(RestError::not_acceptable(h))
}

/// Split an Accept header on commas that are not inside quotes.
fn split_media_list(h: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_q = false;
    for c in h.chars() {
        match c {
            '"' => {
                in_q = !in_q;
                cur.push(c)
            }
            ',' if !in_q => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer() {
        let p = Prefer::parse(
            [
                "count=exact, missing=default, return=representation",
                "handling=strict, max-affected=2, tx=rollback",
            ]
            .into_iter(),
        );
        assert_eq!(p.count, Some(Count::Exact));
        assert!(p.missing_default);
        assert_eq!(p.ret, Some(Return::Representation));
        assert!(p.strict);
        assert_eq!(p.max_affected, Some(2));
        assert_eq!(p.tx_rollback, Some(true));
        assert!(p.check_strict().is_ok());
        let p = Prefer::parse(["handling=strict, bogus=1"].into_iter());
        assert_eq!(p.check_strict().unwrap_err().code, "PGRST122");
    }

    #[test]
    fn accept() {
        assert_eq!(parse_accept(None).unwrap().media, Media::Json);
        assert_eq!(
            parse_accept(Some("application/vnd.pgrst.object+json"))
                .unwrap()
                .media,
            Media::Object
        );
        let a = parse_accept(Some("application/vnd.pgrst.object+json;nulls=stripped")).unwrap();
        assert!(a.strip_nulls);
        let a = parse_accept(Some(
            "application/vnd.pgrst.plan+text; for=\"application/json\"; options=analyze|verbose;",
        ))
        .unwrap();
        assert_eq!(
            a.media,
            Media::Plan {
                text: true,
                for_media: "application/json".into(),
                options: vec!["analyze".into(), "verbose".into()]
            }
        );
        assert_eq!(parse_accept(Some("text/xml")).unwrap_err().code, "PGRST107");
        assert_eq!(
            parse_accept(Some("text/xml, text/csv")).unwrap().media,
            Media::Csv
        );
    }
}
