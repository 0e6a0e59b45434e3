//! Auth throughput, next to the raw bcrypt rate that bounds it (not run in CI):
//!
//!     cargo bench --bench auth            # OXIBASE_BENCH_SECS=5 OXIBASE_BENCH_CONCURRENCY=8
//!
//! Starts oxibase in-process on an embedded PostgreSQL (the integration-test harness),
//! creates users through the API, then drives password sign-ins and refreshes over HTTP.

#[path = "../../tests/it/common/mod.rs"]
mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestServer, ANON_KEY};
use serde_json::{json, Value};

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

async fn post(t: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = t
        .http
        .send(
            "POST",
            &format!("{}/auth/v1/{path}", t.url),
            &[("apikey", ANON_KEY), ("content-type", "application/json")],
            body.to_string(),
        )
        .await;
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

async fn sign_in(t: &TestServer, email: &str) -> (u16, Value) {
    post(
        t,
        "token?grant_type=password",
        json!({"email": email, "password": "bench-password"}),
    )
    .await
}

/// One worker per user until `secs` have passed; each returns how many operations it did.
async fn measure<F, Fut>(label: &str, secs: u64, t: &Arc<TestServer>, emails: &[String], worker: F)
where
    F: Fn(Arc<TestServer>, String, Instant) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let end = Instant::now() + Duration::from_secs(secs);
    let hs: Vec<_> = emails
        .iter()
        .map(|e| tokio::spawn(worker(t.clone(), e.clone(), end)))
        .collect();
    let mut n = 0;
    for h in hs {
        n += h.await.unwrap();
    }
    println!("{label}: {:.1}/s", n as f64 / secs as f64);
}

fn bcrypt_rate(cost: u32, threads: usize, secs: u64) -> f64 {
    let n = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let n = n.clone();
            std::thread::spawn(move || {
                while Instant::now() < end {
                    bcrypt::hash("correct horse battery", cost).unwrap();
                    n.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    n.load(Ordering::Relaxed) as f64 / secs as f64
}

#[tokio::main]
async fn main() {
    let secs = env_num("OXIBASE_BENCH_SECS", 5);
    let conc = env_num("OXIBASE_BENCH_CONCURRENCY", 8) as usize;
    let cost = env_num("OXIBASE_BENCH_COST", 10) as u32;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("bcrypt cost {cost}, {cores} cores, {secs}s per measurement, concurrency {conc}");
    println!(
        "raw bcrypt: {:.1} hashes/s on 1 thread, {:.1} hashes/s on {cores} threads",
        bcrypt_rate(cost, 1, secs),
        bcrypt_rate(cost, cores, secs)
    );

    let t = Arc::new(
        TestServer::start_with(move |c| {
            c.auth.password_hash_cost = cost;
            c.auth.rate_limit_per_hour = u32::MAX;
            c.auth.refresh_rate_limit_per_hour = u32::MAX;
            c.db_pool_size = 16;
        })
        .await,
    );
    let mut emails = vec![];
    for i in 0..conc {
        let e = format!("bench{i}@example.com");
        let (s, v) = post(
            &t,
            "signup",
            json!({"email": e, "password": "bench-password"}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        emails.push(e);
    }

    // Password sign-ins.
    measure(
        "password sign-ins",
        secs,
        &t,
        &emails,
        |t, e, end| async move {
            let mut n = 0;
            while Instant::now() < end {
                let (s, _) = sign_in(&t, &e).await;
                assert_eq!(s, 200);
                n += 1;
            }
            n
        },
    )
    .await;

    // Refreshes: each worker rotates its own session's token.
    measure("refreshes", secs, &t, &emails, |t, e, end| async move {
        let (_, v) = sign_in(&t, &e).await;
        let mut rt = v["refresh_token"].as_str().unwrap().to_string();
        let mut n = 0;
        while Instant::now() < end {
            let (s, v) = post(
                &t,
                "token?grant_type=refresh_token",
                json!({"refresh_token": rt}),
            )
            .await;
            assert_eq!(s, 200, "{v}");
            rt = v["refresh_token"].as_str().unwrap().to_string();
            n += 1;
        }
        n
    })
    .await;
}
