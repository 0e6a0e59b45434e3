//! Column values as JSON the way `to_jsonb` gives them, records and commit timestamps.

use serde_json::{Map, Value};

use super::pgoutput::{Cell, Relation};

/// A column's text value as JSON the way `to_jsonb` would give it.
fn typed(type_name: &str, text: &str) -> Value {
    match type_name {
        "bool" => Value::Bool(text == "t" || text == "true"),
        "int2" | "int4" | "int8" | "oid" | "float4" | "float8" | "numeric" => {
            serde_json::from_str::<serde_json::Number>(text)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(text.to_string()))
        }
        "json" | "jsonb" => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
        }
        "timestamptz" => {
            let mut s = text.replacen(' ', "T", 1);
            // A bare hour offset ("+00") becomes "+00:00".
            let b = s.as_bytes();
            if b.len() >= 3
                && matches!(b[b.len() - 3], b'+' | b'-')
                && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
            {
                s.push_str(":00");
            }
            Value::String(s)
        }
        "timestamp" => Value::String(text.replacen(' ', "T", 1)),
        t if t.starts_with('_') => {
            parse_array(text, &t[1..]).unwrap_or_else(|| Value::String(text.to_string()))
        }
        _ => Value::String(text.to_string()),
    }
}

/// A PostgreSQL array literal (`{1,2}`, `{"a b",NULL}`, nested) as a JSON array whose
/// elements are typed like `to_jsonb` types them.
fn parse_array(text: &str, elem: &str) -> Option<Value> {
    fn parse(chars: &[char], at: &mut usize, elem: &str) -> Option<Value> {
        if chars.get(*at) != Some(&'{') {
            return None;
        }
        *at += 1;
        let mut out = vec![];
        if chars.get(*at) == Some(&'}') {
            *at += 1;
            return Some(Value::Array(out));
        }
        loop {
            match chars.get(*at)? {
                '{' => out.push(parse(chars, at, elem)?),
                '"' => {
                    *at += 1;
                    let mut s = String::new();
                    loop {
                        match chars.get(*at)? {
                            '\\' => {
                                *at += 1;
                                s.push(*chars.get(*at)?);
                            }
                            '"' => break,
                            c => s.push(*c),
                        }
                        *at += 1;
                    }
                    *at += 1;
                    out.push(typed(elem, &s));
                }
                _ => {
                    let start = *at;
                    while !matches!(chars.get(*at)?, ',' | '}') {
                        *at += 1;
                    }
                    let raw: String = chars[start..*at].iter().collect();
                    let raw = raw.trim();
                    out.push(if raw.eq_ignore_ascii_case("null") {
                        Value::Null
                    } else {
                        typed(elem, raw)
                    });
                }
            }
            match chars.get(*at)? {
                ',' => *at += 1,
                '}' => {
                    *at += 1;
                    return Some(Value::Array(out));
                }
                _ => return None,
            }
        }
    }
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let v = parse(&chars, &mut at, elem)?;
    (at == chars.len()).then_some(v)
}

pub(super) fn record(
    rel: &Relation,
    cells: &[Cell],
    fallback: Option<&Map<String, Value>>,
    only_keys: bool,
) -> Map<String, Value> {
    let mut m = Map::new();
    for (c, cell) in rel.columns.iter().zip(cells) {
        if only_keys && !c.key {
            continue;
        }
        match cell {
            Cell::Null => {
                m.insert(c.name.clone(), Value::Null);
            }
            Cell::Text(t) => {
                m.insert(c.name.clone(), typed(&c.type_name, t));
            }
            Cell::Unchanged => {
                if let Some(v) = fallback.and_then(|f| f.get(&c.name)) {
                    m.insert(c.name.clone(), v.clone());
                }
            }
        }
    }
    m
}

pub(super) fn commit_timestamp(ts_us: i64) -> String {
    // pgoutput timestamps count microseconds from 2000-01-01 UTC.
    let epoch_2000 = 946_684_800i64;
    let secs = epoch_2000 + ts_us.div_euclid(1_000_000);
    let nanos = (ts_us.rem_euclid(1_000_000) * 1000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_values_and_timestamps() {
        assert_eq!(typed("int8", "42"), json!(42));
        assert_eq!(typed("bool", "t"), json!(true));
        assert_eq!(typed("jsonb", r#"{"a":1}"#), json!({"a":1}));
        assert_eq!(
            typed("timestamptz", "2024-01-02 03:04:05.123+00"),
            json!("2024-01-02T03:04:05.123+00:00")
        );
        assert_eq!(typed("numeric", "NaN"), json!("NaN"));
        assert_eq!(commit_timestamp(0), "2000-01-01T00:00:00.000Z");
        assert_eq!(typed("_int4", "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(
            typed("_text", r#"{a,"b c","d\"e",NULL,"NULL"}"#),
            json!(["a", "b c", "d\"e", null, "NULL"])
        );
        assert_eq!(typed("_int4", "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(typed("_text", "{}"), json!([]));
        assert_eq!(typed("_int4", "[0:1]={1,2}"), json!("[0:1]={1,2}"));
        assert_eq!(typed("_bool", "{t,f}"), json!([true, false]));
    }
}
