//! The built `oxibase` binary as a child process (its own embedded PostgreSQL, a temp data
//! dir, free ports), for tests that need what an in-process server cannot give: a low
//! descriptor limit, a `kill -9`, a restart on the same data dir. Mirrors
//! compat-tests/lib/server.mjs.
#![allow(unsafe_code)] // pre_exec(setrlimit) and kill(2) on our own children

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HClient;
use hyper_util::rt::TokioExecutor;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Spawned {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    pub db_port: u16,
    pub dir: PathBuf,
}

/// How to start the binary.
#[derive(Clone, Default)]
pub struct Opts {
    /// Extra config file text.
    pub toml: String,
    /// Soft and hard RLIMIT_NOFILE of the child.
    pub nofile: Option<u64>,
    /// More environment variables for the child (e.g. AWS_* for an S3 target).
    pub env: Vec<(String, String)>,
}

impl Spawned {
    /// A new temp data dir (kept by the caller's `TempDir`) and free ports.
    pub async fn start(dir: &Path, opts: &Opts) -> Spawned {
        Self::start_on(dir, free_port(), free_port(), opts).await
    }

    /// Start on `dir` with these ports and wait (bounded) until /health answers 200.
    pub async fn start_on(dir: &Path, port: u16, db_port: u16, opts: &Opts) -> Spawned {
        use std::os::unix::fs::PermissionsExt;
        // The postgres system user must enter it when we are root.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = dir.join("test.toml");
        std::fs::write(
            &config,
            format!("db_fsync = false\nlog = \"info\"\n{}\n", opts.toml),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("oxibase.out"))
            .unwrap();
        // OXIBASE_BIN: another build (e.g. an older one, to see a test fail without a fix).
        let bin = std::env::var_os("OXIBASE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_oxibase")));
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env("OXIBASE_PORT", port.to_string())
            .env("OXIBASE_DB_PORT", db_port.to_string())
            .env("OXIBASE_DATA_DIR", dir)
            .env_remove("OXIBASE_CONFIG")
            .env_remove("OXIBASE_DATABASE_URL")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(n) = opts.nofile {
            // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("oxibase binary runs");
        let mut s = Spawned {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            port,
            db_port,
            dir: dir.to_path_buf(),
        };
        let client = Http::new(None);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("oxibase exited early ({status}):\n{}", s.logs());
            }
            if let Ok(r) = client.get(&format!("{}/health", s.url), &[]).await {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "oxibase not healthy after 120 s:\n{}",
                s.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        s
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("oxibase.out")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9` of oxibase alone: its PostgreSQL stays up, as after a real crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded); returns whether it exited successfully in time.
    pub fn stop(&mut self, within: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The superuser URL of the embedded database.
    pub fn db_url(&self) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/postgres",
            self.db_port
        )
    }

    pub async fn batch(&self, q: &str) {
        let (client, conn) = tokio_postgres::connect(&self.db_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(q).await.unwrap()
    }

    pub async fn sql(&self, q: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(&self.db_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.query(q, &[]).await.unwrap()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill9();
        // A killed oxibase leaves its postmaster: stop it too.
        if let Some(pid) = std::fs::read_to_string(self.dir.join("pg").join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
    }
}

/// A fallible HTTP/1.1 client, optionally bound to a local address (127.0.0.2 is another
/// client IP on Linux's loopback).
#[derive(Clone)]
pub struct Http(HClient<HttpConnector, Full<Bytes>>);

/// The harness's response type: status, headers, body and their helpers.
pub use super::reqwest_like::Response;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl Http {
    pub fn new(local: Option<std::net::IpAddr>) -> Http {
        let mut c = HttpConnector::new();
        c.set_local_address(local);
        Http(
            HClient::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(c),
        )
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response, Error> {
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.0.request(b.body(Full::new(body.into()))?).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, Error> {
        self.send("GET", url, headers, Bytes::new()).await
    }
}
