//! Expressions inside a statement: JSON paths, selected expressions with their casts, the
//! WHERE conditions (operators, quantifiers, `is`, full-text search, and/or/not) and
//! ORDER BY items.

use std::fmt::Write as _;

use super::{array_literal, push_ident, push_qualified, Sql};
use crate::rest::plan::{Cond, OrderItem};
use crate::rest::query::{IsVal, JsonKey, Op, Quant};

pub(super) fn write_path(q: &mut Sql, out: &mut String, path: &[crate::rest::query::JsonOp]) {
    for op in path {
        out.push_str(if op.text { "->>" } else { "->" });
        match &op.key {
            JsonKey::Key(k) => {
                q.bind(out, k.as_str());
                out.push_str("::text");
            }
            JsonKey::Idx(i) => {
                let _ = write!(out, "{i}");
            }
        }
    }
}

pub(super) fn write_expr(q: &mut Sql, out: &mut String, alias: &str, e: &crate::rest::plan::Expr) {
    match &e.computed {
        Some((fs, fname)) => {
            push_qualified(out, fs, fname);
            out.push('(');
            push_ident(out, alias);
            out.push(')');
        }
        None => {
            push_ident(out, alias);
            out.push('.');
            push_ident(out, &e.column);
        }
    }
    write_path(q, out, &e.path);
}

/// `expr` or `CAST(expr AS ty)`.
pub(super) fn write_cast_expr(
    q: &mut Sql,
    out: &mut String,
    alias: &str,
    e: &crate::rest::plan::Expr,
    ty: &Option<String>,
) {
    if ty.is_some() {
        out.push_str("CAST(");
    }
    write_expr(q, out, alias, e);
    close_cast(out, ty);
}

pub(super) fn close_cast(out: &mut String, ty: &Option<String>) {
    if let Some(t) = ty {
        out.push_str(" AS ");
        out.push_str(t);
        out.push(')');
    }
}

pub(super) fn simple_op(op: &str) -> &'static str {
    match op {
        "eq" => "=",
        "neq" => "<>",
        "gt" => ">",
        "gte" => ">=",
        "lt" => "<",
        "lte" => "<=",
        "like" => "LIKE",
        "ilike" => "ILIKE",
        "match" => "~",
        "imatch" => "~*",
        "isdistinct" => "IS DISTINCT FROM",
        "cs" => "@>",
        "cd" => "<@",
        "ov" => "&&",
        "sl" => "<<",
        "sr" => ">>",
        "nxl" => "&>",
        "nxr" => "&<",
        "adj" => "-|-",
        _ => "=",
    }
}

pub(super) fn write_cond(q: &mut Sql, out: &mut String, alias: &str, c: &Cond) {
    match c {
        Cond::Filter { expr, negate, op } => {
            if *negate {
                out.push_str("NOT (");
            }
            write_expr(q, out, alias, expr);
            match op {
                Op::Simple { op, quant, value } => {
                    let v = if op == "like" || op == "ilike" {
                        value.replace('*', "%")
                    } else {
                        value.clone()
                    };
                    out.push(' ');
                    out.push_str(simple_op(op));
                    out.push(' ');
                    match quant {
                        None => q.bind(out, v),
                        Some(quant) => {
                            out.push_str(match quant {
                                Quant::Any => "ANY(",
                                Quant::All => "ALL(",
                            });
                            q.bind(out, v);
                            out.push(')');
                        }
                    }
                }
                Op::In(vals) => {
                    out.push_str(" = ANY(");
                    q.bind(out, array_literal(vals));
                    out.push(')');
                }
                Op::Is(v) => out.push_str(match v {
                    IsVal::Null => " IS NULL",
                    IsVal::NotNull => " IS NOT NULL",
                    IsVal::True => " IS TRUE",
                    IsVal::False => " IS FALSE",
                    IsVal::Unknown => " IS UNKNOWN",
                }),
                Op::Fts { op, config, value } => {
                    out.push_str(" @@ ");
                    out.push_str(match op.as_str() {
                        "plfts" => "plainto_tsquery",
                        "phfts" => "phraseto_tsquery",
                        "wfts" => "websearch_to_tsquery",
                        _ => "to_tsquery",
                    });
                    out.push('(');
                    if let Some(cfg) = config {
                        q.bind(out, cfg.as_str());
                        out.push_str("::regconfig, ");
                    }
                    q.bind(out, value.as_str());
                    out.push_str("::text)");
                }
            }
            if *negate {
                out.push(')');
            }
        }
        Cond::Tree {
            or,
            negate,
            children,
        } => {
            if *negate {
                out.push_str("NOT ");
            }
            if children.is_empty() {
                out.push_str(if *or { "FALSE" } else { "TRUE" });
                return;
            }
            out.push('(');
            for (i, c) in children.iter().enumerate() {
                if i > 0 {
                    out.push_str(if *or { " OR " } else { " AND " });
                }
                write_cond(q, out, alias, c);
            }
            out.push(')');
        }
        Cond::EmbedNull {
            lat,
            label,
            is_null,
        } => {
            push_ident(out, lat);
            out.push('.');
            push_ident(out, label);
            out.push_str(if *is_null { " IS NULL" } else { " IS NOT NULL" });
        }
    }
}

pub(super) fn write_order(q: &mut Sql, out: &mut String, alias: &str, o: &OrderItem) {
    match &o.embed {
        Some((lat, label)) => {
            out.push('(');
            push_ident(out, lat);
            out.push('.');
            push_ident(out, label);
            out.push_str(")::jsonb->");
            q.bind(out, o.expr.column.as_str());
            out.push_str("::text");
            write_path(q, out, &o.expr.path);
        }
        None => write_expr(q, out, alias, &o.expr),
    }
    out.push_str(if o.desc { " DESC" } else { " ASC" });
    match o.nulls_first {
        Some(true) => out.push_str(" NULLS FIRST"),
        Some(false) => out.push_str(" NULLS LAST"),
        None => {}
    }
}
