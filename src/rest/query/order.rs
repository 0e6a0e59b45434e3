//! `order=`: terms with direction and nulls placement.

use super::{split_top, Cursor, OrderTerm};
use crate::rest::error::RestError;

pub fn parse_order(s: &str) -> Result<Vec<OrderTerm>, RestError> {
    parse_order_inner(s).map_err(|(d, pos)| {
        let col = s.get(..pos).map(|p| p.chars().count()).unwrap_or(0) + 1;
        RestError::parse_at("order", s, d, col)
    })
}

fn parse_order_inner(s: &str) -> Result<Vec<OrderTerm>, (String, usize)> {
    let mut out = vec![];
    let mut off = 0;
    for part in split_top(s, ',').map_err(|e| (e, s.len()))? {
        if part.is_empty() {
            return Err(("unexpected \",\" expecting field name".into(), off));
        }
        let mut c = Cursor::new(&part);
        let at = |c: &Cursor| off + c.pos;
        let mut field = c.field(&['.', ',', '(', ')']).map_err(|e| (e, at(&c)))?;
        let mut relation = None;
        if c.eat("(") {
            let f = c.field(&['.', ',', '(', ')']).map_err(|e| (e, at(&c)))?;
            if !c.eat(")") {
                return Err(("expecting \")\"".into(), at(&c)));
            }
            relation = Some(field.name);
            field = f;
        }
        let mut desc = false;
        let mut nulls_first = None;
        while c.eat(".") {
            let start = at(&c);
            let w = c.ident(&['.']).map_err(|e| (e, start))?;
            match w.as_str() {
                "asc" => desc = false,
                "desc" => desc = true,
                "nullsfirst" => nulls_first = Some(true),
                "nullslast" => nulls_first = Some(false),
                o => {
                    return Err((
                        format!("unexpected \"{}\" expecting \"asc\", \"desc\", \"nullsfirst\" or \"nullslast\"", o.chars().next().unwrap_or('.')),
                        start,
                    ))
                }
            }
        }
        if !c.eof() {
            return Err((
                format!("unexpected \"{}\"", c.rest().chars().next().unwrap_or(' ')),
                at(&c),
            ));
        }
        out.push(OrderTerm {
            field,
            relation,
            desc,
            nulls_first,
        });
        off += part.len() + 1;
    }
    Ok(out)
}
