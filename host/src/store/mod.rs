//! The store: tenants, agents, connections, the replay guard, the message queue, the audit
//! chains, usage counters and policy versions, behind one [`Store`] trait with two sqlx
//! backends: [`sqlite`] (the embedded default, one file in a data directory, WAL) and
//! [`postgres`] (production; several hosts may share one database).
//!
//! Where to start reading: [`open`] picks the backend from the location and runs the
//! embedded migrations (`migrations/<backend>/`); [`Store`] lists every operation. Every
//! tenant-owned operation takes a [`TenantScope`], which only the store hands out (after
//! looking the tenant up), so a tenant id read from a request cannot be used by accident.
//!
//! Queries are checked at run time (`sqlx::query`), not at compile time: no database is
//! needed to build. Times are epoch milliseconds (UTC).

pub mod postgres;
pub mod sqlite;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;

use crate::audit::{AuditDecision, AuditEntry, AuditError, NewAuditEntry};
use crate::pdp::Obligation;

/// What a store operation returns.
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is not answering (the server answers 503
    /// `store_unavailable`).
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The row already exists (a duplicate key: a replayed message, a DID taken, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// No such row.
    #[error("not found: {0}")]
    NotFound(String),
    /// The location names no backend (neither `postgres://` nor `sqlite:` / a path).
    #[error("invalid store location {0:?}")]
    InvalidLocation(String),
    /// The embedded migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A stored value does not decode to its domain type.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// An audit entry could not be built.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            sqlx::Error::RowNotFound => Self::NotFound("row".into()),
            sqlx::Error::Migrate(error) => Self::Migrate(*error),
            sqlx::Error::Database(ref db) => {
                if db.is_unique_violation() {
                    return Self::Conflict(db.message().to_owned());
                }
                let unavailable = db.code().is_some_and(|code| {
                    // SQLite: BUSY, LOCKED, CANTOPEN. Postgres: connection exceptions (08),
                    // shutdown / cannot connect now (57P0x), too many connections, no
                    // such database.
                    matches!(code.as_ref(), "5" | "6" | "14" | "53300" | "3D000")
                        || code.starts_with("08")
                        || code.starts_with("57P")
                });
                if unavailable {
                    Self::Unavailable(error)
                } else {
                    Self::Database(error)
                }
            }
            other => Self::Database(other),
        }
    }
}

/// A tenant's plan: what the monthly inbound quota is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Plan {
    /// 1000 inbound messages a month.
    Free,
    /// 10000 inbound messages a month.
    Pro,
    /// Unlimited.
    Team,
    /// Unlimited.
    Internal,
}

impl Plan {
    /// The stored form (`free`, `pro`, `team`, `internal`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Team => "team",
            Self::Internal => "internal",
        }
    }

    /// The plan named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "free" => Some(Self::Free),
            "pro" => Some(Self::Pro),
            "team" => Some(Self::Team),
            "internal" => Some(Self::Internal),
            _ => None,
        }
    }

    /// Inbound messages allowed per UTC month, `None` for unlimited (ARP-PROTOCOL §2).
    pub fn monthly_cap(self) -> Option<u64> {
        match self {
            Self::Free => Some(1000),
            Self::Pro => Some(10_000),
            Self::Team | Self::Internal => None,
        }
    }
}

/// Proof that a tenant exists: the only way to name a tenant to a tenant-owned operation.
/// Only the store makes these ([`Store::create_tenant`], [`Store::tenant_scope`],
/// [`Store::agent_by_did`]); there is no constructor from a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantScope {
    tenant_id: String,
}

impl TenantScope {
    /// A scope for a tenant id the store has just read or written.
    fn looked_up(tenant_id: String) -> Self {
        Self { tenant_id }
    }

    /// The tenant's id.
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Its id.
    pub id: String,
    /// Its plan.
    pub plan: Plan,
    /// When it was created.
    pub created_at_ms: i64,
}

/// A hosted agent (its tenant is the scope it is stored under).
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// Its DID, unique across the host (routing is by DID).
    pub did: String,
    /// Its Ed25519 key, `z` + base58btc.
    pub public_key_multibase: String,
    /// Its DID document.
    pub did_document: Value,
    /// Its agent card.
    pub agent_card: Value,
    /// Its `arp.json`.
    pub arp_json: Value,
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnectionStatus {
    /// Messages flow.
    Active,
    /// Paused by the owner.
    Suspended,
    /// Ended by the owner.
    Revoked,
    /// Past its expiry.
    Expired,
}

impl ConnectionStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }

    /// The status named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            "revoked" => Some(Self::Revoked),
            "expired" => Some(Self::Expired),
            _ => None,
        }
    }
}

/// A connection between a hosted agent and a peer, under a connection token.
#[derive(Clone, Debug, PartialEq)]
pub struct Connection {
    /// Its id (unique within the tenant).
    pub connection_id: String,
    /// The hosted agent.
    pub agent_did: String,
    /// The other side.
    pub peer_did: String,
    /// Where it stands.
    pub status: ConnectionStatus,
    /// The connection token, as signed.
    pub token_json: Value,
    /// The Cedar policies from the token, in order.
    pub cedar_policies: Vec<String>,
    /// The obligations from the token.
    pub obligations: Vec<Obligation>,
    /// When it expires, if ever.
    pub expires_at_ms: Option<i64>,
}

/// A message to queue for delivery to a hosted agent.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    /// The queue id (a UUID, the `messageId` of the 202 answer).
    pub id: String,
    /// The hosted agent it is for.
    pub agent_did: String,
    /// The connection it travelled on.
    pub connection_id: String,
    /// The envelope's `id`.
    pub msg_id: String,
    /// The envelope's `type`.
    pub msg_type: String,
    /// The envelope, JWS compact, as received.
    pub envelope: String,
    /// The sender.
    pub peer_did: String,
    /// Obligations of the decision.
    pub obligations: Vec<Obligation>,
    /// Policies that fired.
    pub policies_fired: Vec<String>,
    /// When it stops being worth delivering, if ever.
    pub expires_at_ms: Option<i64>,
}

/// Columns stored beside an audit entry but not hashed into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditExtra {
    /// Digest of the policy component that decided.
    pub policy_digest: Option<String>,
    /// Fuel the decision used.
    pub fuel_used: Option<u64>,
    /// `sha256:` + hex of the envelope decided.
    pub envelope_sha256: Option<String>,
}

/// The store. Every tenant-owned operation takes a [`TenantScope`] and touches only that
/// tenant's rows.
#[async_trait]
pub trait Store: Send + Sync {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Creates a tenant (`Conflict` when the id is taken).
    async fn create_tenant(&self, tenant_id: &str, plan: Plan) -> StoreResult<TenantScope>;
    /// The scope of an existing tenant (`NotFound` otherwise).
    async fn tenant_scope(&self, tenant_id: &str) -> StoreResult<TenantScope>;
    /// The tenant itself.
    async fn tenant(&self, scope: &TenantScope) -> StoreResult<Tenant>;

    /// Stores a hosted agent (`Conflict` when the DID is hosted already, by any tenant).
    async fn create_agent(&self, scope: &TenantScope, agent: &Agent) -> StoreResult<()>;
    /// A tenant's agent by DID.
    async fn agent(&self, scope: &TenantScope, did: &str) -> StoreResult<Agent>;
    /// The agent hosted at `did` and its tenant: how a request is routed.
    async fn agent_by_did(&self, did: &str) -> StoreResult<(TenantScope, Agent)>;

    /// Stores a connection (`Conflict` when the id is taken within the tenant).
    async fn create_connection(
        &self,
        scope: &TenantScope,
        connection: &Connection,
    ) -> StoreResult<()>;
    /// A tenant's connection by id.
    async fn connection(&self, scope: &TenantScope, connection_id: &str)
    -> StoreResult<Connection>;
    /// The tenant's *active* connections between `a` and `b`, in either orientation,
    /// ordered by id: the caller decides between none, one and ambiguous.
    async fn active_connections_between(
        &self,
        scope: &TenantScope,
        a: &str,
        b: &str,
    ) -> StoreResult<Vec<Connection>>;

    /// Records a revocation (idempotent).
    async fn add_revocation(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        kind: &str,
        id: &str,
    ) -> StoreResult<()>;
    /// Whether `(kind, id)` is revoked for the agent.
    async fn is_revoked(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        kind: &str,
        id: &str,
    ) -> StoreResult<bool>;

    /// Records that `signer_did` sent `msg_id`; `Conflict` when it was recorded before
    /// (host-wide, durable).
    async fn record_replay(&self, signer_did: &str, msg_id: &str) -> StoreResult<()>;

    /// Atomically counts one inbound message for `period` (`YYYY-MM`) if the count is
    /// under `cap` (`None`: no cap). `Some(count after)`, or `None` when at the cap (and
    /// nothing was counted).
    async fn count_usage_if_under(
        &self,
        scope: &TenantScope,
        period: &str,
        cap: Option<u64>,
    ) -> StoreResult<Option<u64>>;
    /// Inbound messages counted for `period`.
    async fn usage(&self, scope: &TenantScope, period: &str) -> StoreResult<u64>;

    /// Appends the next entry to the chain of (tenant, agent, connection), serialized per
    /// chain: concurrent appends never fork the chain or lose an entry.
    async fn append_audit(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        connection_id: &str,
        entry: NewAuditEntry,
        extra: AuditExtra,
    ) -> StoreResult<AuditEntry>;
    /// The whole chain of (tenant, agent, connection), by seq.
    async fn audit_chain(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        connection_id: &str,
    ) -> StoreResult<Vec<AuditEntry>>;

    /// Queues a message for delivery (status `queued`).
    async fn enqueue_message(&self, scope: &TenantScope, message: &NewMessage) -> StoreResult<()>;
    /// Status of a queued message (`queued`, `delivered`, `expired`).
    async fn message_status(&self, scope: &TenantScope, id: &str) -> StoreResult<String>;

    /// Stores a policy component under its digest (idempotent: a digest names one
    /// component).
    async fn put_policy_version(
        &self,
        scope: &TenantScope,
        digest: &str,
        bytes: &[u8],
    ) -> StoreResult<()>;
    /// Makes a stored version the tenant's active policy (`NotFound` when not stored).
    async fn activate_policy(&self, scope: &TenantScope, digest: &str) -> StoreResult<()>;
    /// The tenant's active policy, `(digest, component bytes)`, if one was activated.
    async fn active_policy(&self, scope: &TenantScope) -> StoreResult<Option<(String, Vec<u8>)>>;
}

/// Opens the store at `location`, creating it if missing, and runs the migrations:
/// `postgres://` or `postgresql://` URLs open Postgres; `sqlite:` URLs and anything else
/// (a file path) open SQLite.
pub async fn open(location: &str) -> StoreResult<Arc<dyn Store>> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(location).await?))
    } else if location.is_empty() || (location.contains("://") && !location.starts_with("sqlite:"))
    {
        Err(StoreError::InvalidLocation(location.to_owned()))
    } else {
        Ok(Arc::new(sqlite::SqliteStore::open(location).await?))
    }
}

/// Now, in epoch milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn to_i64(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is too large")))
}

fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

/// The key that names one audit chain (for per-chain locks).
fn chain_key(scope: &TenantScope, agent_did: &str, connection_id: &str) -> String {
    format!("{}\u{1f}{agent_did}\u{1f}{connection_id}", scope.tenant_id)
}

/// Rows as stored, decoded the same way by both backends.
#[derive(sqlx::FromRow)]
struct TenantRow {
    id: String,
    plan: String,
    created_at: i64,
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;

    fn try_from(row: TenantRow) -> StoreResult<Self> {
        let plan = Plan::parse(&row.plan)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown plan {:?}", row.plan)))?;
        Ok(Self {
            id: row.id,
            plan,
            created_at_ms: row.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    tenant_id: String,
    did: String,
    public_key_multibase: String,
    did_document: Json<Value>,
    agent_card: Json<Value>,
    arp_json: Json<Value>,
}

impl AgentRow {
    fn into_scoped(self) -> (TenantScope, Agent) {
        (
            TenantScope::looked_up(self.tenant_id),
            Agent {
                did: self.did,
                public_key_multibase: self.public_key_multibase,
                did_document: self.did_document.0,
                agent_card: self.agent_card.0,
                arp_json: self.arp_json.0,
            },
        )
    }
}

#[derive(sqlx::FromRow)]
struct ConnectionRow {
    connection_id: String,
    agent_did: String,
    peer_did: String,
    status: String,
    token_json: Json<Value>,
    cedar_policies: Json<Vec<String>>,
    obligations: Json<Vec<Obligation>>,
    expires_at: Option<i64>,
}

impl TryFrom<ConnectionRow> for Connection {
    type Error = StoreError;

    fn try_from(row: ConnectionRow) -> StoreResult<Self> {
        let status = ConnectionStatus::parse(&row.status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {:?}", row.status)))?;
        Ok(Self {
            connection_id: row.connection_id,
            agent_did: row.agent_did,
            peer_did: row.peer_did,
            status,
            token_json: row.token_json.0,
            cedar_policies: row.cedar_policies.0,
            obligations: row.obligations.0,
            expires_at_ms: row.expires_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    timestamp: String,
    msg_id: String,
    decision: String,
    policies_fired: Json<Vec<String>>,
    obligations: Json<Vec<Obligation>>,
    spend_delta_cents: i64,
    reason: Option<String>,
    prev_hash: String,
    self_hash: String,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> StoreResult<Self> {
        let decision: AuditDecision = serde_json::from_value(Value::String(row.decision))
            .map_err(|error| StoreError::Corrupt(format!("audit decision: {error}")))?;
        Ok(Self {
            seq: to_u64(row.seq, "seq")?,
            timestamp: row.timestamp,
            msg_id: row.msg_id,
            decision,
            policies_fired: row.policies_fired.0,
            obligations: row.obligations.0,
            spend_delta_cents: row.spend_delta_cents,
            reason: row.reason,
            prev_hash: row.prev_hash,
            self_hash: row.self_hash,
        })
    }
}

/// The SQL both backends run: SQLite accepts Postgres-style `$n` parameters, and both have
/// `ON CONFLICT ... DO UPDATE ... WHERE` and `RETURNING`. Only the chain lock differs.
mod sql {
    pub(super) const INSERT_TENANT: &str =
        "INSERT INTO tenants (id, plan, created_at) VALUES ($1, $2, $3)";
    pub(super) const SELECT_TENANT: &str = "SELECT id, plan, created_at FROM tenants WHERE id = $1";

    pub(super) const INSERT_AGENT: &str = "INSERT INTO agents (tenant_id, did, \
         public_key_multibase, did_document, agent_card, arp_json, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)";
    pub(super) const SELECT_AGENT: &str = "SELECT tenant_id, did, public_key_multibase, \
         did_document, agent_card, arp_json FROM agents WHERE tenant_id = $1 AND did = $2";
    pub(super) const SELECT_AGENT_BY_DID: &str = "SELECT tenant_id, did, public_key_multibase, \
         did_document, agent_card, arp_json FROM agents WHERE did = $1";

    pub(super) const INSERT_CONNECTION: &str = "INSERT INTO connections (tenant_id, \
         connection_id, agent_did, peer_did, status, token_json, cedar_policies, obligations, \
         expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    pub(super) const SELECT_CONNECTION: &str = "SELECT connection_id, agent_did, peer_did, \
         status, token_json, cedar_policies, obligations, expires_at FROM connections \
         WHERE tenant_id = $1 AND connection_id = $2";
    pub(super) const SELECT_ACTIVE_BETWEEN: &str = "SELECT connection_id, agent_did, \
         peer_did, status, token_json, cedar_policies, obligations, expires_at \
         FROM connections WHERE tenant_id = $1 AND status = 'active' \
         AND ((agent_did = $2 AND peer_did = $3) OR (agent_did = $3 AND peer_did = $2)) \
         ORDER BY connection_id";

    pub(super) const INSERT_REVOCATION: &str = "INSERT INTO revocations (tenant_id, \
         agent_did, kind, id, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
    pub(super) const SELECT_REVOCATION: &str = "SELECT 1 FROM revocations \
         WHERE tenant_id = $1 AND agent_did = $2 AND kind = $3 AND id = $4";

    pub(super) const INSERT_REPLAY: &str =
        "INSERT INTO replay_guard (signer_did, msg_id, seen_at) VALUES ($1, $2, $3)";

    /// One statement, so atomic on both backends: the conflicting row is locked (Postgres)
    /// or the database is (SQLite) while the cap is checked; nothing is written when the
    /// row is at the cap, and then no row is returned.
    pub(super) const COUNT_USAGE_IF_UNDER: &str = "INSERT INTO usage (tenant_id, period, \
         inbound) VALUES ($1, $2, 1) ON CONFLICT (tenant_id, period) \
         DO UPDATE SET inbound = usage.inbound + 1 WHERE usage.inbound < $3 \
         RETURNING inbound";
    pub(super) const SELECT_USAGE: &str =
        "SELECT inbound FROM usage WHERE tenant_id = $1 AND period = $2";

    /// Postgres only: the per-chain lock of an append, held until the transaction ends.
    pub(super) const LOCK_CHAIN: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

    pub(super) const SELECT_CHAIN_HEAD: &str = "SELECT seq, timestamp, msg_id, decision, \
         policies_fired, obligations, spend_delta_cents, reason, prev_hash, self_hash \
         FROM audit_entries WHERE tenant_id = $1 AND agent_did = $2 AND connection_id = $3 \
         ORDER BY seq DESC LIMIT 1";
    pub(super) const SELECT_CHAIN: &str = "SELECT seq, timestamp, msg_id, decision, \
         policies_fired, obligations, spend_delta_cents, reason, prev_hash, self_hash \
         FROM audit_entries WHERE tenant_id = $1 AND agent_did = $2 AND connection_id = $3 \
         ORDER BY seq";
    pub(super) const INSERT_AUDIT: &str = "INSERT INTO audit_entries (tenant_id, agent_did, \
         connection_id, seq, timestamp, msg_id, decision, policies_fired, obligations, \
         spend_delta_cents, reason, prev_hash, self_hash, policy_digest, fuel_used, \
         envelope_sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)";

    pub(super) const INSERT_MESSAGE: &str = "INSERT INTO messages (tenant_id, id, agent_did, \
         connection_id, msg_id, msg_type, envelope, peer_did, obligations, policies_fired, \
         status, attempts, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued', 0, $11, $12)";
    pub(super) const SELECT_MESSAGE_STATUS: &str =
        "SELECT status FROM messages WHERE tenant_id = $1 AND id = $2";

    pub(super) const INSERT_POLICY_VERSION: &str = "INSERT INTO policy_versions (tenant_id, \
         digest, bytes, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
    /// Activates only a stored version: no row is inserted when the digest is unknown.
    pub(super) const ACTIVATE_POLICY: &str = "INSERT INTO active_policy (tenant_id, digest) \
         SELECT tenant_id, digest FROM policy_versions WHERE tenant_id = $1 AND digest = $2 \
         ON CONFLICT (tenant_id) DO UPDATE SET digest = excluded.digest";
    pub(super) const SELECT_ACTIVE_POLICY: &str = "SELECT v.digest, v.bytes \
         FROM active_policy a JOIN policy_versions v \
         ON v.tenant_id = a.tenant_id AND v.digest = a.digest WHERE a.tenant_id = $1";
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_statuses_round_trip_their_stored_form() {
        for plan in [Plan::Free, Plan::Pro, Plan::Team, Plan::Internal] {
            assert_eq!(Plan::parse(plan.as_str()), Some(plan));
        }
        assert_eq!(Plan::parse("gold"), None);
        assert_eq!(Plan::Free.monthly_cap(), Some(1000));
        assert_eq!(Plan::Pro.monthly_cap(), Some(10_000));
        assert_eq!(Plan::Team.monthly_cap(), None);
        assert_eq!(Plan::Internal.monthly_cap(), None);
        for status in [
            ConnectionStatus::Active,
            ConnectionStatus::Suspended,
            ConnectionStatus::Revoked,
            ConnectionStatus::Expired,
        ] {
            assert_eq!(ConnectionStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(ConnectionStatus::parse("paused"), None);
    }

    #[test]
    fn connection_problems_are_unavailable() {
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        ] {
            assert!(matches!(
                StoreError::from(error),
                StoreError::Unavailable(_)
            ));
        }
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::NotFound(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::Protocol("odd".into())),
            StoreError::Database(_)
        ));
    }

    #[test]
    fn chain_keys_do_not_run_into_each_other() {
        let scope = TenantScope::looked_up("t".into());
        assert_ne!(chain_key(&scope, "a", "bc"), chain_key(&scope, "ab", "c"));
    }
}
