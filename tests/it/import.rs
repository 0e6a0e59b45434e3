//! `oxibase import` moves a project off Supabase: a dump written to `supabase db dump`'s
//! shapes restores into a fresh oxibase, the old password signs in, identities and MFA
//! factors survive, objects are copied (resumably) and download.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::spawned::{free_port, Http, Opts, Spawned};
use common::{ANON_KEY, SERVICE_KEY};

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/import")
        .join(p)
}

fn import(dir: &Path, db_port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oxibase"))
        .arg("import")
        .args(args)
        .current_dir(dir)
        .env("OXIBASE_DATA_DIR", dir)
        .env("OXIBASE_DB_PORT", db_port.to_string())
        .env("OXIBASE_DB_FSYNC", "false")
        .env("OXIBASE_LOG", "error")
        .env_remove("OXIBASE_CONFIG")
        .env_remove("OXIBASE_DATABASE_URL")
        .env_remove("OXIBASE_PROJECT")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supabase_dump_moves_in() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db_port = free_port();
    let s = |p: &str| fixture(p).to_string_lossy().to_string();
    let (ok, said) = import(
        dir,
        db_port,
        &[
            "--roles",
            &s("roles.sql"),
            "--schema",
            &s("schema.sql"),
            "--data",
            &s("data.sql"),
            "--objects-from",
            &s("objects"),
        ],
    );
    assert!(ok, "{said}");
    assert!(
        said.contains("pg_graphql"),
        "platform extensions named: {said}"
    );
    assert!(said.contains("table auth.sso_providers"), "{said}");
    assert!(said.contains("Objects: 2 copied, 0 already here"), "{said}");

    // Run again: the copy is idempotent.
    let (ok, said) = import(dir, db_port, &["--objects-from", &s("objects")]);
    assert!(ok, "{said}");
    assert!(said.contains("Objects: 0 copied, 2 already here"), "{said}");

    let server = Spawned::start_on(
        dir,
        free_port(),
        db_port,
        &Opts {
            toml: "app_schema = false".into(),
            ..Opts::default()
        },
    )
    .await;
    let http = Http::new(None);
    let url = &server.url;
    let h = [("apikey", ANON_KEY), ("content-type", "application/json")];
    // GoTrue's bcrypt hash from the dump signs in with the old password.
    let r = http
        .send(
            "POST",
            &format!("{url}/auth/v1/token?grant_type=password"),
            &h,
            r#"{"email":"grace@moved.test","password":"password123"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {token}");
    let ah = [("apikey", ANON_KEY), ("authorization", bearer.as_str())];
    let user = http
        .get(&format!("{url}/auth/v1/user"), &ah)
        .await
        .unwrap()
        .json();
    assert_eq!(user["id"], "9d3b9c8e-1f7a-4c1b-8a1e-2f0c5b7d6e01");
    assert_eq!(user["identities"][0]["provider"], "email", "{user}");
    assert_eq!(user["user_metadata"]["full_name"], "Grace H");
    let factors = http
        .get(&format!("{url}/auth/v1/factors"), &ah)
        .await
        .unwrap();
    let listed = format!("{} {}", factors.text(), user);
    assert!(
        listed.contains("f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a03"),
        "factor survives: {listed}"
    );
    // The app's own rows under RLS.
    let p = http
        .get(
            &format!("{url}/rest/v1/profiles?select=full_name,plan"),
            &ah,
        )
        .await
        .unwrap();
    assert_eq!(
        p.json(),
        serde_json::json!([{"full_name": "Grace H", "plan": "pro"}])
    );
    // Old objects download: public, and private (storage policies are not part of a
    // schema dump: the service key reads it).
    let a = http
        .get(
            &format!("{url}/storage/v1/object/public/avatars/ada/face.txt"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((a.status, a.text()), (200, "hello, Grace!\n".to_string()));
    let d = http
        .get(
            &format!("{url}/storage/v1/object/authenticated/docs/plans/q1.txt"),
            &[
                ("apikey", SERVICE_KEY),
                ("authorization", &format!("Bearer {SERVICE_KEY}")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(d.text(), "Q1 goals\n");
}

/// Kills the moto server when the test ends, however it ends.
struct Moto(std::process::Child);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Objects copied from an S3-compatible source (a local moto server, as Supabase's S3
/// endpoint would be used), then again with nothing left to copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_copy_from_s3() {
    use object_store::aws::AmazonS3Builder;
    use object_store::ObjectStore;
    use std::os::unix::fs::PermissionsExt;
    let moto_port = free_port();
    let _moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]') runs"),
    );
    let endpoint = format!("http://127.0.0.1:{moto_port}");
    let http = Http::new(None);
    for _ in 0..200 {
        if http.get(&endpoint, &[]).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (bucket, name, body) in [
        ("avatars", "ada/face.txt", "hello, Grace!\n"),
        ("docs", "plans/q1.txt", "Q1 goals\n"),
    ] {
        let r = http
            .send("PUT", &format!("{endpoint}/{bucket}"), &[], "")
            .await
            .unwrap();
        assert!(r.status < 300, "create bucket: {}", r.text());
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        s3.put(
            &object_store::path::Path::from(name),
            body.as_bytes().to_vec().into(),
        )
        .await
        .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db_port = free_port();
    let s = |p: &str| fixture(p).to_string_lossy().to_string();
    let run = |args: Vec<String>| {
        let out = Command::new(env!("CARGO_BIN_EXE_oxibase"))
            .arg("import")
            .args(args)
            .env("OXIBASE_DATA_DIR", dir)
            .env("OXIBASE_DB_PORT", db_port.to_string())
            .env("OXIBASE_DB_FSYNC", "false")
            .env("OXIBASE_LOG", "error")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env_remove("OXIBASE_CONFIG")
            .env_remove("OXIBASE_DATABASE_URL")
            .env_remove("OXIBASE_PROJECT")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, said) = run(vec![
        "--schema".into(),
        s("schema.sql"),
        "--data".into(),
        s("data.sql"),
        "--objects-from".into(),
        "s3://".into(),
    ]);
    assert!(ok, "{said}");
    assert!(
        said.contains("[1/2] avatars/ada/face.txt (14 bytes)"),
        "progress: {said}"
    );
    assert!(said.contains("Objects: 2 copied, 0 already here"), "{said}");
    // The bytes sit under the version the imported row names.
    let stored =
        std::fs::read_to_string(dir.join("storage/objects/7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a06"))
            .unwrap();
    assert_eq!(stored, "hello, Grace!\n");
    let (ok, said) = run(vec!["--objects-from".into(), "s3://".into()]);
    assert!(ok, "{said}");
    assert!(said.contains("Objects: 0 copied, 2 already here"), "{said}");
}
