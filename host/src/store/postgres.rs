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

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres};

use super::{ChainHeadRow, StoreError, StoreResult, TenantScope, heads_by_chain, sql};
use crate::audit::AuditEntry;

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

    /// A transaction on a live connection. An idle connection the server ended (a
    /// restart, an administrator) fails its first statement; a failed `BEGIN` has done
    /// nothing, so it is retried on another connection (up to the pool's size) rather than
    /// failing one request per dead connection once the database is back.
    async fn begin(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let mut retries = 0;
        loop {
            match self.pool.begin().await {
                Err(error) if retries < MAX_CONNECTIONS && ended_by_server(&error) => {
                    retries += 1;
                }
                result => return Ok(result?),
            }
        }
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
        let mut tx = self.begin().await?;
        sqlx::query(sql::SET_TENANT)
            .bind(scope.tenant_id())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A transaction of a host-wide read: the policies let it read every tenant's routing
    /// rows (agents by DID, API keys by hash, the queue), never write.
    async fn begin_host(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.begin().await?;
        sqlx::query(sql::SET_HOST_SCOPE).execute(&mut *tx).await?;
        Ok(tx)
    }

    /// A transaction of host-wide queue upkeep: the policies let it read and update
    /// messages of every tenant, and nothing else.
    async fn begin_maintenance(&self) -> StoreResult<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.begin().await?;
        sqlx::query(sql::SET_MAINTENANCE_SCOPE)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// The last entry of each chain, in one statement.
    async fn chain_heads(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        scope: &TenantScope,
        chains: &[(&str, &str)],
    ) -> StoreResult<HashMap<(String, String), AuditEntry>> {
        let (agents, connections): (Vec<&str>, Vec<&str>) = chains.iter().copied().unzip();
        let rows: Vec<ChainHeadRow> = sqlx::query_as(sql::SELECT_CHAIN_HEADS)
            .bind(scope.tenant_id())
            .bind(agents)
            .bind(connections)
            .fetch_all(&mut **tx)
            .await?;
        heads_by_chain(rows)
    }

    /// Takes the chains' advisory locks, held until the transaction ends: appends to one
    /// chain (on any host sharing the database) queue behind each other here.
    async fn lock_chains(
        tx: &mut sqlx::Transaction<'static, Postgres>,
        keys: &[String],
    ) -> StoreResult<()> {
        if !keys.is_empty() {
            sqlx::query(sql::LOCK_CHAINS)
                .bind(keys)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// The connection was lost or ended by the server (admin shutdown, crash, restart).
fn ended_by_server(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
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
