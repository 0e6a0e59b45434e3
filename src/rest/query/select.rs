//! `select=`: columns, aliases, casts, JSON paths, aggregates and embeds.

use super::{split_top, Agg, Cursor, Embed, JoinType, SelectItem};
use crate::rest::error::RestError;

const SELECT_STOPS: &[char] = &[',', ':', '(', ')', '!', '.'];

pub fn parse_select(s: &str) -> Result<Vec<SelectItem>, RestError> {
    // Whitespace outside quotes carries no meaning (the client strips it as well).
    let cleaned = strip_ws(s);
    parse_select_items(&cleaned, 0).map_err(|(d, pos)| {
        let col = cleaned.get(..pos).map(|p| p.chars().count()).unwrap_or(0) + 1;
        RestError::parse_at("select parameter", s, d, col)
    })
}

fn strip_ws(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_q = false;
    let mut prev_bs = false;
    for c in s.chars() {
        if in_q {
            out.push(c);
            if c == '"' && !prev_bs {
                in_q = false;
            }
            prev_bs = c == '\\' && !prev_bs;
            continue;
        }
        if c == '"' {
            in_q = true;
            prev_bs = false;
        }
        if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

pub(super) const MAX_DEPTH: usize = 16;

fn parse_select_items(s: &str, depth: usize) -> Result<Vec<SelectItem>, (String, usize)> {
    if depth > MAX_DEPTH {
        return Err(("embedding is nested too deeply".into(), 0));
    }
    if s.is_empty() {
        return Ok(vec![]);
    }
    let parts = split_top(s, ',').map_err(|e| (e, s.len()))?;
    let mut out = vec![];
    let mut off = 0;
    for p in parts {
        if p.is_empty() {
            return Err((
                "unexpected \",\" expecting field name (* or [a..z0..9_$])".into(),
                off,
            ));
        }
        out.push(parse_select_item(&p, depth).map_err(|(e, at)| (e, off + at))?);
        off += p.len() + 1;
    }
    Ok(out)
}

fn parse_select_item(p: &str, depth: usize) -> Result<SelectItem, (String, usize)> {
    if p == "*" {
        return Ok(SelectItem::Star);
    }
    let mut c = Cursor::new(p);
    let spread = c.eat("...");
    // Optional alias.
    let save = c.pos;
    let mut alias = None;
    if let Ok(id) = c.ident(SELECT_STOPS) {
        if c.rest().starts_with(':') && !c.rest().starts_with("::") {
            c.pos += 1;
            alias = Some(id);
        } else {
            c.pos = save;
        }
    } else {
        c.pos = save;
    }
    if !spread && c.eat("count()") {
        let cast = c.cast().map_err(|e| (e, c.pos))?;
        if !c.eof() {
            return Err((format!("unexpected \"{}\"", c.rest()), c.pos));
        }
        return Ok(SelectItem::CountAll { alias, cast });
    }
    let field = c.field(SELECT_STOPS).map_err(|e| (e, c.pos))?;
    // Embedding: name[!hint][!inner](...)
    if c.peek() == Some('!') || c.peek() == Some('(') {
        if !field.path.is_empty() {
            return Err(("unexpected \"(\"".into(), c.pos));
        }
        let mut hint = None;
        let mut join = None;
        while c.eat("!") {
            let h = c.ident(SELECT_STOPS).map_err(|e| (e, c.pos))?;
            match h.as_str() {
                "inner" => join = Some(JoinType::Inner),
                "left" => join = Some(JoinType::Left),
                _ => {
                    if hint.is_some() {
                        return Err((format!("unexpected \"{h}\""), c.pos));
                    }
                    hint = Some(h)
                }
            }
        }
        if !c.eat("(") {
            return Err(("unexpected end of input expecting \"(\"".into(), c.pos));
        }
        let inner = c.rest();
        if !inner.ends_with(')') {
            return Err(("unexpected end of input expecting \")\"".into(), c.pos));
        }
        let start = c.pos;
        let items = parse_select_items(&inner[..inner.len() - 1], depth + 1)
            .map_err(|(e, at)| (e, start + at))?;
        return Ok(SelectItem::Embed(Embed {
            name: field.name,
            alias,
            hint,
            join,
            spread,
            items,
        }));
    }
    if spread {
        return Err(("expecting \"(\" after a spread relation".into(), c.pos));
    }
    let cast = c.cast().map_err(|e| (e, c.pos))?;
    let mut agg = None;
    let mut agg_cast = None;
    if c.eat(".") {
        let name = c.ident(SELECT_STOPS).map_err(|e| (e, c.pos))?;
        let a = Agg::parse(&name).ok_or_else(|| {
            (
                format!("unexpected \"{name}\" expecting aggregate function"),
                c.pos,
            )
        })?;
        if !c.eat("()") {
            return Err(("expecting \"()\" after an aggregate".into(), c.pos));
        }
        agg = Some(a);
        agg_cast = c.cast().map_err(|e| (e, c.pos))?;
    }
    if !c.eof() {
        return Err((
            format!(
                "unexpected \"{}\" expecting delimiter (.), \",\", \"->\" or end of input",
                c.rest().chars().next().unwrap_or(' ')
            ),
            c.pos,
        ));
    }
    Ok(SelectItem::Field {
        field,
        alias,
        cast,
        agg,
        agg_cast,
    })
}
