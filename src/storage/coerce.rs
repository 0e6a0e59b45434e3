//! The type coercions Supabase Storage applies before validating a request. storage-api
//! validates bodies and query strings with Fastify's Ajv defaults (`coerceTypes: "array"`),
//! so a client may send `"expiresIn": "3600"` (storage3 for Python does), `"public": "true"`
//! or `1`. These helpers accept exactly what Ajv coerces to the schema's type and nothing
//! more: anything else stays the caller's mistake (400 in the storage error shape).

use serde_json::Value;

/// A JSON value as an `integer` the way Ajv coerces it: integral numbers; numeric strings
/// (JavaScript's `Number()`: surrounding whitespace allowed, decimal or exponent form, but
/// the result must be integral and finite); `true`/`false` as 1/0; `null` as 0; a
/// one-element array of any of those.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(integral)),
        Value::String(s) => int_str(s),
        Value::Bool(b) => Some(i64::from(*b)),
        Value::Null => Some(0),
        Value::Array(a) if a.len() == 1 && !a[0].is_array() => int(&a[0]),
        _ => None,
    }
}

/// A query-string value as an `integer` (Ajv coerces query strings with the same rule).
pub fn int_str(s: &str) -> Option<i64> {
    let t = s.trim();
    // JavaScript's Number() reads hex/octal/binary literals and "Infinity" too; none of them
    // is ever meant as a storage parameter, so only decimal forms are taken.
    if t.is_empty()
        || !t
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return None;
    }
    t.parse::<i64>()
        .ok()
        .or_else(|| t.parse::<f64>().ok().and_then(integral))
}

/// A JSON value as a `boolean` the way Ajv coerces it: `true`/`false`, the strings
/// `"true"`/`"false"`, the numbers 1/0, `null` as false, a one-element array of those.
pub fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_f64().and_then(|x| {
            if x == 1.0 {
                Some(true)
            } else if x == 0.0 {
                Some(false)
            } else {
                None
            }
        }),
        Value::Null => Some(false),
        Value::Array(a) if a.len() == 1 && !a[0].is_array() => boolean(&a[0]),
        _ => None,
    }
}

/// A JSON value as a `string`: strings; numbers and booleans in their JSON spelling; `null`
/// as the empty string (Ajv's coercions to a string type).
pub fn string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// An array of strings; a single value given once stands for a one-element array (Ajv's
/// `coerceTypes: "array"`).
pub fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(a) => a.iter().map(string).collect(),
        Value::Object(_) | Value::Null => None,
        scalar => string(scalar).map(|s| vec![s]),
    }
}

fn integral(f: f64) -> Option<i64> {
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

#[cfg(test)]
mod tests {
    use super::{boolean, int, int_str, string_list};
    use serde_json::json;

    #[test]
    fn integers_as_ajv_coerces_them() {
        for (v, want) in [
            (json!(3600), Some(3600)),
            (json!(3600.0), Some(3600)),
            (json!("3600"), Some(3600)),
            (json!(" 60 "), Some(60)),
            (json!("1e3"), Some(1000)),
            (json!("60.0"), Some(60)),
            (json!(true), Some(1)),
            (json!(null), Some(0)),
            (json!(["42"]), Some(42)),
            (json!(60.5), None),
            (json!("60.5"), None),
            (json!("abc"), None),
            (json!(""), None),
            (json!("0x10"), None),
            (json!("Infinity"), None),
            (json!({}), None),
            (json!([1, 2]), None),
        ] {
            assert_eq!(int(&v), want, "{v}");
        }
        assert_eq!(int_str("20"), Some(20));
        assert_eq!(int_str("-1"), Some(-1));
        assert_eq!(int_str("NaN"), None);
    }

    #[test]
    fn string_lists_as_ajv_coerces_them() {
        assert_eq!(
            string_list(&json!(["a", "b"])),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(string_list(&json!("a")), Some(vec!["a".into()]));
        assert_eq!(
            string_list(&json!([5, true])),
            Some(vec!["5".into(), "true".into()])
        );
        assert_eq!(string_list(&json!([{}])), None);
        assert_eq!(string_list(&json!({})), None);
        assert_eq!(string_list(&json!(null)), None);
    }

    #[test]
    fn booleans_as_ajv_coerces_them() {
        for (v, want) in [
            (json!(true), Some(true)),
            (json!("true"), Some(true)),
            (json!("false"), Some(false)),
            (json!(1), Some(true)),
            (json!(0), Some(false)),
            (json!(null), Some(false)),
            (json!(["true"]), Some(true)),
            (json!("yes"), None),
            (json!("TRUE"), None),
            (json!(2), None),
            (json!({}), None),
        ] {
            assert_eq!(boolean(&v), want, "{v}");
        }
    }
}
