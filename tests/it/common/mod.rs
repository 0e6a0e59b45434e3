//! Integration-test harness: one embedded PostgreSQL per test binary (initdb into a temp
//! dir, fsync off), migrated once into a template database; each test gets its own
//! database copied from the template and its own oxibase on 127.0.0.1:0.
#![allow(dead_code)]

pub mod spawned;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use oxibase::db::embedded_pg::EmbeddedPg;
use oxibase::{Config, Server};

pub const ANON_KEY: &str = oxibase::cli::WELL_KNOWN_ANON;
pub const SERVICE_KEY: &str = oxibase::cli::WELL_KNOWN_SERVICE;

pub struct SharedPg {
    pub port: u16,
}

static PG: OnceLock<SharedPg> = OnceLock::new();

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn shared_pg() -> &'static SharedPg {
    PG.get_or_init(|| {
        // Leftovers of earlier test binaries whose process is gone.
        for e in std::fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("oxibase-it-") {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("oxibase-it-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let (tx, rx) = std::sync::mpsc::channel();
        // This thread starts the postmaster and then parks forever: the postmaster is told
        // to shut down when it exits, i.e. when the test binary does.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let mut pg =
                    EmbeddedPg::new(&dir, port, None, false).expect("PostgreSQL 15+ installed");
                pg.set_die_with_parent(true);
                pg.init().expect("initdb");
                pg.start().await.expect("postgres starts");
                let url = pg.superuser_url();
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                client
                    .batch_execute("create database oxibase_template")
                    .await
                    .unwrap();
                drop(client);
                let t_url =
                    format!("postgres://postgres:postgres@127.0.0.1:{port}/oxibase_template");
                let (mut client, conn) = tokio_postgres::connect(&t_url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let h = tokio::spawn(conn);
                oxibase::db::migrate::run(&mut client, true, &|_| {})
                    .await
                    .expect("migrations apply");
                drop(client);
                let _ = h.await;
                tx.send(()).unwrap();
                std::mem::forget(pg);
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("shared PostgreSQL started");
        SharedPg { port }
    })
}

pub struct TestServer {
    pub server: Server,
    pub url: String,
    /// Superuser URL of this test's own database.
    pub db_url: String,
    pub data_dir: tempfile::TempDir,
    pub http: Client,
}

pub type Client = reqwest_like::Client;

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let pg = shared_pg();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = format!(
            "postgres://postgres:postgres@127.0.0.1:{}/postgres",
            pg.port
        );
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap();
        let h = tokio::spawn(conn);
        // Copies of one template may not be made concurrently while it is connected to; retry.
        for attempt in 0.. {
            match client
                .batch_execute(&format!("create database {name} template oxibase_template"))
                .await
            {
                Ok(()) => break,
                Err(e) if attempt < 50 => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create database: {e}"),
            }
        }
        drop(client);
        let _ = h.await;
        let db_url = format!("postgres://postgres:postgres@127.0.0.1:{}/{name}", pg.port);
        let data_dir = tempfile::tempdir().unwrap();
        let mut cfg = Config {
            port: 0,
            bind: vec!["127.0.0.1".into()],
            data_dir: data_dir.path().to_path_buf(),
            database_url: Some(oxibase::config::Secret(db_url.clone())),
            db_pool_size: 4,
            ..Config::default()
        };
        // One server, many users from 127.0.0.1: the CLI's per-IP limits would refuse them.
        cfg.auth.rate_limit = oxibase::config::AuthRateLimits::generous();
        tweak(&mut cfg);
        let server = Server::start(cfg, Arc::new(|_: &str| {}))
            .await
            .expect("server starts");
        let url = format!("http://127.0.0.1:{}", server.port());
        TestServer {
            server,
            url,
            db_url,
            data_dir,
            http: Client::new(),
        }
    }

    pub async fn sql(&self, q: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query(q, &[]).await.unwrap()
    }

    pub async fn batch(&self, q: &str) {
        let (client, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(q).await.unwrap()
    }

    pub fn path(&self) -> PathBuf {
        self.data_dir.path().to_path_buf()
    }

    /// A new user row in `auth.users` and an access token for it (10 minutes): (id, token).
    pub async fn user(&self) -> (String, String) {
        let id = uuid::Uuid::new_v4().to_string();
        self.batch(&format!(
            "insert into auth.users (id, email, aud, role, created_at) values ('{id}', '{id}@x.test', 'authenticated', 'authenticated', now())"
        ))
        .await;
        let token = self.server.state.keys.jwt.sign_hs256(&serde_json::json!({
            "sub": id, "role": "authenticated", "aud": "authenticated",
            "exp": chrono::Utc::now().timestamp() + 600,
        }));
        (id, token)
    }
}

/// Every file under `dir`, recursively (none when it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A tiny HTTP/1.1 client over hyper, enough for integration tests.
pub mod reqwest_like {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client as HClient;
    use hyper_util::rt::TokioExecutor;

    #[derive(Clone)]
    pub struct Client(HClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>);

    pub struct Response {
        pub status: u16,
        pub headers: http::HeaderMap,
        pub body: Bytes,
    }

    impl Response {
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
        }
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).to_string()
        }
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }
    }

    impl Client {
        pub fn new() -> Client {
            Client(HClient::builder(TokioExecutor::new()).build_http())
        }
        pub async fn send(
            &self,
            method: &str,
            url: &str,
            headers: &[(&str, &str)],
            body: impl Into<Bytes>,
        ) -> Response {
            let mut b = http::Request::builder().method(method).uri(url);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let resp = self
                .0
                .request(b.body(Full::new(body.into())).unwrap())
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Response {
                status,
                headers,
                body,
            }
        }
        pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Response {
            self.send("GET", url, headers, Bytes::new()).await
        }
    }
}

/// Polls `check` every 20 ms until it holds, for work the server finishes in the background
/// (byte deletion after a commit, say): as fast as the server, and never a fixed guess.
/// Panics with `what` if it does not hold within 10 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A new database of the shared cluster copied from the migrated template (as
/// `TestServer::start` makes one), for tests that start several servers on one database.
pub async fn template_db() -> String {
    let port = shared_pg().port;
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    let h = tokio::spawn(conn);
    // Copies of one template may not be made concurrently while it is connected to; retry.
    for attempt in 0.. {
        let q = format!("create database {name} template oxibase_template");
        match client.batch_execute(&q).await {
            Ok(()) => break,
            Err(_) if attempt < 50 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("create database: {e}"),
        }
    }
    drop(client);
    let _ = h.await;
    format!("postgres://postgres:postgres@127.0.0.1:{port}/{name}")
}
