//! Filters (`[not.]op[(mod)].value`) and the logic trees of `or=()`/`and=()`.

use super::select::MAX_DEPTH;
use super::{
    split_logic, unquote, Cursor, Field, Filter, IsVal, Logic, Op, Quant, FTS_OPS, QUANT_OPS,
    SIMPLE_OPS,
};
use crate::rest::error::RestError;

/// `[not.]op[(mod)].value` for the column `field`.
pub fn parse_filter(field: Field, value: &str) -> Result<Filter, RestError> {
    parse_op_value(value)
        .map(|(negate, op)| Filter { field, negate, op })
        .map_err(|d| {
            // An unknown operator fails where it starts; anything else at the end.
            let col = if d.contains("or operator (eq, gt, ...)") {
                if value.starts_with("not.") {
                    5
                } else {
                    1
                }
            } else {
                value.chars().count() + 1
            };
            RestError::parse_at("filter", value, d, col)
        })
}

fn parse_op_value(v: &str) -> Result<(bool, Op), String> {
    let (negate, v) = match v.strip_prefix("not.") {
        Some(r) => (true, r),
        None => (false, v),
    };
    let (opname, rest) = match v.find(['.', '(']) {
        Some(i) => (&v[..i], &v[i..]),
        None => {
            return Err(format!(
                "unexpected end of input expecting operator (eq, gt, ...) in \"{v}\""
            ))
        }
    };
    // Optional modifier in parentheses.
    let (modifier, rest) = if let Some(r) = rest.strip_prefix('(') {
        let end = r
            .find(')')
            .ok_or("unexpected end of input expecting \")\"")?;
        (Some(&r[..end]), &r[end + 1..])
    } else {
        (None, rest)
    };
    let value = rest.strip_prefix('.').ok_or_else(|| {
        format!(
            "unexpected \"{}\" expecting \".\"",
            rest.chars().next().unwrap_or(' ')
        )
    })?;
    let op = match opname {
        "in" if modifier.is_none() => Op::In(parse_list(value)?),
        "is" if modifier.is_none() => Op::Is(match value.to_ascii_lowercase().as_str() {
            "null" => IsVal::Null,
            "not_null" => IsVal::NotNull,
            "true" => IsVal::True,
            "false" => IsVal::False,
            "unknown" => IsVal::Unknown,
            _ => {
                return Err(format!(
                    "unexpected \"{value}\" expecting null or trilean value (unknown, true, false)"
                ))
            }
        }),
        o if FTS_OPS.contains(&o) => Op::Fts {
            op: o.into(),
            config: modifier.map(str::to_string),
            value: value.into(),
        },
        o if SIMPLE_OPS.contains(&o) => {
            let quant = match modifier {
                None => None,
                Some("any") if QUANT_OPS.contains(&o) => Some(Quant::Any),
                Some("all") if QUANT_OPS.contains(&o) => Some(Quant::All),
                Some(m) => return Err(format!("unexpected \"{m}\" expecting \"any\" or \"all\"")),
            };
            Op::Simple {
                op: o.into(),
                quant,
                value: value.into(),
            }
        }
        o => {
            return Err(format!(
                "unexpected \"{}\" expecting \"not\" or operator (eq, gt, ...)",
                o.chars().next().unwrap_or('.')
            ))
        }
    };
    Ok((negate, op))
}

/// `(a,"b,c",d)` -> values.
fn parse_list(v: &str) -> Result<Vec<String>, String> {
    let inner = v
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or("unexpected end of input expecting \"(\" ... \")\"")?;
    if inner.is_empty() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_q = false;
    let mut quoted = false;
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        if in_q {
            match c {
                '\\' => {
                    if let Some(n) = it.next() {
                        cur.push(n);
                    }
                }
                '"' => in_q = false,
                c => cur.push(c),
            }
            continue;
        }
        match c {
            '"' if cur.is_empty() => {
                in_q = true;
                quoted = true;
            }
            ',' => {
                out.push(std::mem::take(&mut cur));
                quoted = false;
            }
            c => cur.push(c),
        }
    }
    if in_q {
        return Err("unexpected end of input expecting '\"'".into());
    }
    let _ = quoted;
    out.push(cur);
    Ok(out)
}

/// `(a.eq.1,and(b.gt.2,not.c.is.null))` for `or=` / `and=` (negate for `not.or`).
pub fn parse_logic(or: bool, negate: bool, value: &str) -> Result<Logic, RestError> {
    parse_logic_inner(or, negate, value, 0).map_err(|d| {
        RestError::parse(
            "logic tree",
            &format!(
                "{}{}{value}",
                if negate { "not." } else { "" },
                if or { "or=" } else { "and=" }
            ),
            d,
        )
    })
}

fn parse_logic_inner(or: bool, negate: bool, value: &str, depth: usize) -> Result<Logic, String> {
    if depth > MAX_DEPTH {
        return Err("logic tree nested too deeply".into());
    }
    let inner = value
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or("unexpected end of input expecting \"(\"")?;
    let mut children = vec![];
    for part in split_logic(inner)? {
        if part.is_empty() {
            return Err("unexpected \",\" expecting logic operator or field name".into());
        }
        let (neg, body) = match part.strip_prefix("not.") {
            Some(r) if r.starts_with("and(") || r.starts_with("or(") => (true, r),
            _ => (false, part.as_str()),
        };
        if let Some(r) = body.strip_prefix("and") {
            if r.starts_with('(') {
                children.push(parse_logic_inner(false, neg, r, depth + 1)?);
                continue;
            }
        }
        if let Some(r) = body.strip_prefix("or") {
            if r.starts_with('(') {
                children.push(parse_logic_inner(true, neg, r, depth + 1)?);
                continue;
            }
        }
        let mut c = Cursor::new(body);
        let field = c.field(&['.', ',', '(', ')'])?;
        if !c.eat(".") {
            return Err(format!(
                "unexpected end of input in \"{body}\" expecting \".\""
            ));
        }
        let (neg, mut op) = parse_op_value(c.rest())?;
        // Values inside a logic tree may be double-quoted.
        if let Op::Simple { value, .. } | Op::Fts { value, .. } = &mut op {
            *value = unquote(value);
        }
        children.push(Logic::Filter(Filter {
            field,
            negate: neg,
            op,
        }));
    }
    Ok(Logic::Tree {
        or,
        negate,
        children,
    })
}
