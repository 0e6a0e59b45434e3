//! `gen types typescript` against a fixture schema of every shape the generator knows;
//! the expected file was checked by hand against the rules of the Supabase CLI's template.

use crate::common;

use common::TestServer;
use oxibase::gentypes::{typescript_for_url, Options};

const SCHEMA: &str = include_str!("../fixtures/gentypes/schema.sql");
const EXPECTED: &str = include_str!("../fixtures/gentypes/expected.ts");

async fn server_with_fixture() -> TestServer {
    let t = TestServer::start().await;
    let (client, conn) = tokio_postgres::connect(&t.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let h = tokio::spawn(conn);
    client.batch_execute(SCHEMA).await.unwrap();
    drop(client);
    let _ = h.await;
    t
}

fn schemas(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn generated_types_match_the_expected_file() {
    let t = server_with_fixture().await;
    let ts = typescript_for_url(
        &t.db_url,
        &schemas(&["gt_other", "gt"]),
        &Options::default(),
    )
    .await
    .unwrap();
    if ts != EXPECTED {
        let path = std::env::temp_dir().join("oxibase-gentypes-actual.ts");
        std::fs::write(&path, &ts).unwrap();
        panic!(
            "generated types differ from tests/fixtures/gentypes/expected.ts; actual in {}",
            path.display()
        );
    }
}

#[tokio::test]
async fn flags_change_what_the_cli_changes() {
    let t = server_with_fixture().await;
    let opts = Options {
        detect_one_to_one: false,
        postgrest_version: Some("12.2.3".into()),
    };
    let ts = typescript_for_url(&t.db_url, &schemas(&["gt"]), &opts)
        .await
        .unwrap();
    // (SetofOptions keeps its own isOneToOne; relationships lose theirs.)
    assert!(ts.contains("foreignKeyName: \"posts_author_id_fkey\""));
    assert!(!ts.contains("isOneToOne: false\n") && !ts.contains("isOneToOne: true\n"));
    assert!(ts.contains("__InternalSupabase: {\n    PostgrestVersion: \"12.2.3\"\n  }"));
    // Only the schema asked for; an unknown schema is left out, not an error.
    assert!(!ts.contains("gt_other: {"));
    let none = typescript_for_url(&t.db_url, &schemas(&["no_such"]), &Options::default())
        .await
        .unwrap();
    assert!(none.contains("export type Database = {\n}"));
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let err = typescript_for_url(
        "postgres://postgres:postgres@127.0.0.1:1/postgres",
        &schemas(&["public"]),
        &Options::default(),
    )
    .await
    .unwrap_err();
    assert!(err.starts_with("cannot connect to the database"), "{err}");
}
