//! The SQL editor: run SQL as the database superuser; results as a grid (every value as
//! its text form), errors with their position, EXPLAIN; the history is kept in the
//! browser's localStorage by app.js.

use std::time::Instant;

use http::StatusCode;
use maud::{html, Markup};
use serde_json::{json, Value};
use tokio_postgres::error::ErrorPosition;
use tokio_postgres::SimpleQueryMessage;

use super::layout;
use super::{db, DashReq, DashResult};
use crate::http::Resp;
use crate::state::AppState;

/// Rows sent back per result at most (the grid is for looking, not exporting).
const MAX_ROWS: usize = 1000;

pub fn page(r: &DashReq) -> DashResult<Markup> {
    let body = html! {
        div.card #sql-editor {
            textarea #sql name="sql" rows="8" spellcheck="false" placeholder="select * from auth.users limit 10;" { (r.q("q").unwrap_or("")) }
            div.toolbar {
                button.primary #sql-run type="button" { "Run" } " "
                button #sql-explain type="button" { "Explain" }
                span.muted { " Ctrl+Enter runs. Runs as the database superuser." }
            }
        }
        div #sql-result aria-live="polite" {}
        div.card {
            h2 { "History" }
            ul #sql-history.history {}
        }
    };
    Ok(layout::page(r, "SQL editor", "sql", body))
}

/// 1-based line and column of a 1-based character position in `sql`.
fn line_col(sql: &str, pos: usize) -> (usize, usize) {
    let mut line = 1;
    let mut col = 1;
    for c in sql.chars().take(pos.saturating_sub(1)) {
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

fn error_json(sql: &str, e: &tokio_postgres::Error) -> Value {
    match e.as_db_error() {
        Some(d) => {
            let pos = match d.position() {
                Some(ErrorPosition::Original(p)) => Some(*p as usize),
                _ => None,
            };
            let lc = pos.map(|p| line_col(sql, p));
            json!({
                "message": d.message(), "code": d.code().code(), "detail": d.detail(),
                "hint": d.hint(), "position": pos,
                "line": lc.map(|l| l.0), "column": lc.map(|l| l.1),
            })
        }
        None => json!({"message": db::err(e)}),
    }
}

pub async fn run(state: &AppState, r: &DashReq) -> Resp {
    let mut sql = r.fs("sql");
    let explain = r
        .json
        .get("explain")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if sql.is_empty() {
        return super::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": "no SQL given"}}),
        );
    }
    if explain {
        sql = format!(
            "explain {}",
            sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace())
        );
    }
    let c = match db::connect(state).await {
        Ok(c) => c,
        Err(e) => return super::json(StatusCode::BAD_GATEWAY, &json!({"error": {"message": e}})),
    };
    let start = Instant::now();
    let msgs = c.simple_query(&sql).await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match msgs {
        Err(e) => super::json(
            StatusCode::OK,
            &json!({"error": error_json(&sql, &e), "ms": ms}),
        ),
        Ok(msgs) => {
            let mut results = vec![];
            let mut columns: Vec<String> = vec![];
            let mut rows: Vec<Vec<Option<String>>> = vec![];
            let mut truncated = false;
            for m in msgs {
                match m {
                    SimpleQueryMessage::RowDescription(cols) => {
                        columns = cols.iter().map(|c| c.name().to_string()).collect();
                    }
                    SimpleQueryMessage::Row(row) => {
                        if columns.is_empty() {
                            columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                        }
                        if rows.len() < MAX_ROWS {
                            rows.push(
                                (0..row.len())
                                    .map(|i| row.get(i).map(str::to_string))
                                    .collect(),
                            );
                        } else {
                            truncated = true;
                        }
                    }
                    SimpleQueryMessage::CommandComplete(n) => {
                        results.push(json!({"columns": std::mem::take(&mut columns),
                            "rows": std::mem::take(&mut rows), "affected": n, "truncated": truncated}));
                        truncated = false;
                    }
                    _ => {}
                }
            }
            super::json(
                StatusCode::OK,
                &json!({"results": results, "ms": ms, "explain": explain}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn positions() {
        assert_eq!(line_col("select x", 8), (1, 8));
        assert_eq!(line_col("select 1;\nselec 2", 11), (2, 1));
    }
}
