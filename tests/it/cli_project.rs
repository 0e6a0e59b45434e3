//! The Supabase CLI's local workflow through the real binary, in a project directory:
//! `db reset`, `migration new/list/up`, a failing `migration up`, `db dump`, `status`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::free_port;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().unwrap();
        // The postgres system user must enter it when we are root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/projects/notes/supabase");
        copy_dir(&fixture, &dir.path().join("supabase"));
        Project { dir }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_oxibase"))
            .args(args)
            .current_dir(self.dir.path())
            .env("OXIBASE_DATA_DIR", self.dir.path().join("data"))
            // Ports are picked right before each command: one held for the whole test
            // would be free between commands, for a parallel test to take.
            .env("OXIBASE_DB_PORT", free_port().to_string())
            .env("OXIBASE_PORT", free_port().to_string())
            .env("OXIBASE_DB_FSYNC", "false")
            .env("OXIBASE_LOG", "warn")
            .env("NOTES_SITE_URL", "https://notes.test")
            .env_remove("OXIBASE_CONFIG")
            .env_remove("OXIBASE_DATABASE_URL")
            .env_remove("OXIBASE_PROJECT")
            .output()
            .unwrap();
        out
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(out.status.success(), "oxibase {args:?} failed:\n{o}\n{e}");
        (o, e)
    }

    fn migrations(&self) -> PathBuf {
        self.dir.path().join("supabase/migrations")
    }
}

#[test]
fn reset_new_list_up_dump_and_a_failing_migration() {
    let p = Project::new();
    let (_, said) = p.ok(&["db", "reset"]);
    assert!(
        said.contains("Applying migration 20240101000000_init.sql"),
        "{said}"
    );
    assert!(
        said.contains("Seeding data from supabase/seed.sql"),
        "{said}"
    );
    assert!(said.contains("Finished oxibase db reset."), "{said}");

    let (_, said) = p.ok(&["migration", "new", "add_tags"]);
    assert!(said.contains("Created new migration at"), "{said}");
    let new_file = std::fs::read_dir(p.migrations())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| f.to_string_lossy().ends_with("_add_tags.sql"))
        .expect("the new file");
    let version = new_file.file_name().unwrap().to_string_lossy()[..14].to_string();
    std::fs::write(
        &new_file,
        "create table public.tags (id int primary key);\n",
    )
    .unwrap();

    let (table, _) = p.ok(&["migration", "list"]);
    let row = table
        .lines()
        .find(|l| l.contains(&version))
        .expect("listed");
    assert!(row.trim_start().starts_with(&version), "local: {table}");
    assert_eq!(row.matches(&version).count(), 1, "not yet applied: {table}");
    assert!(table.contains("20240101000000 | 20240101000000"), "{table}");

    let (_, said) = p.ok(&["migration", "up"]);
    assert!(said.contains("_add_tags.sql"), "{said}");
    let (table, _) = p.ok(&["migration", "list"]);
    assert!(
        table.contains(&format!("{version} | {version}")),
        "applied: {table}"
    );

    // A failing file: named with its line; nothing of it stays; the rest are untouched.
    std::fs::write(
        p.migrations().join("29990101000000_bad.sql"),
        "create table public.half (x int);\n-- the next statement fails\ninsert into public.missing values (1);\n",
    )
    .unwrap();
    let out = p.run(&["migration", "up"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains("supabase/migrations/29990101000000_bad.sql:3"),
        "{err}"
    );
    let (table, _) = p.ok(&["migration", "list"]);
    assert!(
        !table.contains("29990101000000 | 29990101000000"),
        "{table}"
    );

    // A schema dump has the project's tables and not the half-applied one.
    let dump = p.dir.path().join("schema.sql");
    let (_, said) = p.ok(&["db", "dump", "-f", dump.to_str().unwrap()]);
    assert!(said.contains("Dumped schema to"), "{said}");
    let text = std::fs::read_to_string(&dump).unwrap();
    assert!(text.contains("CREATE TABLE IF NOT EXISTS \"public\".\"tags\""));
    assert!(text.contains("\"public\".\"handle_new_user\""));
    assert!(!text.contains("\"public\".\"half\""));
    assert!(
        !text.contains("CREATE TABLE IF NOT EXISTS \"auth\".\"users\""),
        "auth is managed"
    );
    // A data dump keeps auth rows, for moving a project.
    let (data, _) = p.ok(&["db", "dump", "--data-only"]);
    assert!(data.starts_with("SET session_replication_role = replica;"));
    assert!(data.contains("ada@notes.test"));
    let (roles, _) = p.ok(&["db", "dump", "--role-only"]);
    assert!(
        roles.contains("-- CREATE ROLE \"anon\""),
        "reserved roles are commented"
    );

    let (status, _) = p.ok(&["status"]);
    assert!(
        status.contains("Project:") && status.contains("not running"),
        "{status}"
    );
    assert!(status.contains("anon key:"), "{status}");
}
