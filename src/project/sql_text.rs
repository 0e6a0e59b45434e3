//! Reading SQL text without a parser: split a file into statements (quotes, dollar quotes
//! and comments respected), map an error's character position to a line, and find the
//! `create extension` statements.

/// One statement of a file: its text (trimmed) and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub text: String,
    pub line: usize,
}

/// Split at top-level semicolons. Comments stay with the statement that follows them, as
/// the Supabase CLI records them; empty statements are dropped.
pub fn split(sql: &str) -> Vec<Statement> {
    let b = sql.as_bytes();
    let mut out = vec![];
    let (mut i, mut start) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            q @ (b'\'' | b'"') => {
                let escapes = q == b'\'' && i > 0 && matches!(b[i - 1], b'e' | b'E');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            b'$' => {
                if let Some(tag) = dollar_tag(&sql[i..]) {
                    let body = i + tag.len();
                    i = match sql[body..].find(tag) {
                        Some(end) => body + end + tag.len() - 1,
                        None => b.len(),
                    };
                }
            }
            b';' => {
                push(sql, start, i, &mut out);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    push(sql, start, b.len(), &mut out);
    out
}

fn dollar_tag(s: &str) -> Option<&str> {
    let rest = &s[1..];
    let end = rest.find('$')?;
    let name = &rest[..end];
    let ok = name.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    ok.then(|| &s[..end + 2])
}

fn push(sql: &str, start: usize, end: usize, out: &mut Vec<Statement>) {
    let piece = &sql[start..end.min(sql.len())];
    // As the CLI's SplitAndTrim: only empty pieces are dropped (comments are kept).
    if piece.trim().is_empty() {
        return;
    }
    out.push(Statement {
        text: piece.trim().to_string(),
        line: line_of_byte(sql, start + code_offset(piece)),
    });
}

/// Where the code of a piece starts, past whitespace and comments.
fn code_offset(piece: &str) -> usize {
    let mut i = 0;
    loop {
        let rest = &piece[i..];
        let trimmed = rest.trim_start();
        i += rest.len() - trimmed.len();
        if trimmed.starts_with("--") {
            i += trimmed.find('\n').unwrap_or(trimmed.len());
        } else if trimmed.starts_with("/*") {
            i += trimmed.find("*/").map(|n| n + 2).unwrap_or(trimmed.len());
        } else {
            return i;
        }
    }
}

/// The failing statement as the CLI shows it: its number (0-based, as `At statement:`),
/// its text up to the failing line, and a caret under the error's column when known.
pub fn show_failure(sql: &str, line: usize, position: Option<u32>) -> String {
    let stats = split(sql);
    let Some((i, st)) = stats.iter().enumerate().rev().find(|(_, s)| s.line <= line) else {
        return String::new();
    };
    let first = line_of_byte(sql, sql.find(st.text.as_str()).unwrap_or(0));
    let keep = line.saturating_sub(first) + 1;
    let mut text: Vec<String> = st.text.lines().take(keep).map(str::to_string).collect();
    if let Some(p) = position {
        let before: String = sql.chars().take((p as usize).saturating_sub(1)).collect();
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0);
        text.push(format!("{}^", " ".repeat(col)));
    }
    format!("At statement: {i}\n{}", text.join("\n"))
}

/// The 1-based line of a byte offset.
pub fn line_of_byte(sql: &str, byte: usize) -> usize {
    sql.as_bytes()[..byte.min(sql.len())]
        .iter()
        .filter(|c| **c == b'\n')
        .count()
        + 1
}

/// The 1-based line of PostgreSQL's error position (1-based, in characters).
pub fn line_of_position(sql: &str, position: u32) -> usize {
    let chars = (position as usize).saturating_sub(1);
    let byte = sql
        .char_indices()
        .nth(chars)
        .map(|(b, _)| b)
        .unwrap_or(sql.len());
    line_of_byte(sql, byte)
}

/// The text with `--` and `/* */` comments removed (quotes are not considered: used only
/// on single statements' heads).
pub fn strip_comments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.find('\n').map(|n| &r[n..]).unwrap_or("");
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map(|n| &r[n + 2..]).unwrap_or("");
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The extension a `create extension` statement creates, with its line.
pub fn created_extensions(sql: &str) -> Vec<(String, usize)> {
    let mut out = vec![];
    for st in split(sql) {
        let head = strip_comments(&st.text);
        let words: Vec<&str> = head.split_whitespace().collect();
        let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
        if lower.len() < 3 || lower[0] != "create" || lower[1] != "extension" {
            continue;
        }
        let mut k = 2;
        if lower.get(2..5) == Some(&["if".into(), "not".into(), "exists".into()][..]) {
            k = 5;
        }
        if let Some(name) = words.get(k) {
            let name = name.trim_end_matches(';');
            let name = match name.strip_prefix('"') {
                Some(q) => q.trim_end_matches('"').to_string(),
                None => name.to_ascii_lowercase(),
            };
            out.push((name, st.line));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_around_quotes_comments_and_dollar_bodies() {
        let sql = "-- head\ncreate table a (x text default ';');\n\ncreate function f() returns int\nlanguage sql as $body$ select 1; $body$;\n/* c; */ insert into a values ('it''s;');\nselect \"we;ird\" from a";
        let st = split(sql);
        assert_eq!(st.len(), 4, "{st:#?}");
        let shown = show_failure(sql, 7, Some(sql.find("from a").unwrap() as u32 + 1));
        assert!(shown.starts_with("At statement: 3\nselect"), "{shown}");
        assert!(shown.ends_with(&format!("{}^", " ".repeat(16))), "{shown}");
        assert_eq!(st[0].line, 2);
        assert!(st[1].text.contains("$body$ select 1; $body$"));
        assert_eq!(st[1].line, 4);
        assert_eq!(st[2].line, 6);
        assert_eq!(st[3].line, 7);
    }

    #[test]
    fn positions_map_to_lines() {
        let sql = "select 1;\nselect ünï;\nselect x";
        assert_eq!(line_of_position(sql, 1), 1);
        assert_eq!(line_of_position(sql, 19), 2);
        assert_eq!(line_of_position(sql, 24), 3);
    }

    #[test]
    fn finds_created_extensions() {
        let sql = "create extension if not exists \"uuid-ossp\" with schema extensions;\n-- create extension nope;\nCREATE EXTENSION Vector;\ncreate table t();";
        assert_eq!(
            created_extensions(sql),
            vec![("uuid-ossp".to_string(), 1), ("vector".to_string(), 3)]
        );
    }
}
