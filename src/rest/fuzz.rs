//! The fuzz target for the query-string parser, and the planner and SQL writer behind it.
//!
//! [`query_string`] takes arbitrary bytes as a request's query string and runs them through
//! everything a read does before the database (parse, plan against a hand-built schema
//! cache, write the SQL), plus the `Prefer` and `Accept` parsers. It must never panic, and
//! the SQL it writes must never carry the input outside a quoted identifier: values travel
//! as parameters. `cargo test` runs it over generated inputs (`fuzz_*` tests here); with a
//! nightly toolchain, `fuzz/` drives it with cargo-fuzz (libFuzzer).

use super::error::RestError;
use super::plan::{Planner, Source};
use super::prefer::{self, Media, Prefer};
use super::schema::{Cardinality, Column, Relation, Relationship, SchemaCache};
use super::sql::{self, BodyShape, Sql};
use super::{check_embed_paths, lift_embed_nulls, parse_params};

/// `authors(id, name)` and `books(id, author_id -> authors, title)` in `public`.
pub fn demo_cache() -> SchemaCache {
    let col = |name: &str, ty: &str| Column {
        name: name.into(),
        ty: ty.into(),
        nullable: true,
        default: None,
        description: None,
        enum_values: vec![],
        generated: false,
        position: 0,
    };
    let mut sc = SchemaCache::default();
    for (name, cols) in [
        ("authors", vec![col("id", "bigint"), col("name", "text")]),
        (
            "books",
            vec![
                col("id", "bigint"),
                col("author_id", "bigint"),
                col("title", "text"),
            ],
        ),
    ] {
        sc.relations.insert(
            ("public".into(), name.into()),
            Relation {
                oid: 0,
                schema: "public".into(),
                name: name.into(),
                kind: 'r',
                columns: cols,
                pk: vec!["id".into()],
                description: None,
                insertable: true,
                updatable: true,
                deletable: true,
            },
        );
    }
    let rel = |s: &str, t: &str, cols: (&str, &str), card, forward| Relationship {
        source: ("public".into(), s.into()),
        target: ("public".into(), t.into()),
        constraint: "books_author_id_fkey".into(),
        cols: vec![(cols.0.into(), cols.1.into())],
        card,
        function: None,
        to_one_computed: false,
        base: true,
        forward,
    };
    sc.relationships.push(rel(
        "books",
        "authors",
        ("author_id", "id"),
        Cardinality::ManyToOne,
        true,
    ));
    sc.relationships.push(rel(
        "authors",
        "books",
        ("id", "author_id"),
        Cardinality::OneToMany,
        false,
    ));
    sc
}

/// A GET of `table` with `query` as its query string: parse, plan, SQL.
pub fn plan_read(
    sc: &SchemaCache,
    table: &str,
    query: &str,
    aggregates: bool,
) -> Result<Sql, RestError> {
    let pairs = crate::http::query_pairs(Some(query));
    let mut p = parse_params(&pairs, false, &[])?;
    lift_embed_nulls(&mut p);
    check_embed_paths(&p)?;
    let mut planner = Planner::new(sc, aggregates);
    planner.mods = std::mem::take(&mut p.mods);
    let node = planner.node(
        Source::Table {
            schema: "public".into(),
            name: table.into(),
        },
        table,
        Some(("public".into(), table.into())),
        p.select.as_deref().unwrap_or(&[]),
        &[],
    )?;
    let mut q = Sql::default();
    q.text = sql::wrap_read(
        &mut q,
        &node,
        false,
        &Media::Json,
        false,
        &BodyShape::Rows,
        None,
    );
    Ok(q)
}

/// The string literals the SQL writer itself puts into statements; any other `'...'` in a
/// statement would be input that escaped into the SQL text.
const WRITER_LITERALS: &[&str] = &[
    "",
    "[]",
    "null",
    ",",
    "\\n",
    "type",
    "FeatureCollection",
    "features",
];

/// Err when `sql` holds text that is neither SQL the writer produces nor a quoted
/// identifier: a string literal not in [`WRITER_LITERALS`], a statement separator, a
/// comment, an unterminated quote, or a NUL byte anywhere.
pub fn check_sql(sql: &str) -> Result<(), String> {
    // No PostgreSQL statement can carry a NUL byte, quoted or not (the server would drop
    // the connection).
    if sql.contains('\0') {
        return Err(format!("a NUL byte in {sql:?}"));
    }
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // A quoted identifier: `""` is an escaped quote inside it.
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(format!("unterminated identifier in {sql}")),
                        Some(b'"') if b.get(i + 1) == Some(&b'"') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'\'' => {
                let start = i + 1;
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(format!("unterminated literal in {sql}")),
                        Some(b'\'') if b.get(i + 1) == Some(&b'\'') => i += 2,
                        Some(b'\'') => break,
                        Some(_) => i += 1,
                    }
                }
                let lit = &sql[start..i];
                if !WRITER_LITERALS.contains(&lit) {
                    return Err(format!("literal '{lit}' in {sql}"));
                }
            }
            b';' => return Err(format!("';' in {sql}")),
            b'-' if b.get(i + 1) == Some(&b'-') => return Err(format!("comment in {sql}")),
            b'/' if b.get(i + 1) == Some(&b'*') => return Err(format!("comment in {sql}")),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The fuzz target: never panics on any input; panics (a finding) if the SQL written for
/// it breaks [`check_sql`].
pub fn query_string(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let sc = demo_cache();
    for table in ["authors", "books", "missing"] {
        for aggregates in [false, true] {
            if let Ok(q) = plan_read(&sc, table, &text, aggregates) {
                if let Err(e) = check_sql(&q.text) {
                    panic!("input {text:?} escaped into the SQL: {e}");
                }
            }
        }
    }
    // The same bytes as Prefer and Accept header values.
    let _ = Prefer::parse(text.split('\n'));
    let _ = prefer::parse_accept(Some(&text));
    let _ = prefer::parse_accept_for(Some(&text), true);
}

/// The fuzz target for the `Prefer` and `Accept` header parsers: every line of `data` is
/// one `Prefer` value. Never panics; what it understood is consistent.
pub fn prefer_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let p = Prefer::parse(text.split('\n'));
    let strict = p.check_strict();
    assert_eq!(
        strict.is_err(),
        p.strict && !p.invalid.is_empty(),
        "handling=strict refuses exactly the unknown preferences"
    );
    if let Some(tz) = &p.timezone {
        assert!(!tz.is_empty());
    }
    for line in text.split('\n') {
        let _ = prefer::parse_accept(Some(line));
        let _ = prefer::parse_accept_for(Some(line), false);
    }
}

/// A fuzz target: any bytes in, no panic out.
#[cfg(test)]
pub type Target = fn(&[u8]);

/// Every fuzz target by its name in `fuzz/Cargo.toml` (and corpus folder).
#[cfg(test)]
pub const TARGETS: &[(&str, Target)] = &[
    ("rest_query", query_string),
    ("prefer_header", prefer_header),
    ("phoenix_frame", crate::realtime::phoenix::fuzz_frame),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of the grammar (and of trouble), glued at random by the tests below.
    const FRAGMENTS: &[&str] = &[
        "select=",
        "&",
        "=",
        "id",
        "name",
        "title",
        "author_id",
        "books",
        "authors",
        "nope",
        "\"q,(\"",
        "*",
        ",",
        "(",
        ")",
        "!",
        "!inner",
        "!left",
        ":",
        "::",
        "::text",
        "::int[]",
        "->",
        "->>",
        "'",
        "';drop table x;--",
        "/*",
        ".",
        "...",
        "eq.",
        "neq.",
        "not.",
        "in.(",
        "or=(",
        "and=(",
        "and(",
        "or(",
        "like(any).",
        "ilike(all).",
        "{",
        "}",
        "\\",
        "é",
        " ",
        "%20",
        "%27",
        "%",
        "count()",
        ".sum()",
        ".avg()",
        "fts(english).",
        "is.null",
        "is.true",
        "desc",
        "asc",
        "nullsfirst",
        "nullslast",
        "order=",
        "limit=",
        "offset=",
        "books.order=",
        "books.limit=",
        "books.title=",
        "0",
        "-1",
        "\u{0}",
        "author:authors(",
        "...authors(",
        "cs.{",
        "cd.",
        "ov.[",
        "sl.(",
        "adj.",
        "isdistinct.",
        "match.",
        "imatch.",
        "phfts.",
        "wfts(",
        "columns=",
        "on_conflict=",
    ];

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// Random grammar-fragment inputs, with random byte damage. `OXIBASE_FUZZ_ITERS` runs
    /// it longer (`cargo test --release fuzz_ -- --nocapture`).
    #[test]
    fn fuzz_query_string_random() {
        let iters: u64 = std::env::var("OXIBASE_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..iters {
            let n = (xorshift(&mut x) % 16) as usize;
            let mut s = Vec::new();
            for _ in 0..n {
                let f = FRAGMENTS[(xorshift(&mut x) % FRAGMENTS.len() as u64) as usize];
                s.extend_from_slice(f.as_bytes());
            }
            if !s.is_empty() && xorshift(&mut x).is_multiple_of(4) {
                let at = (xorshift(&mut x) % s.len() as u64) as usize;
                s[at] = (xorshift(&mut x) % 256) as u8;
            }
            query_string(&s);
        }
    }

    /// Known-tricky inputs: each must plan to SQL that keeps the input out of the text.
    #[test]
    fn fuzz_corpus_keeps_input_out_of_sql() {
        let sc = demo_cache();
        for q in [
            "select=id&title=eq.';drop table books;--",
            "select=id,\"a\"\"b\"&title=like.*'*",
            "select=id&or=(title.eq.x';--,id.eq.1)",
            "select=id,authors(name)&authors.name=in.(a'b,\"c,d\")",
            "select=t:title->>'x'&title->'a'->>0=eq.1",
            "select=id&title=fts(english).a' | b",
            "select=id::text,title&order=title.desc.nullslast",
        ] {
            match plan_read(&sc, "books", q, true) {
                Ok(sql) => {
                    check_sql(&sql.text).unwrap();
                    assert!(!sql.text.contains("drop"), "{}", sql.text);
                }
                Err(e) => assert!(e.status.is_client_error(), "{q}: {}", e.status),
            }
            query_string(q.as_bytes());
        }
    }

    /// The benchmark's pgbench scripts run the statements oxibase writes for its requests:
    /// keep them in step with the SQL writer (the demo cache has `books`/`authors` where the
    /// benchmark has `bench_books`/`bench_authors`; `:a` stands for `$1`).
    #[test]
    fn bench_scripts_match_the_sql_written() {
        let sc = demo_cache();
        for (script, table, query, var) in [
            (
                include_str!("../../bench/rest/get_by_id.sql"),
                "books",
                "id=eq.1",
                ":id",
            ),
            (
                include_str!("../../bench/rest/embed.sql"),
                "authors",
                "select=id,name,books(id,title)&id=gte.5&order=id&limit=10",
                ":a",
            ),
        ] {
            let q = plan_read(&sc, table, query, false).unwrap();
            let stmt = script
                .lines()
                .find(|l| l.starts_with("SELECT NULL::int8"))
                .unwrap()
                .trim_end_matches(';')
                .replace("bench_", "")
                .replace(var, "$1");
            assert_eq!(q.text, stmt);
        }
    }

    /// Each committed seed corpus (`fuzz/corpus/<target>/`) replayed through its target,
    /// and every target in `fuzz/Cargo.toml` has one.
    #[test]
    fn fuzz_corpus_files_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        for (name, target) in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "{name} is not a [[bin]] of fuzz/Cargo.toml"
            );
            let dir = root.join("corpus").join(name);
            let mut n = 0;
            for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                target(&data);
                n += 1;
            }
            assert!(n >= 10, "{name}: only {n} seeds");
        }
    }

    const PREFER_FRAGMENTS: &[&str] = &[
        "return=",
        "representation",
        "minimal",
        "headers-only",
        "count=",
        "exact",
        "planned",
        "estimated",
        "resolution=",
        "merge-duplicates",
        "ignore-duplicates",
        "missing=default",
        "tx=rollback",
        "tx=commit",
        "handling=strict",
        "handling=lenient",
        "params=single-object",
        "max-affected=",
        "-1",
        "99999999999999999999",
        "timezone=",
        "Europe/Paris",
        ",",
        ", ",
        "=",
        "\n",
        " ",
        "\u{0}",
        "é",
        "application/json",
        "text/csv",
        "application/vnd.pgrst.object+json",
        "application/vnd.pgrst.plan+json;",
        "for=",
        "\"application/json\"",
        "options=analyze|verbose",
        ";q=0.5",
        "*/*",
        "nulls=stripped",
        "application/geo+json",
        "text/plain",
        "application/octet-stream",
    ];

    const PHOENIX_FRAGMENTS: &[&str] = &[
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "null",
        "\"1\"",
        "\"realtime:room\"",
        "\"phoenix\"",
        "\"phx_join\"",
        "\"heartbeat\"",
        "\"broadcast\"",
        "\"topic\"",
        "\"event\"",
        "\"payload\"",
        "\"ref\"",
        "\"join_ref\"",
        "1",
        "-1e999",
        "true",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\u{3}",
        "\u{0}",
        "\u{4}",
        "\u{ff}",
        "é",
    ];

    fn random_inputs(fragments: &[&str], seed: u64, iters: u64, mut f: impl FnMut(&[u8])) {
        let mut x = seed;
        for _ in 0..iters {
            let n = (xorshift(&mut x) % 16) as usize;
            let mut s = Vec::new();
            for _ in 0..n {
                let frag = fragments[(xorshift(&mut x) % fragments.len() as u64) as usize];
                s.extend_from_slice(frag.as_bytes());
            }
            if !s.is_empty() && xorshift(&mut x).is_multiple_of(3) {
                let at = (xorshift(&mut x) % s.len() as u64) as usize;
                s[at] = (xorshift(&mut x) % 256) as u8;
            }
            f(&s);
        }
    }

    fn iters() -> u64 {
        std::env::var("OXIBASE_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000)
    }

    #[test]
    fn fuzz_prefer_header_random() {
        random_inputs(
            PREFER_FRAGMENTS,
            0x2545_F491_4F6C_DD1D,
            iters(),
            prefer_header,
        );
    }

    #[test]
    fn fuzz_phoenix_frame_random() {
        random_inputs(PHOENIX_FRAGMENTS, 0x5851_F42D_4C95_7F2D, iters(), |s| {
            crate::realtime::phoenix::fuzz_frame(s)
        });
        // Binary frames with plausible headers: kind 3, small lengths, any tail.
        let mut x: u64 = 0x1405_7B7E_F767_814F;
        for _ in 0..iters() {
            let len = (xorshift(&mut x) % 40) as usize;
            let mut f = vec![3u8];
            for _ in 0..5 {
                f.push((xorshift(&mut x) % 8) as u8);
            }
            f.push((xorshift(&mut x) % 2) as u8);
            for _ in 0..len {
                let b = xorshift(&mut x) as u8;
                f.push(if b < 128 { b'a' + b % 26 } else { b });
            }
            crate::realtime::phoenix::fuzz_frame(&f);
        }
    }

    #[test]
    fn check_sql_catches_escapes() {
        assert!(check_sql("SELECT \"a\"\"b\" FROM \"t\" WHERE x = $1").is_ok());
        assert!(check_sql("SELECT coalesce(x, '[]')").is_ok());
        assert!(check_sql("SELECT 'evil'").is_err());
        assert!(check_sql("SELECT 1; DROP").is_err());
        assert!(check_sql("SELECT 1 -- c").is_err());
        assert!(check_sql("SELECT \"open").is_err());
        assert!(check_sql("SELECT \"a\u{0}\"").is_err());
    }
}
