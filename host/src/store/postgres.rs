//! The Postgres backend: production, and the multi-node path (several hosts share one
//! database).
//!
//! An audit append runs in a transaction that first takes a transaction-scoped advisory
//! lock on the chain (`pg_advisory_xact_lock(hashtextextended(<tenant, agent,
//! connection>, 0))`), then reads the chain head and inserts the next entry: appends to one
//! chain queue behind each other across every host, appends to different chains do not
//! (save for a 64-bit hash collision, which only serializes two chains).
//!
//! Row-level security is the second wall behind [`TenantScope`] (migration 0003): the
//! pool's connections run as the role `arp_app`, which owns no table, and every
//! tenant-scoped operation runs in a transaction that first sets `arp.tenant_id`; the
//! policies then show and accept only that tenant's rows, so a query that forgot its
//! `tenant_id = $1` would still see nothing of another tenant. The cost is a `BEGIN`, a
//! `set_config` and a `COMMIT` around each operation.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres};

use super::{StoreError, StoreResult, TenantScope, sql};

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
        // Migrations run as the connecting user (who owns the tables); the pool then runs
        // as arp_app, which owns nothing, so row-level security applies to it.
        let mut owner = tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Unavailable(sqlx::Error::PoolTimedOut))??;
        sqlx::migrate!("../migrations/postgres")
            .run(&mut owner)
            .await
            .map_err(StoreError::Migrate)?;
        owner.close().await?;
        let pool = PgPoolOptions::new()
            .after_connect(|connection, _| {
                Box::pin(async move {
                    sqlx::query(sql::SET_APP_ROLE)
                        .execute(&mut *connection)
                        .await?;
                    Ok(())
                })
            })
            // sqlx pings every connection it hands out by default: a round trip per query.
            // A dead connection fails its query instead (answered 503) and is discarded.
            .test_before_acquire(false)
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A transaction of the tenant that will write: an ordinary one (locks are taken per
    /// row or chain), with the tenant set for row-level security.
    async fn begin_write(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        self.begin_scoped(scope).await
    }

    /// A transaction of the tenant: `arp.tenant_id` is set for its duration, and the
    /// row-level security policies show and accept only that tenant's rows.
    async fn begin_scoped(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::SET_TENANT)
            .bind(scope.tenant_id())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A transaction of a host-wide read: the policies let it read every tenant's routing
    /// rows (agents by DID, API keys by hash, the queue), never write.
    async fn begin_host(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::SET_HOST_SCOPE).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// A transaction of host-wide queue upkeep: the policies let it read and update
    /// messages of every tenant, and nothing else.
    async fn begin_maintenance(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::SET_MAINTENANCE_SCOPE)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
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
    /// `NOTIFY` every host listening on this database when `tx` commits.
    async fn notify_in_transaction(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        event: &str,
    ) -> StoreResult<()> {
        sqlx::query(sql::NOTIFY_HOSTS)
            .bind(HOST_EVENTS_CHANNEL)
            .bind(event)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// `NOTIFY` every host listening on this database.
    async fn notify_hosts_impl(&self, event: &str) -> StoreResult<()> {
        sqlx::query(sql::NOTIFY_HOSTS)
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
