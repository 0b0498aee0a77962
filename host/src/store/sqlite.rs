//! The SQLite backend: the embedded default, one database file (WAL) in a data directory.
//!
//! Writers are serialized by SQLite itself: an audit append runs in a `BEGIN IMMEDIATE`
//! transaction, which takes the database's write lock before it reads the chain head, so
//! two appends (from this process or another) never read the same head. Within this
//! process such transactions take turns on one writer connection, in arrival order; a
//! writer of another process is waited for by SQLite, both bounded by [`BUSY_TIMEOUT`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::{ChainHeadRow, StoreError, StoreResult, TenantScope, heads_by_chain, sql};
use crate::audit::AuditEntry;

/// How long a writer waits for another writer before failing with `Unavailable`: long
/// enough to ride out a burst of appends, short enough that a wedged writer shows.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections in the pool. WAL lets readers run beside the one writer; more connections
/// than cores buys nothing.
const MAX_CONNECTIONS: u32 = 8;

/// File name used when the location is a directory.
pub const DEFAULT_FILE_NAME: &str = "arp-host.sqlite3";

/// A store in one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for the transactions of [`Self::begin_write`]: writers wait for it
    /// in turn, instead of in SQLite's busy handler, which sleeps in steps of up to 100 ms.
    writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `location`: a `sqlite:` URL, a file
    /// path, or a directory (then [`DEFAULT_FILE_NAME`] in it), and runs the migrations.
    pub async fn open(location: &str) -> StoreResult<Self> {
        let options = if location.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(location)
                .map_err(|_| StoreError::InvalidLocation(location.to_owned()))?
        } else {
            let path = database_path(Path::new(location));
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|error| StoreError::Unavailable(sqlx::Error::Io(error)))?;
            }
            SqliteConnectOptions::new().filename(path)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool_of = |connections| {
            SqlitePoolOptions::new()
                // sqlx pings every connection it hands out by default: a round trip per
                // query. A dead connection fails its query instead (answered 503) and is
                // discarded.
                .test_before_acquire(false)
                .max_connections(connections)
                .acquire_timeout(BUSY_TIMEOUT)
        };
        let pool = pool_of(MAX_CONNECTIONS)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&pool)
            .await
            .map_err(StoreError::Migrate)?;
        let writer = pool_of(1).connect_with(options).await?;
        Ok(Self { pool, writer })
    }

    /// The pool, for tests and tools.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction that will write: `BEGIN IMMEDIATE` takes the database's write lock
    /// before anything is read, so every read in it sees the latest committed state.
    async fn begin_write(
        &self,
        _scope: &TenantScope,
    ) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// A transaction for one tenant-scoped operation (SQLite has no row-level security:
    /// the scope is in every query's `WHERE`).
    async fn begin_scoped(
        &self,
        _scope: &TenantScope,
    ) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction for a host-wide read.
    async fn begin_host(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction for host-wide queue upkeep.
    async fn begin_maintenance(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.pool.begin().await?)
    }

    /// The last entry of each chain (a query per chain: SQLite runs in this process).
    async fn chain_heads(
        tx: &mut sqlx::Transaction<'static, Sqlite>,
        scope: &TenantScope,
        chains: &[(&str, &str)],
    ) -> StoreResult<HashMap<(String, String), AuditEntry>> {
        let mut rows = Vec::with_capacity(chains.len());
        for (agent_did, connection_id) in chains {
            let head: Option<ChainHeadRow> = sqlx::query_as(sql::SELECT_CHAIN_HEAD)
                .bind(scope.tenant_id())
                .bind(agent_did)
                .bind(connection_id)
                .fetch_optional(&mut **tx)
                .await?;
            rows.extend(head);
        }
        heads_by_chain(rows)
    }

    /// Nothing to do: the write lock of [`Self::begin_write`] covers every chain.
    async fn lock_chains(
        _tx: &mut sqlx::Transaction<'static, Sqlite>,
        _keys: &[String],
    ) -> StoreResult<()> {
        Ok(())
    }
}

impl SqliteStore {
    /// Nothing to tell: one host owns a SQLite file.
    async fn notify_in_transaction(
        _tx: &mut sqlx::Transaction<'static, Sqlite>,
        _event: &str,
    ) -> StoreResult<()> {
        Ok(())
    }

    /// Nothing to tell: one host owns a SQLite file.
    async fn notify_hosts_impl(&self, _event: &str) -> StoreResult<()> {
        Ok(())
    }

    async fn host_events_impl(&self) -> StoreResult<Option<super::postgres::HostEvents>> {
        Ok(None)
    }
}

super::store_impl!(SqliteStore, sqlx::Sqlite, "sqlite");

fn database_path(location: &Path) -> PathBuf {
    if location.is_dir() {
        location.join(DEFAULT_FILE_NAME)
    } else {
        location.to_owned()
    }
}
