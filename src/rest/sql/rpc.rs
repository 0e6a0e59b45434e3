//! RPC plans -> one statement: a scalar call, or a read over a set-returning call.

use super::{call_sql, wrap_read, BodyShape, Sql};
use crate::rest::plan::{Call, Node};
use crate::rest::prefer::Media;

/// How a function returning one scalar renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarBody {
    /// `void`: no body.
    Void,
    /// text/plain or octet-stream: the scalar's own text, not JSON.
    Text,
    Json,
}

/// A call returning one scalar (or void).
pub fn rpc_scalar_sql(call: &Call, body: ScalarBody) -> Sql {
    let mut q = Sql::default();
    let (pre, c) = call_sql(&mut q, call);
    let body = match body {
        ScalarBody::Void => "NULL::text",
        ScalarBody::Text => "pgrst_scalar.pgrst_scalar::text",
        ScalarBody::Json => "to_json(pgrst_scalar.pgrst_scalar)::text",
    };
    q.text = format!(
        "SELECT NULL::int8 AS total, 1::int8 AS page, {body} AS body, NULL::text AS location FROM {}{c} AS pgrst_scalar",
        pre.map(|p| format!("{p}, LATERAL ")).unwrap_or_default()
    );
    q
}

/// A call returning rows (or one composite), read through its planned node
/// (`Source::Call`).
pub fn rpc_rows_sql(
    node: &Node,
    count: bool,
    media: &Media,
    strip: bool,
    shape: &BodyShape,
) -> Sql {
    let mut q = Sql::default();
    q.text = wrap_read(&mut q, node, count, media, strip, shape, None);
    q
}

/// The exact statements of representative RPC plans.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::plan::{OutItem, Source};

    fn call(args: Vec<(&str, &str, &str)>, body: &str) -> Call {
        Call {
            schema: "public".into(),
            name: "add".into(),
            args: args
                .into_iter()
                .map(|(k, t, n)| (k.into(), t.into(), n.into()))
                .collect(),
            single_json: None,
            body: body.into(),
            variadic_last: false,
        }
    }

    #[test]
    fn scalar_with_named_args() {
        let c = call(
            vec![("a0", "integer", "a"), ("a1", "integer", "b")],
            r#"{"a0":1,"a1":2}"#,
        );
        let q = rpc_scalar_sql(&c, ScalarBody::Json);
        assert_eq!(
            q.text,
            "SELECT NULL::int8 AS total, 1::int8 AS page, to_json(pgrst_scalar.pgrst_scalar)::text AS body, NULL::text AS location FROM json_to_record($1::json) AS pgrst_args(\"a0\" integer, \"a1\" integer), LATERAL \"public\".\"add\"(\"a\" := pgrst_args.\"a0\", \"b\" := pgrst_args.\"a1\") AS pgrst_scalar"
        );
        assert_eq!(q.params, vec![r#"{"a0":1,"a1":2}"#]);
        let q = rpc_scalar_sql(&call(vec![], "{}"), ScalarBody::Void);
        assert_eq!(q.text, "SELECT NULL::int8 AS total, 1::int8 AS page, NULL::text AS body, NULL::text AS location FROM \"public\".\"add\"() AS pgrst_scalar");
        assert!(q.params.is_empty());
    }

    #[test]
    fn single_json_and_variadic_get_args() {
        let mut c = call(vec![], r#"{"x":1}"#);
        c.single_json = Some("jsonb".into());
        let q = rpc_scalar_sql(&c, ScalarBody::Text);
        assert_eq!(q.text, "SELECT NULL::int8 AS total, 1::int8 AS page, pgrst_scalar.pgrst_scalar::text AS body, NULL::text AS location FROM \"public\".\"add\"($1::jsonb) AS pgrst_scalar");
        // GET `?v=1&v=2` on a variadic parameter: an array, passed VARIADIC.
        let mut c = call(vec![("a0", "integer[]", "v")], r#"{"a0":["1","2"]}"#);
        c.variadic_last = true;
        let q = rpc_scalar_sql(&c, ScalarBody::Json);
        assert!(
            q.text.contains(
                "LATERAL \"public\".\"add\"(VARIADIC \"v\" := pgrst_args.\"a0\") AS pgrst_scalar"
            ),
            "{}",
            q.text
        );
    }

    #[test]
    fn set_returning() {
        let c = call(vec![("a0", "text", "q")], r#"{"a0":"x"}"#);
        let node = Node {
            source: Source::Call(c),
            alias: "search".into(),
            rel: None,
            items: vec![OutItem::Star],
            conds: vec![],
            order: vec![],
            limit: Some(10),
            offset: None,
            children: vec![],
        };
        let q = rpc_rows_sql(&node, true, &Media::Json, false, &BodyShape::Rows);
        assert_eq!(
            q.text,
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM json_to_record($1::json) AS pgrst_args(\"a0\" text), LATERAL \"public\".\"add\"(\"q\" := pgrst_args.\"a0\") AS \"search\") AS pgrst_c) AS total, pg_catalog.count(pgrst_t) AS page, coalesce(json_agg(pgrst_t), '[]')::text AS body, NULL::text AS location FROM (SELECT \"search\".* FROM json_to_record($2::json) AS pgrst_args(\"a0\" text), LATERAL \"public\".\"add\"(\"q\" := pgrst_args.\"a0\") AS \"search\" LIMIT 10) AS pgrst_t"
        );
        assert_eq!(q.params, vec![r#"{"a0":"x"}"#, r#"{"a0":"x"}"#]);
    }
}
