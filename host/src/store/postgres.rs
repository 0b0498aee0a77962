//! The Postgres backend: production, and the multi-node path (several hosts share one
//! database).
//!
//! An audit append runs in a transaction that first takes a transaction-scoped advisory
//! lock on the chain (`pg_advisory_xact_lock(hashtextextended(<tenant, agent,
//! connection>, 0))`), then reads the chain head and inserts the next entry: appends to one
//! chain queue behind each other across every host, appends to different chains do not
//! (save for a 64-bit hash collision, which only serializes two chains).

use std::str::FromStr;
use std::time::Duration;

use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use super::{StoreError, StoreResult, sql};

/// How long to wait for a connection (or for the server to answer a connect) before the
/// store is `Unavailable`: a request should fail fast with 503 rather than hang.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 16;

/// A store in a Postgres database.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://...`) and runs the migrations.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| StoreError::InvalidLocation(url.to_owned()))?;
        let pool = PgPoolOptions::new()
            // sqlx pings every connection it hands out by default: a round trip per query.
            // A dead connection fails its query instead (answered 503) and is discarded.
            .test_before_acquire(false)
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/postgres")
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        Ok(Self { pool })
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction that will write: an ordinary one (locks are taken per row or chain).
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    /// Takes the chain's advisory lock, held until the transaction ends: appends to one
    /// chain (on any host sharing the database) queue behind each other here.
    async fn lock_chain(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        key: &str,
    ) -> StoreResult<()> {
        sqlx::query(sql::LOCK_CHAIN)
            .bind(key)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The channel of host-to-host events (see [`crate::delivery`]).
const HOST_EVENTS_CHANNEL: &str = "arp_host_events";

impl PostgresStore {
    /// `NOTIFY` every host listening on this database.
    async fn notify_hosts_impl(&self, event: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(HOST_EVENTS_CHANNEL)
            .bind(event)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn host_events_impl(&self) -> StoreResult<Option<HostEvents>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(HOST_EVENTS_CHANNEL).await?;
        Ok(Some(HostEvents { listener }))
    }
}

/// Events from every host sharing the database (its own included), in the order
/// Postgres delivers them.
#[derive(Debug)]
pub struct HostEvents {
    listener: PgListener,
}

impl HostEvents {
    /// The next event. After an error the listener reconnects on the next call, and
    /// events sent meanwhile are lost: the caller must catch up from the tables.
    pub async fn next(&mut self) -> StoreResult<String> {
        let notification = self.listener.recv().await?;
        Ok(notification.payload().to_owned())
    }
}

super::store_impl!(PostgresStore, sqlx::Postgres, "postgres");
