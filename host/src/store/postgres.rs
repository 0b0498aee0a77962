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

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;

use super::{
    Agent, AgentRow, AuditExtra, AuditRow, Connection, ConnectionRow, NewMessage, Plan, Store,
    StoreError, StoreResult, Tenant, TenantRow, TenantScope, chain_key, now_ms, sql, to_i64,
    to_u64,
};
use crate::audit::{AuditEntry, NewAuditEntry};

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
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create_tenant(&self, tenant_id: &str, plan: Plan) -> StoreResult<TenantScope> {
        sqlx::query(sql::INSERT_TENANT)
            .bind(tenant_id)
            .bind(plan.as_str())
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(TenantScope::looked_up(tenant_id.to_owned()))
    }

    async fn tenant_scope(&self, tenant_id: &str) -> StoreResult<TenantScope> {
        let row: Option<TenantRow> = sqlx::query_as(sql::SELECT_TENANT)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| TenantScope::looked_up(row.id))
            .ok_or_else(|| StoreError::NotFound(format!("tenant {tenant_id}")))
    }

    async fn tenant(&self, scope: &TenantScope) -> StoreResult<Tenant> {
        let row: Option<TenantRow> = sqlx::query_as(sql::SELECT_TENANT)
            .bind(scope.tenant_id())
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("tenant {}", scope.tenant_id())))?
            .try_into()
    }

    async fn create_agent(&self, scope: &TenantScope, agent: &Agent) -> StoreResult<()> {
        sqlx::query(sql::INSERT_AGENT)
            .bind(scope.tenant_id())
            .bind(&agent.did)
            .bind(&agent.public_key_multibase)
            .bind(Json(&agent.did_document))
            .bind(Json(&agent.agent_card))
            .bind(Json(&agent.arp_json))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn agent(&self, scope: &TenantScope, did: &str) -> StoreResult<Agent> {
        let row: Option<AgentRow> = sqlx::query_as(sql::SELECT_AGENT)
            .bind(scope.tenant_id())
            .bind(did)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| row.into_scoped().1)
            .ok_or_else(|| StoreError::NotFound(format!("agent {did}")))
    }

    async fn agent_by_did(&self, did: &str) -> StoreResult<(TenantScope, Agent)> {
        let row: Option<AgentRow> = sqlx::query_as(sql::SELECT_AGENT_BY_DID)
            .bind(did)
            .fetch_optional(&self.pool)
            .await?;
        row.map(AgentRow::into_scoped)
            .ok_or_else(|| StoreError::NotFound(format!("agent {did}")))
    }

    async fn create_connection(
        &self,
        scope: &TenantScope,
        connection: &Connection,
    ) -> StoreResult<()> {
        sqlx::query(sql::INSERT_CONNECTION)
            .bind(scope.tenant_id())
            .bind(&connection.connection_id)
            .bind(&connection.agent_did)
            .bind(&connection.peer_did)
            .bind(connection.status.as_str())
            .bind(Json(&connection.token_json))
            .bind(Json(&connection.cedar_policies))
            .bind(Json(&connection.obligations))
            .bind(connection.expires_at_ms)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn connection(
        &self,
        scope: &TenantScope,
        connection_id: &str,
    ) -> StoreResult<Connection> {
        let row: Option<ConnectionRow> = sqlx::query_as(sql::SELECT_CONNECTION)
            .bind(scope.tenant_id())
            .bind(connection_id)
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("connection {connection_id}")))?
            .try_into()
    }

    async fn active_connections_between(
        &self,
        scope: &TenantScope,
        a: &str,
        b: &str,
    ) -> StoreResult<Vec<Connection>> {
        let rows: Vec<ConnectionRow> = sqlx::query_as(sql::SELECT_ACTIVE_BETWEEN)
            .bind(scope.tenant_id())
            .bind(a)
            .bind(b)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Connection::try_from).collect()
    }

    async fn add_revocation(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        kind: &str,
        id: &str,
    ) -> StoreResult<()> {
        sqlx::query(sql::INSERT_REVOCATION)
            .bind(scope.tenant_id())
            .bind(agent_did)
            .bind(kind)
            .bind(id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn is_revoked(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        kind: &str,
        id: &str,
    ) -> StoreResult<bool> {
        let found = sqlx::query(sql::SELECT_REVOCATION)
            .bind(scope.tenant_id())
            .bind(agent_did)
            .bind(kind)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn record_replay(&self, signer_did: &str, msg_id: &str) -> StoreResult<()> {
        sqlx::query(sql::INSERT_REPLAY)
            .bind(signer_did)
            .bind(msg_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn count_usage_if_under(
        &self,
        scope: &TenantScope,
        period: &str,
        cap: Option<u64>,
    ) -> StoreResult<Option<u64>> {
        let cap = match cap {
            Some(0) => return Ok(None),
            Some(cap) => i64::try_from(cap).unwrap_or(i64::MAX),
            None => i64::MAX,
        };
        let used: Option<i64> = sqlx::query_scalar(sql::COUNT_USAGE_IF_UNDER)
            .bind(scope.tenant_id())
            .bind(period)
            .bind(cap)
            .fetch_optional(&self.pool)
            .await?;
        used.map(|used| to_u64(used, "usage")).transpose()
    }

    async fn usage(&self, scope: &TenantScope, period: &str) -> StoreResult<u64> {
        let used: Option<i64> = sqlx::query_scalar(sql::SELECT_USAGE)
            .bind(scope.tenant_id())
            .bind(period)
            .fetch_optional(&self.pool)
            .await?;
        to_u64(used.unwrap_or(0), "usage")
    }

    async fn append_audit(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        connection_id: &str,
        entry: NewAuditEntry,
        extra: AuditExtra,
    ) -> StoreResult<AuditEntry> {
        // The chain's lock first, then the head: no other writer (on any host sharing the
        // database) can append to this chain in between. Released at commit or rollback.
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::LOCK_CHAIN)
            .bind(chain_key(scope, agent_did, connection_id))
            .execute(&mut *tx)
            .await?;
        let head: Option<AuditRow> = sqlx::query_as(sql::SELECT_CHAIN_HEAD)
            .bind(scope.tenant_id())
            .bind(agent_did)
            .bind(connection_id)
            .fetch_optional(&mut *tx)
            .await?;
        let head = head.map(AuditEntry::try_from).transpose()?;
        let next = AuditEntry::next(head.as_ref(), entry)?;
        let fuel_used = extra
            .fuel_used
            .map(|fuel| to_i64(fuel, "fuel_used"))
            .transpose()?;
        sqlx::query(sql::INSERT_AUDIT)
            .bind(scope.tenant_id())
            .bind(agent_did)
            .bind(connection_id)
            .bind(to_i64(next.seq, "seq")?)
            .bind(&next.timestamp)
            .bind(&next.msg_id)
            .bind(next.decision.as_str())
            .bind(Json(&next.policies_fired))
            .bind(Json(&next.obligations))
            .bind(next.spend_delta_cents)
            .bind(&next.reason)
            .bind(&next.prev_hash)
            .bind(&next.self_hash)
            .bind(&extra.policy_digest)
            .bind(fuel_used)
            .bind(&extra.envelope_sha256)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    async fn audit_chain(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        connection_id: &str,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(sql::SELECT_CHAIN)
            .bind(scope.tenant_id())
            .bind(agent_did)
            .bind(connection_id)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(AuditEntry::try_from).collect()
    }

    async fn enqueue_message(&self, scope: &TenantScope, message: &NewMessage) -> StoreResult<()> {
        sqlx::query(sql::INSERT_MESSAGE)
            .bind(scope.tenant_id())
            .bind(&message.id)
            .bind(&message.agent_did)
            .bind(&message.connection_id)
            .bind(&message.msg_id)
            .bind(&message.msg_type)
            .bind(&message.envelope)
            .bind(&message.peer_did)
            .bind(Json(&message.obligations))
            .bind(Json(&message.policies_fired))
            .bind(now_ms())
            .bind(message.expires_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn message_status(&self, scope: &TenantScope, id: &str) -> StoreResult<String> {
        let status: Option<String> = sqlx::query_scalar(sql::SELECT_MESSAGE_STATUS)
            .bind(scope.tenant_id())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        status.ok_or_else(|| StoreError::NotFound(format!("message {id}")))
    }

    async fn put_policy_version(
        &self,
        scope: &TenantScope,
        digest: &str,
        bytes: &[u8],
    ) -> StoreResult<()> {
        sqlx::query(sql::INSERT_POLICY_VERSION)
            .bind(scope.tenant_id())
            .bind(digest)
            .bind(bytes)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn activate_policy(&self, scope: &TenantScope, digest: &str) -> StoreResult<()> {
        let done = sqlx::query(sql::ACTIVATE_POLICY)
            .bind(scope.tenant_id())
            .bind(digest)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("policy version {digest}")));
        }
        Ok(())
    }

    async fn active_policy(&self, scope: &TenantScope) -> StoreResult<Option<(String, Vec<u8>)>> {
        Ok(sqlx::query_as(sql::SELECT_ACTIVE_POLICY)
            .bind(scope.tenant_id())
            .fetch_optional(&self.pool)
            .await?)
    }
}
