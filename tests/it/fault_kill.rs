//! `kill -9` of oxibase (its PostgreSQL left running, as after a real crash) during REST
//! writes, storage uploads and TUS uploads; then a restart on the same data dir. Every
//! acknowledged write is there, nothing half-written is visible or left in the file store,
//! and an interrupted resumable upload resumes.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::spawned::{Http, Opts, Spawned};
use common::SERVICE_KEY;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

const AUTH: &str = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

fn service() -> Vec<(&'static str, &'static str)> {
    assert!(AUTH.ends_with(SERVICE_KEY));
    vec![("apikey", SERVICE_KEY), ("authorization", AUTH)]
}

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = service();
    h.extend_from_slice(extra);
    h
}

/// Kill, then start again on the same data dir and ports.
async fn restart(srv: &mut Spawned) -> Spawned {
    srv.kill9();
    Spawned::start_on(&srv.dir.clone(), srv.port, srv.db_port, &Opts::default()).await
}

/// Write raw request bytes and keep the socket open (a request cut off mid-body).
async fn send_partial(port: u16, head: String, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// REST inserts from eight writers, killed mid-stream: every row acknowledged with a 201
/// is there after the restart, with its payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_rest_writes_keeps_every_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Spawned::start(dir.path(), &Opts::default()).await;
    srv.batch(
        "create table public.kill_rows (id int primary key, payload text not null); \
         grant all on public.kill_rows to service_role",
    )
    .await;
    let http = Http::new(None);
    let url = format!("{}/rest/v1/kill_rows", srv.url);
    let payload = |id: i32| format!("{id}:{}", "x".repeat(2000));
    // The schema cache reloads after the DDL.
    let start = Instant::now();
    loop {
        let r = http
            .send(
                "POST",
                &url,
                &with(&[("content-type", "application/json")]),
                serde_json::json!({"id": -1, "payload": payload(-1)}).to_string(),
            )
            .await
            .unwrap();
        if r.status == 201 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{}", r.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked = Arc::new(Mutex::new(vec![-1]));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..8 {
        let (acked, stop, http, url) = (acked.clone(), stop.clone(), http.clone(), url.clone());
        writers.push(tokio::spawn(async move {
            let mut id = w;
            while !stop.load(Ordering::Relaxed) {
                let body = serde_json::json!({"id": id, "payload": payload(id)}).to_string();
                let h = with(&[
                    ("content-type", "application/json"),
                    ("prefer", "return=minimal"),
                ]);
                match http.send("POST", &url, &h, body).await {
                    Ok(r) if r.status == 201 => acked.lock().unwrap().push(id),
                    Ok(r) => panic!("insert {id}: {}", r.status),
                    Err(_) => break,
                }
                id += 8;
            }
        }));
    }
    let start = Instant::now();
    while acked.lock().unwrap().len() < 200 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    srv.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} writes before the kill",
        acked.len()
    );

    let srv = restart(&mut srv).await;
    let rows: BTreeMap<i32, String> = srv
        .sql("select id, payload from public.kill_rows")
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for id in &acked {
        assert_eq!(
            rows.get(id).map(String::as_str),
            Some(payload(*id).as_str()),
            "acknowledged row {id} lost or changed"
        );
    }
    // And the API serves them.
    let r = http
        .get(
            &format!("{url}?select=id&id=eq.{}", acked[acked.len() - 1]),
            &service(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), 1);
}

/// Object versions the rows point at, and every file under storage/objects.
async fn check_store(srv: &Spawned, sent: &BTreeMap<String, String>) {
    let rows = srv
        .sql("select name, version, (metadata->>'size')::bigint from storage.objects where bucket_id = 'killb'")
        .await;
    let root = srv.dir.join("storage").join("objects");
    let mut versions = BTreeSet::new();
    for r in &rows {
        let (name, version, size): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let bytes = std::fs::read(root.join(&version))
            .unwrap_or_else(|e| panic!("{name}: its bytes {version}: {e}"));
        assert_eq!(bytes.len() as i64, size, "{name}: size");
        assert_eq!(
            Some(&sha(&bytes)),
            sent.get(&name),
            "{name}: not what was sent"
        );
        versions.insert(version);
    }
    // Nothing else in the file store: no half-written file, no bytes without a row.
    for f in common::files_under(&root) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            versions.contains(&name),
            "{} is in the file store but no object row points at it",
            f.display()
        );
    }
}

/// Uploads killed mid-flight (two cut-off requests, fast uploaders running): after the
/// restart every acknowledged upload downloads whole, every listed object is exactly
/// what was sent, and the file store holds nothing but the listed objects' bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_uploads_leaves_no_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Spawned::start(dir.path(), &Opts::default()).await;
    let http = Http::new(None);
    let r = http
        .send(
            "POST",
            &format!("{}/storage/v1/bucket", srv.url),
            &with(&[("content-type", "application/json")]),
            r#"{"id":"killb","name":"killb"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // name -> sha of what was sent (for acknowledged and interrupted uploads alike).
    let sent = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let base = srv.url.clone();
    let upload = {
        let (http, sent, acked) = (http.clone(), sent.clone(), acked.clone());
        move |name: String, bytes: Vec<u8>| {
            let (http, sent, acked) = (http.clone(), sent.clone(), acked.clone());
            let url = format!("{base}/storage/v1/object/killb/{name}");
            async move {
                sent.lock().unwrap().insert(name.clone(), sha(&bytes));
                let h = with(&[("content-type", "application/octet-stream")]);
                match http.send("POST", &url, &h, bytes).await {
                    Ok(r) if r.status == 200 => {
                        acked.lock().unwrap().push(name);
                        true
                    }
                    Ok(r) => panic!("upload {name}: {}", r.status),
                    Err(_) => false,
                }
            }
        }
    };
    for i in 0..4 {
        assert!(upload(format!("first-{i}"), random(1_500_000 + i * 1000)).await);
    }
    // Cut off mid-body: one still in memory (< 1 MiB), one already streaming to a file.
    let mut cut = vec![];
    for (name, total, part) in [
        ("cut-small", 800_000, 300_000),
        ("cut-big", 4_000_000, 2_500_000),
    ] {
        let bytes = random(total);
        sent.lock().unwrap().insert(name.into(), sha(&bytes));
        let head = format!(
            "POST /storage/v1/object/killb/{name} HTTP/1.1\r\nhost: x\r\napikey: {SERVICE_KEY}\r\n\
             authorization: {AUTH}\r\ncontent-type: application/octet-stream\r\n\
             content-length: {total}\r\n\r\n"
        );
        cut.push(send_partial(srv.port, head, &bytes[..part]).await);
    }
    // Wait (bounded) until the big one's bytes reach the file store.
    let objects = srv.dir.join("storage").join("objects");
    let start = Instant::now();
    while common::files_under(&objects).len() < 5 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Uploaders running while the process dies.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![];
    for t in 0..4 {
        let stop = stop.clone();
        let upload = upload.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if !upload(format!("run-{t}-{i}"), random(1_200_000 + t * 777)).await {
                    break;
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    srv.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    drop(cut);
    let sent = sent.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();

    let srv = restart(&mut srv).await;
    for name in &acked {
        let r = http
            .get(
                &format!("{}/storage/v1/object/killb/{name}", srv.url),
                &service(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "acknowledged {name} is gone");
        assert_eq!(Some(&sha(&r.body)), sent.get(name), "{name} changed");
    }
    let r = http
        .send(
            "POST",
            &format!("{}/storage/v1/object/list/killb", srv.url),
            &with(&[("content-type", "application/json")]),
            r#"{"prefix":"","limit":1000}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    for o in r.json().as_array().unwrap() {
        let name = o["name"].as_str().unwrap();
        let r = http
            .get(
                &format!("{}/storage/v1/object/killb/{name}", srv.url),
                &service(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "listed {name} does not download");
        assert_eq!(
            Some(&sha(&r.body)),
            sent.get(name),
            "listed {name} is partial"
        );
    }
    for name in ["cut-small", "cut-big"] {
        let r = http
            .get(
                &format!("{}/storage/v1/object/killb/{name}", srv.url),
                &service(),
            )
            .await
            .unwrap();
        assert_ne!(r.status, 200, "the cut-off upload {name} is visible");
    }
    check_store(&srv, &sent).await;
}

/// Create a resumable upload of `len` bytes at `name` in bucket `killb`; its location.
async fn tus_create(http: &Http, url: &str, name: &str, len: &str) -> String {
    let meta = tus_metadata("killb", name);
    let r = http
        .send(
            "POST",
            &format!("{url}/storage/v1/upload/resumable"),
            &with(&[
                ("tus-resumable", "1.0.0"),
                ("upload-length", len),
                ("upload-metadata", &meta),
            ]),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.header("location").unwrap().to_string()
}

async fn tus_patch(
    http: &Http,
    url: &str,
    location: &str,
    offset: usize,
    bytes: Vec<u8>,
) -> Result<common::spawned::Response, common::spawned::Error> {
    let off = offset.to_string();
    http.send(
        "PATCH",
        &format!("{url}{location}"),
        &with(&[
            ("tus-resumable", "1.0.0"),
            ("upload-offset", &off),
            ("content-type", "application/offset+octet-stream"),
        ]),
        bytes,
    )
    .await
}

fn tus_metadata(bucket: &str, name: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!("bucketName {},objectName {}", b(bucket), b(name))
}

/// A TUS upload killed during its second PATCH: after the restart HEAD reports the offset
/// of the last acknowledged PATCH, the object does not exist yet, and resuming from there
/// completes it with exactly the bytes sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_resumable_upload_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Spawned::start(dir.path(), &Opts::default()).await;
    let http = Http::new(None);
    let r = http
        .send(
            "POST",
            &format!("{}/storage/v1/bucket", srv.url),
            &with(&[("content-type", "application/json")]),
            r#"{"id":"killb","name":"killb"}"#,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let data = random(3 * 1024 * 1024 + 123);
    let chunk = 1024 * 1024;
    let len = data.len().to_string();
    let location = tus_create(&http, &srv.url, "tus/big.bin", &len).await;
    let r = tus_patch(&http, &srv.url, &location, 0, data[..chunk].to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("upload-offset"), Some(chunk.to_string().as_str()));
    // The second PATCH is cut off after 700 KB, and the process killed under it.
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nhost: x\r\napikey: {SERVICE_KEY}\r\nauthorization: {AUTH}\r\n\
         tus-resumable: 1.0.0\r\nupload-offset: {chunk}\r\n\
         content-type: application/offset+octet-stream\r\ncontent-length: {chunk}\r\n\r\n"
    );
    let cut = send_partial(srv.port, head, &data[chunk..chunk + 700_000]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut srv = restart(&mut srv).await;
    drop(cut);

    let r = http
        .send(
            "HEAD",
            &format!("{}{location}", srv.url),
            &with(&[("tus-resumable", "1.0.0")]),
            Vec::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("upload-offset"),
        Some(chunk.to_string().as_str()),
        "the offset is the last acknowledged one"
    );
    let r = http
        .get(
            &format!("{}/storage/v1/object/killb/tus/big.bin", srv.url),
            &service(),
        )
        .await
        .unwrap();
    assert_ne!(r.status, 200, "an unfinished upload is visible");
    assert!(
        common::files_under(&srv.dir.join("storage").join("objects")).is_empty(),
        "object bytes of an unfinished upload"
    );
    // Resume from the reported offset, in two PATCHes.
    let mut offset = chunk;
    while offset < data.len() {
        let end = (offset + 2 * chunk).min(data.len());
        let r = tus_patch(
            &http,
            &srv.url,
            &location,
            offset,
            data[offset..end].to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        offset = end;
        assert_eq!(r.header("upload-offset"), Some(offset.to_string().as_str()));
    }
    let r = http
        .get(
            &format!("{}/storage/v1/object/killb/tus/big.bin", srv.url),
            &service(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        sha(&r.body),
        sha(&data),
        "the resumed upload is not what was sent"
    );
    let mut sent = BTreeMap::new();
    sent.insert("tus/big.bin".to_string(), sha(&data));
    check_store(&srv, &sent).await;
    // The parts are cleaned up once the upload is done.
    let start = Instant::now();
    while !common::files_under(&srv.dir.join("storage").join("uploads")).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "parts left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Killed while the last PATCH assembles the object (its bytes are being written):
    // the upload is still resumable at the offset before that PATCH, not "complete" with
    // no object. Before: the offset was committed first, so HEAD said complete (a client
    // stops there) while the object never came.
    let data = random(24 * 1024 * 1024 + 77);
    let part = 8 * 1024 * 1024;
    let len = data.len().to_string();
    let location = tus_create(&http, &srv.url, "tus/final.bin", &len).await;
    for offset in [0, part] {
        let r = tus_patch(
            &http,
            &srv.url,
            &location,
            offset,
            data[offset..offset + part].to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 204);
    }
    let last = {
        let (http, url, location) = (http.clone(), srv.url.clone(), location.clone());
        let bytes = data[2 * part..].to_vec();
        tokio::spawn(async move { tus_patch(&http, &url, &location, 2 * part, bytes).await })
    };
    let objects = srv.dir.join("storage").join("objects");
    let already: BTreeSet<_> = common::files_under(&objects).into_iter().collect();
    let start = Instant::now();
    let mut caught = false;
    while start.elapsed() < Duration::from_secs(20) && !last.is_finished() {
        if common::files_under(&objects)
            .iter()
            .any(|f| !already.contains(f))
        {
            caught = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut srv = restart(&mut srv).await;
    let _ = last.await;
    let r = http
        .send(
            "HEAD",
            &format!("{}{location}", srv.url),
            &with(&[("tus-resumable", "1.0.0")]),
            Vec::new(),
        )
        .await
        .unwrap();
    let object = http
        .get(
            &format!("{}/storage/v1/object/killb/tus/final.bin", srv.url),
            &service(),
        )
        .await
        .unwrap();
    if object.status == 200 {
        // The finish committed before the kill: whole, and the upload is gone.
        assert!(!caught || r.status == 404, "{}", r.status);
        assert_eq!(sha(&object.body), sha(&data));
    } else {
        assert_eq!(r.status, 200, "the interrupted upload is gone");
        let offset: usize = r.header("upload-offset").unwrap().parse().unwrap();
        assert!(
            offset < data.len(),
            "HEAD says complete but the object does not exist"
        );
        assert_eq!(offset, 2 * part);
        let r = tus_patch(&http, &srv.url, &location, offset, data[offset..].to_vec())
            .await
            .unwrap();
        assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
        let object = http
            .get(
                &format!("{}/storage/v1/object/killb/tus/final.bin", srv.url),
                &service(),
            )
            .await
            .unwrap();
        assert_eq!(object.status, 200);
        assert_eq!(sha(&object.body), sha(&data));
    }
    assert!(
        caught,
        "the kill did not land during the assembly (test timing)"
    );
    assert!(srv.stop(Duration::from_secs(30)));
}
