//! A fresh Postgres database per test on 127.0.0.1:5432 (user `postgres`), or on the
//! server of `ARP_TEST_POSTGRES_URL`. Postgres being unreachable fails the test: never a
//! skip.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{AssertSqlSafe, Connection as _, Executor as _, PgConnection};

/// The server the Postgres tests use (without a database name).
pub fn postgres_server() -> String {
    std::env::var("ARP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Runs one admin statement against the `postgres` database.
pub async fn admin(sql: String) {
    let server = postgres_server();
    let mut admin = PgConnection::connect(&format!("{server}/postgres"))
        .await
        .unwrap_or_else(|error| panic!("Postgres at {server} is required: {error}"));
    admin.execute(AssertSqlSafe(sql)).await.unwrap();
    admin.close().await.unwrap();
}

/// A fresh Postgres database, dropped when this is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "arp_test_{}_{nanos}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        admin(format!("CREATE DATABASE \"{name}\"")).await;
        let url = format!("{}/{name}", postgres_server());
        Self { name, url }
    }
}

impl Drop for TestDatabase {
    /// Drops the database even when the test failed (on its own thread and runtime, as
    /// `drop` cannot await). `WITH (FORCE)` ends the store's open connections.
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(admin(sql));
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop test database {}", self.name);
        }
    }
}
