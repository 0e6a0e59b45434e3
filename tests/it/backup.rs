//! Backups and point-in-time restores through the real binary and the real embedded
//! PostgreSQL: rows and objects written, backed up, written again around a noted time,
//! restored to that time and to the latest change into fresh data directories, and each
//! restored server holds exactly the rows and objects of its moment. Once to a folder, once
//! to S3 (a local moto server).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::spawned::{free_port, Http, Opts, Spawned};
use common::SERVICE_KEY;

/// The `oxibase` binary with the given arguments, in `cwd`, with `env`.
fn oxibase(cwd: &Path, args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oxibase"))
        .args(args)
        .current_dir(cwd)
        .env("OXIBASE_LOG", "error")
        .env_remove("OXIBASE_CONFIG")
        .env_remove("OXIBASE_DATABASE_URL")
        .env_remove("OXIBASE_DATA_DIR")
        .env_remove("OXIBASE_PROJECT")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

struct Api {
    http: Http,
    url: String,
}

impl Api {
    fn headers(ct: &'static str) -> Vec<(&'static str, String)> {
        vec![
            ("apikey", SERVICE_KEY.to_string()),
            ("authorization", format!("Bearer {SERVICE_KEY}")),
            ("content-type", ct.to_string()),
        ]
    }

    async fn call(&self, method: &str, path: &str, ct: &'static str, body: &str) -> (u16, String) {
        let h = Self::headers(ct);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = self
            .http
            .send(method, &format!("{}{path}", self.url), &h, body.to_string())
            .await
            .unwrap();
        (r.status, r.text())
    }

    async fn bucket(&self) {
        let (s, t) = self
            .call(
                "POST",
                "/storage/v1/bucket",
                "application/json",
                r#"{"id":"docs","name":"docs"}"#,
            )
            .await;
        assert_eq!(s, 200, "{t}");
    }

    /// Upload or overwrite.
    async fn put(&self, name: &str, body: &str) {
        let h = Self::headers("text/plain");
        let mut h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        h.push(("x-upsert", "true"));
        let r = self
            .http
            .send(
                "POST",
                &format!("{}/storage/v1/object/docs/{name}", self.url),
                &h,
                body.to_string(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "upload {name}: {}", r.text());
    }

    async fn delete(&self, name: &str) {
        let (s, t) = self
            .call(
                "DELETE",
                &format!("/storage/v1/object/docs/{name}"),
                "application/json",
                "",
            )
            .await;
        assert_eq!(s, 200, "delete {name}: {t}");
    }

    /// Every object in `docs` with its downloaded bytes.
    async fn objects(&self) -> BTreeMap<String, String> {
        let (s, t) = self
            .call(
                "POST",
                "/storage/v1/object/list/docs",
                "application/json",
                r#"{"prefix":"","limit":1000}"#,
            )
            .await;
        assert_eq!(s, 200, "{t}");
        let list: serde_json::Value = serde_json::from_str(&t).unwrap();
        let mut out = BTreeMap::new();
        for o in list.as_array().unwrap() {
            let name = o["name"].as_str().unwrap().to_string();
            let (s, body) = self
                .call(
                    "GET",
                    &format!("/storage/v1/object/docs/{name}"),
                    "text/plain",
                    "",
                )
                .await;
            assert_eq!(s, 200, "{name} is listed but does not download: {body}");
            out.insert(name, body);
        }
        out
    }
}

async fn notes(srv: &Spawned) -> Vec<String> {
    srv.sql("select body from public.notes order by id")
        .await
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Write, back up, write, note a time, write, stop; restore to the time and to latest.
async fn round_trip(target: &str, env: Vec<(String, String)>) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let toml =
        format!("[backup]\ntarget = \"{target}\"\ninterval = \"\"\narchive_timeout_secs = 60\n");
    let mut srv = Spawned::start(
        &src,
        &Opts {
            toml: toml.clone(),
            env: env.clone(),
            ..Opts::default()
        },
    )
    .await;
    let api = Api {
        http: Http::new(None),
        url: srv.url.clone(),
    };
    srv.batch(
        "create table public.notes (id int primary key, body text not null); \
         insert into public.notes values (1, 'before the backup')",
    )
    .await;
    api.bucket().await;
    api.put("a.txt", "a1").await;
    api.put("keep.txt", "kept all along").await;
    api.put("gone.txt", "deleted after the backup").await;

    // An online backup by the CLI, configured like the server.
    let cfg = src.join("test.toml");
    let mut cli_env = env.clone();
    cli_env.push(("OXIBASE_DB_PORT".into(), srv.db_port.to_string()));
    cli_env.push(("OXIBASE_DATA_DIR".into(), src.display().to_string()));
    let (ok, id, said) = oxibase(
        root,
        &["backup", "--config", cfg.to_str().unwrap()],
        &cli_env,
    );
    assert!(ok, "backup failed: {said}");
    assert!(
        said.contains("uploading base.tar.gz"),
        "progress shown: {said}"
    );
    assert!(said.contains("3 objects"), "{said}");
    assert!(
        said.contains("(LSN 0/"),
        "start and end LSN reported: {said}"
    );
    let id = id.trim().to_string();
    let (ok, listed, said) = oxibase(
        root,
        &["backup", "--list", "--config", cfg.to_str().unwrap()],
        &cli_env,
    );
    assert!(ok && listed.contains(&id), "{listed} {said}");

    // After the backup, before the time.
    srv.batch("insert into public.notes values (2, 'after the backup')")
        .await;
    api.put("a.txt", "a2").await;
    api.delete("gone.txt").await;
    api.put("b.txt", "b1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at = chrono::Utc::now()
        .format("%Y-%m-%d %H:%M:%S%.3f")
        .to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // After the time.
    srv.batch("insert into public.notes values (3, 'after the time')")
        .await;
    api.put("a.txt", "a3").await;
    api.delete("b.txt").await;
    api.put("c.txt", "c1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A clean stop archives the last WAL segment and object copies in flight.
    assert!(srv.stop(Duration::from_secs(90)), "{}", srv.logs());

    let restore = |dir: &Path, to: &str| {
        oxibase(
            root,
            &[
                "restore",
                "--from",
                target,
                "--to",
                to,
                "--data-dir",
                dir.to_str().unwrap(),
            ],
            &env,
        )
    };
    // To the noted time.
    let at_dir = root.join("at");
    let (ok, _, said) = restore(&at_dir, &at);
    assert!(ok, "restore to {at} failed: {said}");
    assert!(said.contains(&id), "the one backup is used: {said}");
    let (ok, _, said) = restore(&at_dir, &at);
    assert!(!ok && said.contains("not empty"), "{said}");
    let restored = Spawned::start(&at_dir, &Opts::default()).await;
    let api = Api {
        http: Http::new(None),
        url: restored.url.clone(),
    };
    assert_eq!(
        notes(&restored).await,
        vec!["before the backup", "after the backup"]
    );
    assert_eq!(
        api.objects().await,
        expect(&[
            ("a.txt", "a2"),
            ("b.txt", "b1"),
            ("keep.txt", "kept all along")
        ])
    );
    assert_eq!(
        common::files_under(&at_dir.join("storage/objects")).len(),
        3,
        "only the bytes the restored rows name"
    );
    drop(restored);

    // To the latest archived change.
    let latest_dir = root.join("latest");
    let (ok, _, said) = restore(&latest_dir, "latest");
    assert!(ok, "restore to latest failed: {said}");
    let restored = Spawned::start(&latest_dir, &Opts::default()).await;
    let api = Api {
        http: Http::new(None),
        url: restored.url.clone(),
    };
    assert_eq!(
        notes(&restored).await,
        vec!["before the backup", "after the backup", "after the time"]
    );
    assert_eq!(
        api.objects().await,
        expect(&[
            ("a.txt", "a3"),
            ("c.txt", "c1"),
            ("keep.txt", "kept all along")
        ])
    );
    assert_eq!(
        common::files_under(&latest_dir.join("storage/objects")).len(),
        3
    );

    // A time after the last archived change cannot be proven reached: said so.
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let (ok, _, said) = restore(&root.join("late"), &now);
    assert!(!ok && said.contains("--to latest"), "{said}");
    // Clear errors for a bad time and for a time before the first backup.
    let (ok, _, said) = restore(&root.join("bad"), "next tuesday");
    assert!(!ok && said.contains("YYYY-MM-DD HH:MM:SS"), "{said}");
    let (ok, _, said) = restore(&root.join("early"), "2001-01-01 00:00:00");
    assert!(!ok && said.contains("no backup finished before"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restore_from_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("backups");
    round_trip(target.to_str().unwrap(), vec![]).await;
}

/// Kills the moto server when the test ends, however it ends.
struct Moto(std::process::Child);
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restore_from_s3() {
    let port = free_port();
    let _moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]') runs"),
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = Http::new(None);
    let mut up = false;
    for _ in 0..200 {
        if http.get(&endpoint, &[]).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "moto did not start");
    let r = http
        .send("PUT", &format!("{endpoint}/oxibackups"), &[], "")
        .await
        .unwrap();
    assert!(r.status < 300, "create bucket: {}", r.text());
    let env: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    round_trip("s3://oxibackups/site-one", env).await;
}

/// `keep = 2` backups in the archive (a third may have finished, its prune under way), and
/// no archived WAL segment older than the oldest kept backup's start.
fn kept_with_their_wal(target: &std::path::Path) -> Result<(), String> {
    let manifests: Vec<serde_json::Value> = std::fs::read_dir(target.join("base"))
        .map_err(|e| e.to_string())?
        .flatten()
        .filter_map(|d| std::fs::read(d.path().join("manifest.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    if !(2..=3).contains(&manifests.len()) {
        return Err(format!("{} backups kept", manifests.len()));
    }
    let oldest = manifests
        .iter()
        .filter_map(|m| m["start_wal_file"].as_str())
        .map(|f| f[8..].to_string())
        .min()
        .ok_or("no start_wal_file")?;
    for f in std::fs::read_dir(target.join("wal"))
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let name = f.file_name().to_string_lossy().to_string();
        if name.len() >= 24 && !name.contains("history") && name[8..24] < oldest[..] {
            return Err(format!("{name} outlived its backups"));
        }
    }
    Ok(())
}

/// The running server takes backups on its schedule and keeps only `keep` of them with the
/// WAL they need; a failing archive command shows in oxibase's own log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_are_pruned_and_archive_failures_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("backups");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let toml = format!(
        "[backup]\ntarget = \"{}\"\ninterval = \"2s\"\nkeep = 2\n",
        target.display()
    );
    let srv = Spawned::start(
        &src,
        &Opts {
            toml,
            ..Opts::default()
        },
    )
    .await;
    srv.batch("create table public.ticks (n int)").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    while srv.logs().matches("scheduled backup done").count() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than 4 scheduled backups in 120 s:\n{}",
            srv.logs()
        );
        n += 1;
        srv.batch(&format!(
            "insert into public.ticks values ({n}); select pg_switch_wal()"
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(srv.logs().contains("old backups pruned"), "{}", srv.logs());
    // The schedule keeps running: a prune drops manifests before the WAL they needed, and a
    // segment the archiver copies late can land under the floor a prune just applied (the
    // next prune takes it). The archive is looked at until it is seen settled.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match kept_with_their_wal(&target) {
            Ok(()) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The archive folder's wal/ becomes unwritable: the failure reaches oxibase's log.
    std::fs::remove_dir_all(target.join("wal")).unwrap();
    std::fs::write(target.join("wal"), "not a folder").unwrap();
    srv.batch("insert into public.ticks values (0); select pg_switch_wal()")
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !srv
        .logs()
        .contains("WAL archiving to the backup target failed")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no archive failure logged:\n{}",
            srv.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // (No clean stop: its last WAL switch would wait for the failing archive.)
    drop(srv);
}
