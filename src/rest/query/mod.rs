//! The query-string grammar of PostgREST, parsed without touching the database:
//! `select`, filters (with `not.`, quantifiers and `or=()`/`and=()` trees), `order`,
//! `limit`/`offset`, `columns`, `on_conflict`, each possibly prefixed by an embed path.
//! Every function here is total: bad input is a `RestError` (PGRST100), never a panic.

use super::error::RestError;

mod filter;
mod order;
mod select;

pub use filter::{parse_filter, parse_logic};
pub use order::parse_order;
pub use select::parse_select;

#[derive(Debug, Clone, PartialEq)]
pub enum JsonKey {
    Key(String),
    Idx(i64),
}

/// `->` (json) or `->>` (text) followed by a key.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonOp {
    pub text: bool,
    pub key: JsonKey,
}

/// A column, possibly followed by a JSON path.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub path: Vec<JsonOp>,
}

impl Field {
    pub fn plain(name: &str) -> Field {
        Field {
            name: name.into(),
            path: vec![],
        }
    }
    /// The name PostgREST gives the output column: the last JSON key, else the column.
    pub fn default_alias(&self) -> String {
        match self.path.last() {
            Some(JsonOp {
                key: JsonKey::Key(k),
                ..
            }) => k.clone(),
            Some(JsonOp {
                key: JsonKey::Idx(_),
                ..
            }) => self.name.clone(),
            None => self.name.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

impl Agg {
    fn parse(s: &str) -> Option<Agg> {
        Some(match s {
            "count" => Agg::Count,
            "sum" => Agg::Sum,
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            _ => return None,
        })
    }
    pub fn sql(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Avg => "avg",
            Agg::Min => "min",
            Agg::Max => "max",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinType {
    Inner,
    Left,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SelectItem {
    Star,
    Field {
        field: Field,
        alias: Option<String>,
        cast: Option<String>,
        agg: Option<Agg>,
        agg_cast: Option<String>,
    },
    /// `count()` without a column.
    CountAll {
        alias: Option<String>,
        cast: Option<String>,
    },
    Embed(Embed),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    pub name: String,
    pub alias: Option<String>,
    pub hint: Option<String>,
    pub join: Option<JoinType>,
    pub spread: bool,
    pub items: Vec<SelectItem>,
}

impl Embed {
    /// The name the embed is known by in filters and in the response.
    pub fn label(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Any,
    All,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// eq neq gt gte lt lte like ilike match imatch isdistinct cs cd ov sl sr nxl nxr adj
    Simple {
        op: String,
        quant: Option<Quant>,
        value: String,
    },
    In(Vec<String>),
    Is(IsVal),
    Fts {
        op: String,
        config: Option<String>,
        value: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsVal {
    Null,
    NotNull,
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub field: Field,
    pub negate: bool,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Logic {
    Filter(Filter),
    Tree {
        or: bool,
        negate: bool,
        children: Vec<Logic>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderTerm {
    pub field: Field,
    /// `rel(col)`: order by a to-one embedded column.
    pub relation: Option<String>,
    pub desc: bool,
    pub nulls_first: Option<bool>,
}

pub const SIMPLE_OPS: &[&str] = &[
    "eq",
    "neq",
    "gt",
    "gte",
    "lt",
    "lte",
    "like",
    "ilike",
    "match",
    "imatch",
    "isdistinct",
    "cs",
    "cd",
    "ov",
    "sl",
    "sr",
    "nxl",
    "nxr",
    "adj",
];
const QUANT_OPS: &[&str] = &[
    "eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "match", "imatch",
];
const FTS_OPS: &[&str] = &["fts", "plfts", "phfts", "wfts"];

// ---------------------------------------------------------------------------------------
// Low-level helpers

/// Split on `sep` at depth 0, outside double quotes (backslash escapes inside quotes).
pub fn split_top(s: &str, sep: char) -> Result<Vec<String>, String> {
    split_top_with(s, sep, false)
}

/// [`split_top`] for the members of a logic tree, where a value may also be a PostgreSQL
/// array literal `{a,b}` whose commas do not separate (as PostgREST's `pPgArray`).
pub fn split_logic(s: &str) -> Result<Vec<String>, String> {
    split_top_with(s, ',', true)
}

fn split_top_with(s: &str, sep: char, braces: bool) -> Result<Vec<String>, String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut depth = 0i32;
    let mut in_q = false;
    let mut in_brace = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if in_brace {
            cur.push(c);
            in_brace = c != '}';
            continue;
        }
        if in_q {
            cur.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else if c == '"' {
                in_q = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_q = true;
                cur.push(c);
            }
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unexpected \")\"".into());
                }
                cur.push(c);
            }
            '{' if braces => {
                in_brace = true;
                cur.push(c);
            }
            c if c == sep && depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if in_q {
        return Err("unexpected end of input, expecting '\"'".into());
    }
    if depth != 0 {
        return Err("unexpected end of input, expecting \")\"".into());
    }
    out.push(cur);
    Ok(out)
}

/// Remove surrounding double quotes and unescape `\x`.
fn unquote(s: &str) -> String {
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        let inner = &s[1..s.len() - 1];
        let mut out = String::new();
        let mut it = inner.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                if let Some(n) = it.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        s.to_string()
    }
}

/// A NUL byte can be neither in a PostgreSQL identifier nor in the statement text that
/// would carry it: a name with one is refused while parsing (PostgreSQL would drop the
/// connection over it).
const NUL_IN_NAME: &str = "unexpected \"\\NUL\" in a name: names cannot contain NUL";

fn reject_nul(what: &str, input: &str) -> Result<(), RestError> {
    match input.find('\0') {
        Some(i) => Err(RestError::parse_at(
            what,
            input,
            NUL_IN_NAME,
            input[..i].chars().count() + 1,
        )),
        None => Ok(()),
    }
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn eof(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn eat(&mut self, t: &str) -> bool {
        if self.rest().starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }
    /// An identifier: `"quoted"` or a run of characters up to a delimiter.
    fn ident(&mut self, stops: &[char]) -> Result<String, String> {
        if self.peek() == Some('"') {
            let rest = self.rest();
            let mut end = None;
            let mut it = rest.char_indices().skip(1);
            while let Some((i, c)) = it.next() {
                if c == '\\' {
                    it.next();
                } else if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or("unexpected end of input, expecting '\"'")?;
            let q = &rest[..=end];
            if let Some(i) = q.find('\0') {
                self.pos += i;
                return Err(NUL_IN_NAME.into());
            }
            self.pos += end + 1;
            return Ok(unquote(q));
        }
        let rest = self.rest();
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if stops.contains(&c) || c == '"' {
                end = i;
                break;
            }
            if rest[i..].starts_with("->") || rest[i..].starts_with("::") {
                end = i;
                break;
            }
        }
        if end == 0 {
            return Err(match rest.chars().next() {
                Some(c) => format!("unexpected \"{c}\" expecting field name (* or [a..z0..9_$])"),
                None => "unexpected end of input expecting field name (* or [a..z0..9_$])".into(),
            });
        }
        let id = rest[..end].trim().to_string();
        if let Some(i) = rest[..end].find('\0') {
            self.pos += i;
            return Err(NUL_IN_NAME.into());
        }
        self.pos += end;
        if id.is_empty() {
            return Err("expecting field name".into());
        }
        Ok(id)
    }
    /// A field: identifier plus `->`/`->>` path.
    fn field(&mut self, stops: &[char]) -> Result<Field, String> {
        let name = self.ident(stops)?;
        let mut path = vec![];
        loop {
            let text = if self.eat("->>") {
                true
            } else if self.eat("->") {
                false
            } else {
                break;
            };
            let k = self.ident(stops)?;
            let key = match k.parse::<i64>() {
                Ok(n)
                    if !k.starts_with('"') && k.chars().all(|c| c.is_ascii_digit() || c == '-') =>
                {
                    JsonKey::Idx(n)
                }
                _ => JsonKey::Key(k),
            };
            path.push(JsonOp { text, key });
        }
        Ok(Field { name, path })
    }
    /// `::type` (letters, digits, `_`, spaces and `[]` only: it is written into SQL).
    fn cast(&mut self) -> Result<Option<String>, String> {
        if !self.eat("::") {
            return Ok(None);
        }
        let rest = self.rest();
        let end = rest
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || c == '_' || c == ' ' || c == '[' || c == ']')
            })
            .unwrap_or(rest.len());
        let t = rest[..end].trim().to_string();
        if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Err("expecting a type name after \"::\"".into());
        }
        self.pos += end;
        Ok(Some(t))
    }
}

// ---------------------------------------------------------------------------------------
// columns=, on_conflict=

pub fn parse_columns(s: &str, what: &str) -> Result<Vec<String>, RestError> {
    reject_nul(what, s)?;
    let mut out = vec![];
    for p in split_top(s, ',').map_err(|d| RestError::parse(what, s, d))? {
        let p = p.trim();
        if p.is_empty() {
            return Err(RestError::parse(what, s, "empty column name"));
        }
        out.push(unquote(p));
    }
    Ok(out)
}

/// A query key split into its embed path and last segment: `books.authors.or` ->
/// (["books","authors"], "or"); `not.or` is kept as the last segment.
pub fn split_key(key: &str) -> Result<(Vec<String>, String), RestError> {
    reject_nul("filter", key)?;
    let err = |d: String| RestError::parse("filter", key, d);
    // JSON paths may not be split on '.', but keys with '->' only ever have it in the last
    // segment; split before the first arrow.
    let (head, tail) = match key.find("->") {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    let mut segs: Vec<String> = split_top(head, '.').map_err(err)?;
    let last = segs.pop().unwrap_or_default() + tail;
    if segs.last().map(String::as_str) == Some("not") && (last == "or" || last == "and") {
        segs.pop();
        return Ok((
            segs.into_iter().map(|s| unquote(&s)).collect(),
            format!("not.{last}"),
        ));
    }
    Ok((segs.into_iter().map(|s| unquote(&s)).collect(), last))
}

pub fn parse_field(s: &str) -> Result<Field, RestError> {
    let mut c = Cursor::new(s);
    let f = c.field(&[]).map_err(|d| RestError::parse("filter", s, d))?;
    if !c.eof() {
        return Err(RestError::parse(
            "filter",
            s,
            format!("unexpected \"{}\"", c.rest()),
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests;
