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
//! Both backends run the same SQL (`mod sql`; SQLite accepts `$n` parameters) through one
//! implementation written once in `store_impl!`; a backend supplies only how it opens, how
//! a write transaction begins and how an audit chain is locked. Dispatch records a verified
//! envelope with [`Store::record_inbound`]: replay guard, quota, audit and queue in one
//! transaction.
//!
//! Queries are checked at run time (`sqlx::query`), not at compile time: no database is
//! needed to build. Times are epoch milliseconds (UTC).

pub mod postgres;
pub mod sqlite;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::types::Json;

use crate::audit::{AuditDecision, AuditEntry, AuditError, NewAuditEntry};
pub(crate) use crate::clock::now_ms;
use crate::pdp::{Obligation, TenantLimits};

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
    /// This (signer, message id) was accepted before: the envelope is a replay.
    #[error("this (signer, message id) was accepted before")]
    Replayed,
    /// The connection a record relied on is no longer usable (suspended, revoked or gone
    /// since it was read): nothing was written.
    #[error("the connection changed since it was read")]
    Stale,
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

impl StoreError {
    /// The same kind of failure, for another caller that shared the failed operation
    /// (`sqlx::Error` is not `Clone`): the copy answers with the same status and reason.
    pub fn shared_copy(&self) -> Self {
        let described = || sqlx::Error::Protocol(self.to_string());
        match self {
            Self::Unavailable(_) => Self::Unavailable(described()),
            Self::Conflict(text) => Self::Conflict(text.clone()),
            Self::NotFound(text) => Self::NotFound(text.clone()),
            Self::InvalidLocation(text) => Self::InvalidLocation(text.clone()),
            Self::Corrupt(text) => Self::Corrupt(text.clone()),
            Self::Replayed => Self::Replayed,
            Self::Stale => Self::Stale,
            Self::Migrate(_) | Self::Audit(_) | Self::Database(_) => Self::Database(described()),
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

/// Everything dispatch records for one verified inbound envelope, committed by
/// [`Store::record_inbound`] in one transaction (all or nothing).
#[derive(Clone, Debug, PartialEq)]
pub struct InboundRecord {
    /// The envelope's signer: with `msg_id`, the replay guard's key.
    pub signer_did: String,
    /// The envelope's `id`.
    pub msg_id: String,
    /// The hosted agent: with `connection_id`, the audit chain's key.
    pub agent_did: String,
    /// The connection it travelled on.
    pub connection_id: String,
    /// The decision as the PDP / dispatch made it.
    pub audit: NewAuditEntry,
    /// Columns stored beside the audit entry.
    pub extra: AuditExtra,
    /// For an allowed message: counted against the plan quota, and queued if under it.
    /// `None` for a deny.
    pub allow: Option<AllowedInbound>,
    /// Check inside the transaction that the connection is still active and not on the
    /// agent's revocation list (it was read from a cache): otherwise nothing is written
    /// and the result is `Err(Stale)`.
    pub require_usable_connection: bool,
    /// An event to tell the other hosts when the transaction commits (Postgres `NOTIFY`
    /// inside the transaction; ignored on SQLite).
    pub notify_hosts: Option<String>,
}

impl InboundRecord {
    /// The audit chain it appends to: (agent, connection).
    fn chain(&self) -> (&str, &str) {
        (&self.agent_did, &self.connection_id)
    }

    /// The replay guard's key: (signer, message id).
    fn replay_key(&self) -> (&str, &str) {
        (&self.signer_did, &self.msg_id)
    }
}

/// The allowed part of an [`InboundRecord`]: what to count, and what to queue.
#[derive(Clone, Debug, PartialEq)]
pub struct AllowedInbound {
    /// The quota period, `YYYY-MM` (UTC).
    pub period: String,
    /// The tenant's plan (its [`Plan::monthly_cap`] is the cap).
    pub plan: Plan,
    /// The message to queue when under the cap.
    pub message: NewMessage,
}

/// What [`Store::record_inbound`] recorded.
#[derive(Clone, Debug, PartialEq)]
pub enum InboundOutcome {
    /// Allowed, counted and queued.
    Queued {
        /// The audit entry appended.
        entry: AuditEntry,
    },
    /// Allowed by the policy but the tenant is at its cap: the audit entry is a deny with
    /// reason `quota_exceeded:<plan>:<used>/<cap>`, no obligations and the fired policies
    /// kept; nothing was counted or queued.
    QuotaExceeded {
        /// The audit entry appended.
        entry: AuditEntry,
        /// Inbound messages counted this period.
        used: u64,
        /// The plan's cap.
        cap: u64,
    },
    /// Denied: audited only.
    Denied {
        /// The audit entry appended.
        entry: AuditEntry,
    },
}

impl InboundOutcome {
    /// The audit entry appended.
    pub fn entry(&self) -> &AuditEntry {
        match self {
            Self::Queued { entry } | Self::QuotaExceeded { entry, .. } | Self::Denied { entry } => {
                entry
            }
        }
    }
}

/// A message waiting in the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedMessage {
    /// The queue id.
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
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it was queued.
    pub created_at_ms: i64,
    /// When it stops being worth delivering, if ever.
    pub expires_at_ms: Option<i64>,
}

/// A revocation published by a hosted agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Revocation {
    /// What is revoked (`connection`, `token`, ...).
    pub kind: String,
    /// Its id.
    pub id: String,
    /// When it was revoked.
    pub created_at_ms: i64,
}

// ---- Tenant administration (issue #5, the admin API): domain types ----

/// A tenant API key as listed (the key itself is shown once at creation and only its
/// SHA-256 is stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    /// Its id (`key_...`), for listing and revoking.
    pub id: String,
    /// What the operator called it.
    pub label: Option<String>,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<i64>,
}

/// A stored policy version (immutable: a digest names one component).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyVersion {
    /// `sha256:<hex>` of the component.
    pub digest: String,
    /// Size of the component in bytes.
    pub size_bytes: u64,
    /// When it was first uploaded.
    pub created_at_ms: i64,
}

/// The store. Every tenant-owned operation takes a [`TenantScope`] and touches only that
/// tenant's rows.
#[async_trait]
pub trait Store: std::fmt::Debug + Send + Sync {
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
    /// The digest of the tenant's active policy, if one was activated.
    async fn active_policy_digest(&self, scope: &TenantScope) -> StoreResult<Option<String>>;
    /// A stored policy version's component bytes (`NotFound` otherwise).
    async fn policy_bytes(&self, scope: &TenantScope, digest: &str) -> StoreResult<Vec<u8>>;

    // ---- Tenant administration (issue #5, the admin API) ----

    /// Every tenant, by id.
    async fn tenants(&self) -> StoreResult<Vec<Tenant>>;
    /// Changes the tenant's plan.
    async fn set_plan(&self, scope: &TenantScope, plan: Plan) -> StoreResult<()>;
    /// The tenant's own policy limits (`None` members: the host default).
    async fn tenant_limits(&self, scope: &TenantScope) -> StoreResult<TenantLimits>;
    /// Replaces the tenant's own policy limits.
    async fn set_tenant_limits(
        &self,
        scope: &TenantScope,
        limits: &TenantLimits,
    ) -> StoreResult<()>;
    /// Stores a new API key of the tenant by the SHA-256 (hex) of its text.
    async fn create_api_key(
        &self,
        scope: &TenantScope,
        key_id: &str,
        key_sha256: &str,
        label: Option<&str>,
    ) -> StoreResult<()>;
    /// The tenant's API keys, oldest first.
    async fn api_keys(&self, scope: &TenantScope) -> StoreResult<Vec<ApiKey>>;
    /// Revokes one of the tenant's keys (idempotent; `NotFound` when it has no such key).
    async fn revoke_api_key(&self, scope: &TenantScope, key_id: &str) -> StoreResult<()>;
    /// The tenant of an unrevoked API key, by the SHA-256 (hex) of its text (`NotFound`
    /// otherwise): how a tenant's request is authenticated.
    async fn tenant_by_api_key(&self, key_sha256: &str) -> StoreResult<TenantScope>;
    /// The tenant's agents, by DID.
    async fn agents(&self, scope: &TenantScope) -> StoreResult<Vec<Agent>>;
    /// The tenant's connections, by id.
    async fn connections(&self, scope: &TenantScope) -> StoreResult<Vec<Connection>>;
    /// The tenant's stored policy versions, oldest first.
    async fn policy_versions(&self, scope: &TenantScope) -> StoreResult<Vec<PolicyVersion>>;
    /// An owner action on a connection, in one transaction: the status changes from one
    /// of `from` to `to` (`Conflict` when it is in none of them, `NotFound` when there is
    /// no such connection), `entry` is appended to the chain of (connection's agent,
    /// connection), and a move to `Revoked` also lists the connection on the agent's
    /// revocations. Returns the connection as it was and the entry appended.
    async fn transition_connection(
        &self,
        scope: &TenantScope,
        connection_id: &str,
        from: &[ConnectionStatus],
        to: ConnectionStatus,
        entry: NewAuditEntry,
    ) -> StoreResult<(Connection, AuditEntry)>;

    /// Records verified inbound envelopes of one tenant in one transaction (a group
    /// commit), each as [`Store::record_inbound`] would, in order: the replay guard
    /// insert, (if allowed) the quota check-and-count, the audit append (serialized per
    /// chain) and (if allowed and under the quota) the enqueue. Returns one result per
    /// record: a replayed `(signer_did, msg_id)` is `Err(Replayed)`, a record whose cached
    /// connection is no longer usable `Err(Stale)`, and neither writes anything. The
    /// outer error is a failed transaction: then nothing at all was written.
    ///
    /// Both backends take their locks in the same order (replay keys, chains in key
    /// order, usage row), so concurrent calls cannot deadlock.
    async fn record_inbound_batch(
        &self,
        scope: &TenantScope,
        records: Vec<InboundRecord>,
    ) -> StoreResult<Vec<StoreResult<InboundOutcome>>>;
    /// Records one verified inbound envelope in one transaction (see
    /// [`Store::record_inbound_batch`]).
    async fn record_inbound(
        &self,
        scope: &TenantScope,
        record: InboundRecord,
    ) -> StoreResult<InboundOutcome> {
        self.record_inbound_batch(scope, vec![record])
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::Corrupt("a batch of one gave no result".into())))
    }
    /// Cheap reachability check (for `GET /ready`).
    async fn ping(&self) -> StoreResult<()>;
    /// Messages with status `queued`, host-wide (the queue-depth gauge).
    async fn queue_depth(&self) -> StoreResult<u64>;
    /// The agent's revocations (for `/.well-known/revocations.json`), oldest first.
    async fn revocations(
        &self,
        scope: &TenantScope,
        agent_did: &str,
    ) -> StoreResult<Vec<Revocation>>;
    /// Every audit chain of the tenant as `(agent_did, connection_id)`, sorted.
    async fn audit_chains(&self, scope: &TenantScope) -> StoreResult<Vec<(String, String)>>;

    /// The agent's deliverable messages (queued, not expired) in arrival order, at most
    /// `limit`, skipping the first `offset`.
    async fn deliverable_messages(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        offset: u32,
        limit: u32,
    ) -> StoreResult<Vec<QueuedMessage>>;
    /// How many of the agent's messages are deliverable (the `queuedCount` of
    /// `server_hello`).
    async fn deliverable_count(&self, scope: &TenantScope, agent_did: &str) -> StoreResult<u64>;
    /// The messages to push next, in one transaction: the page of
    /// [`Store::deliverable_messages`] at (`offset`, `limit`), without those already
    /// `in_flight`, at most `room` of them, each with one more delivery attempt counted.
    /// They are returned as read (`attempts` before this one).
    async fn take_for_push(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        page: (u32, u32),
        in_flight: &HashSet<String>,
        room: usize,
    ) -> StoreResult<Vec<QueuedMessage>>;
    /// Marks the agent's queued messages delivered (their acks); how many were. An id
    /// that names no queued message of this agent (unknown, another agent's, or acked
    /// before) changes nothing.
    async fn ack_messages(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        ids: &[String],
    ) -> StoreResult<u64>;
    /// [`Store::ack_messages`] of one message: `false` when it changed nothing.
    async fn ack_message(
        &self,
        scope: &TenantScope,
        agent_did: &str,
        id: &str,
    ) -> StoreResult<bool> {
        Ok(self
            .ack_messages(scope, agent_did, &[id.to_owned()])
            .await?
            == 1)
    }
    /// Marks every queued message past its expiry `expired`, host-wide; how many.
    async fn expire_messages(&self, now_ms: i64) -> StoreResult<u64>;
    /// The tenant's connections of one agent, by id.
    async fn agent_connections(
        &self,
        scope: &TenantScope,
        agent_did: &str,
    ) -> StoreResult<Vec<Connection>>;

    /// Tells every host sharing this store about `event` (Postgres `NOTIFY`; a no-op on
    /// SQLite, whose one host needs no telling).
    async fn notify_hosts(&self, event: &str) -> StoreResult<()>;
    /// Starts listening to the events of [`Store::notify_hosts`]; `None` on SQLite.
    async fn host_events(&self) -> StoreResult<Option<postgres::HostEvents>>;
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

fn to_i64(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is too large")))
}

fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

/// The records of a batch not refused so far.
fn accepted<'r>(
    records: &'r [InboundRecord],
    refusals: &'r [Option<StoreError>],
) -> impl Iterator<Item = &'r InboundRecord> {
    records
        .iter()
        .zip(refusals)
        .filter(|(_, refusal)| refusal.is_none())
        .map(|(record, _)| record)
}

/// A borrowed pair as the owned key of a set or map.
fn owned((first, second): (&str, &str)) -> (String, String) {
    (first.to_owned(), second.to_owned())
}

/// One audit entry to insert, with where it goes and what is kept beside it.
struct ChainAppend<'a> {
    agent_did: &'a str,
    connection_id: &'a str,
    entry: &'a AuditEntry,
    extra: &'a AuditExtra,
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

/// The last entry of a chain, with the chain's key.
#[derive(sqlx::FromRow)]
struct ChainHeadRow {
    agent_did: String,
    connection_id: String,
    #[sqlx(flatten)]
    entry: AuditRow,
}

/// Heads by chain, as [`store_impl`]'s appends want them.
fn heads_by_chain(
    rows: impl IntoIterator<Item = ChainHeadRow>,
) -> StoreResult<HashMap<(String, String), AuditEntry>> {
    rows.into_iter()
        .map(|row| {
            let entry = AuditEntry::try_from(row.entry)?;
            Ok(((row.agent_did, row.connection_id), entry))
        })
        .collect()
}

#[derive(sqlx::FromRow)]
struct QueuedMessageRow {
    id: String,
    agent_did: String,
    connection_id: String,
    msg_id: String,
    msg_type: String,
    envelope: String,
    peer_did: String,
    obligations: Json<Vec<Obligation>>,
    policies_fired: Json<Vec<String>>,
    attempts: i64,
    created_at: i64,
    expires_at: Option<i64>,
}

impl TryFrom<QueuedMessageRow> for QueuedMessage {
    type Error = StoreError;

    fn try_from(row: QueuedMessageRow) -> StoreResult<Self> {
        let attempts = u32::try_from(row.attempts)
            .map_err(|_| StoreError::Corrupt(format!("attempts {}", row.attempts)))?;
        Ok(Self {
            id: row.id,
            agent_did: row.agent_did,
            connection_id: row.connection_id,
            msg_id: row.msg_id,
            msg_type: row.msg_type,
            envelope: row.envelope,
            peer_did: row.peer_did,
            obligations: row.obligations.0,
            policies_fired: row.policies_fired.0,
            attempts,
            created_at_ms: row.created_at,
            expires_at_ms: row.expires_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RevocationRow {
    kind: String,
    id: String,
    created_at: i64,
}

impl From<RevocationRow> for Revocation {
    fn from(row: RevocationRow) -> Self {
        Self {
            kind: row.kind,
            id: row.id,
            created_at_ms: row.created_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TenantLimitsRow {
    limit_fuel: Option<i64>,
    limit_deadline_ms: Option<i64>,
    limit_memory_bytes: Option<i64>,
    limit_concurrency: Option<i64>,
}

impl TryFrom<TenantLimitsRow> for TenantLimits {
    type Error = StoreError;

    fn try_from(row: TenantLimitsRow) -> StoreResult<Self> {
        let read = |value: Option<i64>, what: &str| value.map(|v| to_u64(v, what)).transpose();
        Ok(Self {
            fuel: read(row.limit_fuel, "limit_fuel")?,
            deadline_ms: read(row.limit_deadline_ms, "limit_deadline_ms")?,
            memory_bytes: read(row.limit_memory_bytes, "limit_memory_bytes")?,
            concurrency: read(row.limit_concurrency, "limit_concurrency")?
                .map(|v| {
                    u32::try_from(v)
                        .map_err(|_| StoreError::Corrupt(format!("limit_concurrency {v}")))
                })
                .transpose()?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: String,
    label: Option<String>,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<ApiKeyRow> for ApiKey {
    fn from(row: ApiKeyRow) -> Self {
        Self {
            id: row.id,
            label: row.label,
            created_at_ms: row.created_at,
            revoked_at_ms: row.revoked_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct PolicyVersionRow {
    digest: String,
    size_bytes: i64,
    created_at: i64,
}

impl TryFrom<PolicyVersionRow> for PolicyVersion {
    type Error = StoreError;

    fn try_from(row: PolicyVersionRow) -> StoreResult<Self> {
        Ok(Self {
            size_bytes: to_u64(row.size_bytes, "policy size")?,
            digest: row.digest,
            created_at_ms: row.created_at,
        })
    }
}

/// The audit fields of a message the policy allowed but the plan quota refuses: a deny
/// with reason `quota_exceeded:<plan>:<used>/<cap>`, no obligations, the fired policies
/// kept (ARP-PROTOCOL §2).
fn quota_exceeded_fields(fields: NewAuditEntry, plan: Plan, used: u64, cap: u64) -> NewAuditEntry {
    NewAuditEntry {
        decision: AuditDecision::Deny,
        reason: Some(format!("quota_exceeded:{}:{used}/{cap}", plan.as_str())),
        obligations: Vec::new(),
        ..fields
    }
}

/// Expands to a backend's whole [`Store`] implementation (in a private module
/// `store_impl` of the backend's module), so each operation is written once for both.
/// Every query is the shared SQL of [`sql`]. Called in the backend's module as
/// `store_impl!(BackendStore, sqlx::<Database>, "<name>")` (the database type by its full
/// path: it is named inside the generated module); the backend type supplies, besides its
/// `pool` field, the two places where the backends differ:
///
/// - `async fn begin_write(&self, scope: &TenantScope) -> StoreResult<sqlx::Transaction<'static,
///   $db>>`: a transaction of the tenant that will write (SQLite takes the database's write
///   lock here; Postgres sets the tenant for row-level security);
/// - `async fn begin_scoped(&self, scope: &TenantScope)` (same type): a transaction of the
///   tenant for one operation (Postgres: sets `arp.tenant_id`, which the row-level security
///   policies compare with every row's `tenant_id`);
/// - `async fn begin_host(&self)` (same type): a transaction of a host-wide read (routing by
///   DID, authenticating a key by its hash, the queue-depth gauge; Postgres: sets
///   `arp.scope = 'host'`, which the policies let read, never write);
/// - `async fn begin_maintenance(&self)` (same type): a transaction of host-wide queue
///   upkeep (expiring messages; Postgres: sets `arp.scope = 'maintenance'`, which the
///   policies let read and update messages only);
/// - `async fn lock_chains(tx: &mut sqlx::Transaction<'static, $db>, keys: &[String]) ->
///   StoreResult<()>`: hold the locks of these audit chains until the transaction ends,
///   before their heads are read (Postgres: advisory locks, taken in one order; SQLite:
///   already held);
/// - `async fn chain_heads(tx: &mut sqlx::Transaction<'static, $db>, scope: &TenantScope,
///   chains: &[(&str, &str)]) -> StoreResult<HashMap<(String, String), AuditEntry>>`: the
///   last entry of each of these (agent, connection) chains that has one.
macro_rules! store_impl {
    ($store:ident, $db:ty, $backend:literal) => {
        mod store_impl {
            use std::collections::{BTreeMap, BTreeSet, HashSet};

            use async_trait::async_trait;
            use sqlx::types::Json;

            use super::$store;
            use $crate::audit::{AuditEntry, NewAuditEntry};
            use $crate::store::{
                Agent, AgentRow, AllowedInbound, AuditExtra, AuditRow, ChainAppend, Connection,
                ConnectionRow, InboundOutcome, InboundRecord, NewMessage, Plan, QueuedMessage,
                QueuedMessageRow, Revocation, RevocationRow, Store, StoreError, StoreResult,
                Tenant, TenantRow, TenantScope, accepted, chain_key, now_ms, owned,
                quota_exceeded_fields, sql, to_i64, to_u64,
            };
            // Tenant administration (issue #5).
            use $crate::connection::REVOKED_CONNECTION;
            use $crate::pdp::TenantLimits;
            use $crate::store::{
                ApiKey, ApiKeyRow, ConnectionStatus, PolicyVersion, PolicyVersionRow,
                TenantLimitsRow,
            };

            /// The single-statement steps that both a transaction and the pool run.
            impl $store {
                /// Inserts the replay guard rows (keys in order, so that concurrent inserts
                /// lock them in one order); returns the keys that were new: the others
                /// were received before.
                async fn insert_replays<'e, 'k>(
                    executor: impl sqlx::Executor<'e, Database = $db>,
                    keys: &[(&'k str, &'k str)],
                ) -> StoreResult<HashSet<(String, String)>> {
                    if keys.is_empty() {
                        return Ok(HashSet::new());
                    }
                    let seen_at = now_ms();
                    let mut query = sqlx::QueryBuilder::<$db>::new(sql::INSERT_REPLAYS);
                    query.push_values(keys, |mut row, (signer_did, msg_id)| {
                        row.push_bind(*signer_did)
                            .push_bind(*msg_id)
                            .push_bind(seen_at);
                    });
                    query.push(sql::INSERT_REPLAYS_RETURNING_NEW);
                    let new: Vec<(String, String)> =
                        query.build_query_as().fetch_all(executor).await?;
                    Ok(new.into_iter().collect())
                }

                /// Of these (agent, connection) pairs, those whose connection is active and
                /// not on the agent's revocation list.
                async fn usable_connections<'e, 'k>(
                    executor: impl sqlx::Executor<'e, Database = $db>,
                    scope: &'k TenantScope,
                    pairs: &[(&'k str, &'k str)],
                ) -> StoreResult<HashSet<(String, String)>> {
                    if pairs.is_empty() {
                        return Ok(HashSet::new());
                    }
                    let mut query = sqlx::QueryBuilder::<$db>::new(sql::WANTED_CHAINS);
                    query.push_values(pairs, |mut row, (agent_did, connection_id)| {
                        row.push_bind(*agent_did).push_bind(*connection_id);
                    });
                    query.push(sql::USABLE_OF_WANTED);
                    query.push_bind(scope.tenant_id());
                    query.push(sql::USABLE_OF_WANTED_NOT_REVOKED);
                    query.push_bind(REVOKED_CONNECTION);
                    query.push(")");
                    let usable: Vec<(String, String)> =
                        query.build_query_as().fetch_all(executor).await?;
                    Ok(usable.into_iter().collect())
                }

                /// The period's usage, its row locked until the transaction ends.
                async fn lock_usage<'e>(
                    executor: impl sqlx::Executor<'e, Database = $db>,
                    scope: &TenantScope,
                    period: &str,
                ) -> StoreResult<u64> {
                    let used: i64 = sqlx::query_scalar(sql::LOCK_USAGE)
                        .bind(scope.tenant_id())
                        .bind(period)
                        .fetch_one(executor)
                        .await?;
                    to_u64(used, "usage")
                }

                async fn add_usage<'e>(
                    executor: impl sqlx::Executor<'e, Database = $db>,
                    scope: &TenantScope,
                    period: &str,
                    count: u64,
                ) -> StoreResult<()> {
                    sqlx::query(sql::ADD_USAGE)
                        .bind(scope.tenant_id())
                        .bind(period)
                        .bind(to_i64(count, "usage")?)
                        .execute(executor)
                        .await?;
                    Ok(())
                }

                async fn read_usage<'e>(
                    executor: impl sqlx::Executor<'e, Database = $db>,
                    scope: &TenantScope,
                    period: &str,
                ) -> StoreResult<u64> {
                    let used: Option<i64> = sqlx::query_scalar(sql::SELECT_USAGE)
                        .bind(scope.tenant_id())
                        .bind(period)
                        .fetch_optional(executor)
                        .await?;
                    to_u64(used.unwrap_or(0), "usage")
                }

                /// Appends one entry to a chain in `tx`: the chain's lock first, then its
                /// head, so no other writer can append in between (the lock is released at
                /// commit or rollback).
                async fn append_in_transaction(
                    tx: &mut sqlx::Transaction<'static, $db>,
                    scope: &TenantScope,
                    agent_did: &str,
                    connection_id: &str,
                    entry: NewAuditEntry,
                    extra: &AuditExtra,
                ) -> StoreResult<AuditEntry> {
                    Self::lock_chains(tx, &[chain_key(scope, agent_did, connection_id)]).await?;
                    let heads = Self::chain_heads(tx, scope, &[(agent_did, connection_id)]).await?;
                    let head = heads.into_values().next();
                    let next = AuditEntry::next(head.as_ref(), entry)?;
                    let append = ChainAppend {
                        agent_did,
                        connection_id,
                        entry: &next,
                        extra,
                    };
                    Self::insert_audits(&mut **tx, scope, &[append]).await?;
                    Ok(next)
                }

                /// Appends entries (one multi-row insert).
                async fn insert_audits<'e>(
                    executor: impl sqlx::Executor<'e, Database = $db>,
                    scope: &TenantScope,
                    appends: &[ChainAppend<'_>],
                ) -> StoreResult<()> {
                    if appends.is_empty() {
                        return Ok(());
                    }
                    let numbers = appends
                        .iter()
                        .map(|append| {
                            let seq = to_i64(append.entry.seq, "seq")?;
                            let fuel_used = append
                                .extra
                                .fuel_used
                                .map(|fuel| to_i64(fuel, "fuel_used"))
                                .transpose()?;
                            Ok((seq, fuel_used))
                        })
                        .collect::<StoreResult<Vec<_>>>()?;
                    let mut query = sqlx::QueryBuilder::<$db>::new(sql::INSERT_AUDITS);
                    query.push_values(
                        appends.iter().zip(numbers),
                        |mut row, (append, (seq, fuel_used))| {
                            let entry = append.entry;
                            row.push_bind(scope.tenant_id())
                                .push_bind(append.agent_did)
                                .push_bind(append.connection_id)
                                .push_bind(seq)
                                .push_bind(&entry.timestamp)
                                .push_bind(&entry.msg_id)
                                .push_bind(entry.decision.as_str())
                                .push_bind(Json(&entry.policies_fired))
                                .push_bind(Json(&entry.obligations))
                                .push_bind(entry.spend_delta_cents)
                                .push_bind(&entry.reason)
                                .push_bind(&entry.prev_hash)
                                .push_bind(&entry.self_hash)
                                .push_bind(&append.extra.policy_digest)
                                .push_bind(fuel_used)
                                .push_bind(&append.extra.envelope_sha256);
                        },
                    );
                    query.build().execute(executor).await?;
                    Ok(())
                }

                /// Queues messages (one multi-row insert).
                async fn insert_messages<'e>(
                    executor: impl sqlx::Executor<'e, Database = $db>,
                    scope: &TenantScope,
                    messages: &[&NewMessage],
                ) -> StoreResult<()> {
                    if messages.is_empty() {
                        return Ok(());
                    }
                    let created_at = now_ms();
                    let mut query = sqlx::QueryBuilder::<$db>::new(sql::INSERT_MESSAGES);
                    query.push_values(messages, |mut row, message| {
                        row.push_bind(scope.tenant_id())
                            .push_bind(&message.id)
                            .push_bind(&message.agent_did)
                            .push_bind(&message.connection_id)
                            .push_bind(&message.msg_id)
                            .push_bind(&message.msg_type)
                            .push_bind(&message.envelope)
                            .push_bind(&message.peer_did)
                            .push_bind(Json(&message.obligations))
                            .push_bind(Json(&message.policies_fired))
                            .push_bind("queued")
                            .push_bind(created_at)
                            .push_bind(message.expires_at_ms);
                    });
                    query.build().execute(executor).await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl Store for $store {
                fn backend(&self) -> &'static str {
                    $backend
                }

                async fn create_tenant(
                    &self,
                    tenant_id: &str,
                    plan: Plan,
                ) -> StoreResult<TenantScope> {
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
                    row.ok_or_else(|| {
                        StoreError::NotFound(format!("tenant {}", scope.tenant_id()))
                    })?
                    .try_into()
                }

                async fn create_agent(
                    &self,
                    scope: &TenantScope,
                    agent: &Agent,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
                    sqlx::query(sql::INSERT_AGENT)
                        .bind(scope.tenant_id())
                        .bind(&agent.did)
                        .bind(&agent.public_key_multibase)
                        .bind(Json(&agent.did_document))
                        .bind(Json(&agent.agent_card))
                        .bind(Json(&agent.arp_json))
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn agent(&self, scope: &TenantScope, did: &str) -> StoreResult<Agent> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let row: Option<AgentRow> = sqlx::query_as(sql::SELECT_AGENT)
                        .bind(scope.tenant_id())
                        .bind(did)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    row.map(|row| row.into_scoped().1)
                        .ok_or_else(|| StoreError::NotFound(format!("agent {did}")))
                }

                async fn agent_by_did(&self, did: &str) -> StoreResult<(TenantScope, Agent)> {
                    let mut tx = self.begin_host().await?;
                    let row: Option<AgentRow> = sqlx::query_as(sql::SELECT_AGENT_BY_DID)
                        .bind(did)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    row.map(AgentRow::into_scoped)
                        .ok_or_else(|| StoreError::NotFound(format!("agent {did}")))
                }

                async fn create_connection(
                    &self,
                    scope: &TenantScope,
                    connection: &Connection,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
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
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn connection(
                    &self,
                    scope: &TenantScope,
                    connection_id: &str,
                ) -> StoreResult<Connection> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let row: Option<ConnectionRow> = sqlx::query_as(sql::SELECT_CONNECTION)
                        .bind(scope.tenant_id())
                        .bind(connection_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    row.ok_or_else(|| StoreError::NotFound(format!("connection {connection_id}")))?
                        .try_into()
                }

                async fn active_connections_between(
                    &self,
                    scope: &TenantScope,
                    a: &str,
                    b: &str,
                ) -> StoreResult<Vec<Connection>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<ConnectionRow> = sqlx::query_as(sql::SELECT_ACTIVE_BETWEEN)
                        .bind(scope.tenant_id())
                        .bind(a)
                        .bind(b)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    rows.into_iter().map(Connection::try_from).collect()
                }

                async fn add_revocation(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                    kind: &str,
                    id: &str,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
                    sqlx::query(sql::INSERT_REVOCATION)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .bind(kind)
                        .bind(id)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn is_revoked(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                    kind: &str,
                    id: &str,
                ) -> StoreResult<bool> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let found = sqlx::query(sql::SELECT_REVOCATION)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .bind(kind)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(found.is_some())
                }

                async fn record_replay(&self, signer_did: &str, msg_id: &str) -> StoreResult<()> {
                    let new = Self::insert_replays(&self.pool, &[(signer_did, msg_id)]).await?;
                    if !new.is_empty() {
                        Ok(())
                    } else {
                        Err(StoreError::Conflict(format!(
                            "{signer_did} sent {msg_id} before"
                        )))
                    }
                }

                async fn count_usage_if_under(
                    &self,
                    scope: &TenantScope,
                    period: &str,
                    cap: Option<u64>,
                ) -> StoreResult<Option<u64>> {
                    // The row locked, as dispatch counts: at the cap, nothing is written
                    // (the transaction rolls back when dropped).
                    let mut tx = self.begin_write(scope).await?;
                    let used = Self::lock_usage(&mut *tx, scope, period).await?;
                    if cap.is_some_and(|cap| used >= cap) {
                        return Ok(None);
                    }
                    Self::add_usage(&mut *tx, scope, period, 1).await?;
                    tx.commit().await?;
                    Ok(Some(used + 1))
                }

                async fn usage(&self, scope: &TenantScope, period: &str) -> StoreResult<u64> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let used = Self::read_usage(&mut *tx, scope, period).await?;
                    tx.commit().await?;
                    Ok(used)
                }

                async fn append_audit(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                    connection_id: &str,
                    entry: NewAuditEntry,
                    extra: AuditExtra,
                ) -> StoreResult<AuditEntry> {
                    let mut tx = self.begin_write(scope).await?;
                    let next = Self::append_in_transaction(
                        &mut tx,
                        scope,
                        agent_did,
                        connection_id,
                        entry,
                        &extra,
                    )
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
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<AuditRow> = sqlx::query_as(sql::SELECT_CHAIN)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .bind(connection_id)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    rows.into_iter().map(AuditEntry::try_from).collect()
                }

                async fn enqueue_message(
                    &self,
                    scope: &TenantScope,
                    message: &NewMessage,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
                    Self::insert_messages(&mut *tx, scope, &[message]).await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn message_status(
                    &self,
                    scope: &TenantScope,
                    id: &str,
                ) -> StoreResult<String> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let status: Option<String> = sqlx::query_scalar(sql::SELECT_MESSAGE_STATUS)
                        .bind(scope.tenant_id())
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    status.ok_or_else(|| StoreError::NotFound(format!("message {id}")))
                }

                async fn put_policy_version(
                    &self,
                    scope: &TenantScope,
                    digest: &str,
                    bytes: &[u8],
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
                    sqlx::query(sql::INSERT_POLICY_VERSION)
                        .bind(scope.tenant_id())
                        .bind(digest)
                        .bind(bytes)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn activate_policy(
                    &self,
                    scope: &TenantScope,
                    digest: &str,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let done = sqlx::query(sql::ACTIVATE_POLICY)
                        .bind(scope.tenant_id())
                        .bind(digest)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("policy version {digest}")));
                    }
                    Ok(())
                }

                async fn active_policy_digest(
                    &self,
                    scope: &TenantScope,
                ) -> StoreResult<Option<String>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let digest = sqlx::query_scalar(sql::SELECT_ACTIVE_POLICY_DIGEST)
                        .bind(scope.tenant_id())
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(digest)
                }

                async fn policy_bytes(
                    &self,
                    scope: &TenantScope,
                    digest: &str,
                ) -> StoreResult<Vec<u8>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let bytes: Option<Vec<u8>> = sqlx::query_scalar(sql::SELECT_POLICY_BYTES)
                        .bind(scope.tenant_id())
                        .bind(digest)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    bytes.ok_or_else(|| StoreError::NotFound(format!("policy version {digest}")))
                }

                // ---- Tenant administration (issue #5, the admin API) ----

                async fn tenants(&self) -> StoreResult<Vec<Tenant>> {
                    let rows: Vec<TenantRow> = sqlx::query_as(sql::SELECT_TENANTS)
                        .fetch_all(&self.pool)
                        .await?;
                    let mut tenants = rows
                        .into_iter()
                        .map(Tenant::try_from)
                        .collect::<StoreResult<Vec<_>>>()?;
                    tenants.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                    Ok(tenants)
                }

                async fn set_plan(&self, scope: &TenantScope, plan: Plan) -> StoreResult<()> {
                    sqlx::query(sql::UPDATE_PLAN)
                        .bind(scope.tenant_id())
                        .bind(plan.as_str())
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn tenant_limits(&self, scope: &TenantScope) -> StoreResult<TenantLimits> {
                    let row: Option<TenantLimitsRow> = sqlx::query_as(sql::SELECT_TENANT_LIMITS)
                        .bind(scope.tenant_id())
                        .fetch_optional(&self.pool)
                        .await?;
                    row.ok_or_else(|| {
                        StoreError::NotFound(format!("tenant {}", scope.tenant_id()))
                    })?
                    .try_into()
                }

                async fn set_tenant_limits(
                    &self,
                    scope: &TenantScope,
                    limits: &TenantLimits,
                ) -> StoreResult<()> {
                    let write =
                        |value: Option<u64>, what: &str| value.map(|v| to_i64(v, what)).transpose();
                    sqlx::query(sql::UPDATE_TENANT_LIMITS)
                        .bind(scope.tenant_id())
                        .bind(write(limits.fuel, "fuel")?)
                        .bind(write(limits.deadline_ms, "deadline_ms")?)
                        .bind(write(limits.memory_bytes, "memory_bytes")?)
                        .bind(limits.concurrency.map(i64::from))
                        .execute(&self.pool)
                        .await?;
                    Ok(())
                }

                async fn create_api_key(
                    &self,
                    scope: &TenantScope,
                    key_id: &str,
                    key_sha256: &str,
                    label: Option<&str>,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
                    sqlx::query(sql::INSERT_API_KEY)
                        .bind(scope.tenant_id())
                        .bind(key_id)
                        .bind(key_sha256)
                        .bind(label)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn api_keys(&self, scope: &TenantScope) -> StoreResult<Vec<ApiKey>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<ApiKeyRow> = sqlx::query_as(sql::SELECT_API_KEYS)
                        .bind(scope.tenant_id())
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(rows.into_iter().map(ApiKey::from).collect())
                }

                async fn revoke_api_key(
                    &self,
                    scope: &TenantScope,
                    key_id: &str,
                ) -> StoreResult<()> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let done = sqlx::query(sql::REVOKE_API_KEY)
                        .bind(scope.tenant_id())
                        .bind(key_id)
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    if done.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("api key {key_id}")));
                    }
                    Ok(())
                }

                async fn tenant_by_api_key(&self, key_sha256: &str) -> StoreResult<TenantScope> {
                    let mut tx = self.begin_host().await?;
                    let tenant: Option<String> = sqlx::query_scalar(sql::SELECT_TENANT_BY_KEY)
                        .bind(key_sha256)
                        .fetch_optional(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    tenant
                        .map(TenantScope::looked_up)
                        .ok_or_else(|| StoreError::NotFound("api key".into()))
                }

                async fn agents(&self, scope: &TenantScope) -> StoreResult<Vec<Agent>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<AgentRow> = sqlx::query_as(sql::SELECT_AGENTS)
                        .bind(scope.tenant_id())
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    let mut agents: Vec<Agent> =
                        rows.into_iter().map(|row| row.into_scoped().1).collect();
                    agents.sort_unstable_by(|a, b| a.did.cmp(&b.did));
                    Ok(agents)
                }

                async fn connections(&self, scope: &TenantScope) -> StoreResult<Vec<Connection>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<ConnectionRow> = sqlx::query_as(sql::SELECT_CONNECTIONS)
                        .bind(scope.tenant_id())
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    let mut connections = rows
                        .into_iter()
                        .map(Connection::try_from)
                        .collect::<StoreResult<Vec<_>>>()?;
                    connections.sort_unstable_by(|a, b| a.connection_id.cmp(&b.connection_id));
                    Ok(connections)
                }

                async fn policy_versions(
                    &self,
                    scope: &TenantScope,
                ) -> StoreResult<Vec<PolicyVersion>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<PolicyVersionRow> = sqlx::query_as(sql::SELECT_POLICY_VERSIONS)
                        .bind(scope.tenant_id())
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    rows.into_iter().map(PolicyVersion::try_from).collect()
                }

                async fn transition_connection(
                    &self,
                    scope: &TenantScope,
                    connection_id: &str,
                    from: &[ConnectionStatus],
                    to: ConnectionStatus,
                    entry: NewAuditEntry,
                ) -> StoreResult<(Connection, AuditEntry)> {
                    let mut tx = self.begin_write(scope).await?;
                    let row: Option<ConnectionRow> = sqlx::query_as(sql::SELECT_CONNECTION)
                        .bind(scope.tenant_id())
                        .bind(connection_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let connection = Connection::try_from(row.ok_or_else(|| {
                        StoreError::NotFound(format!("connection {connection_id}"))
                    })?)?;
                    if !from.contains(&connection.status) {
                        return Err(StoreError::Conflict(format!(
                            "connection {connection_id} is {}",
                            connection.status.as_str()
                        )));
                    }
                    // Only from the status just read: a concurrent change makes this a
                    // conflict instead of a lost update.
                    let done = sqlx::query(sql::UPDATE_CONNECTION_STATUS)
                        .bind(scope.tenant_id())
                        .bind(connection_id)
                        .bind(to.as_str())
                        .bind(connection.status.as_str())
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() != 1 {
                        return Err(StoreError::Conflict(format!(
                            "connection {connection_id} changed meanwhile"
                        )));
                    }
                    if to == ConnectionStatus::Revoked {
                        sqlx::query(sql::INSERT_REVOCATION)
                            .bind(scope.tenant_id())
                            .bind(&connection.agent_did)
                            .bind(REVOKED_CONNECTION)
                            .bind(connection_id)
                            .bind(now_ms())
                            .execute(&mut *tx)
                            .await?;
                    }
                    let next = Self::append_in_transaction(
                        &mut tx,
                        scope,
                        &connection.agent_did,
                        connection_id,
                        entry,
                        &AuditExtra::default(),
                    )
                    .await?;
                    tx.commit().await?;
                    Ok((connection, next))
                }

                async fn record_inbound_batch(
                    &self,
                    scope: &TenantScope,
                    records: Vec<InboundRecord>,
                ) -> StoreResult<Vec<StoreResult<InboundOutcome>>> {
                    let mut refusals: Vec<Option<StoreError>> =
                        records.iter().map(|_| None).collect();
                    let mut tx = self.begin_write(scope).await?;

                    // (0) A connection taken from a cache must still carry messages.
                    let cached: BTreeSet<(&str, &str)> = records
                        .iter()
                        .filter(|record| record.require_usable_connection)
                        .map(InboundRecord::chain)
                        .collect();
                    let cached: Vec<_> = cached.into_iter().collect();
                    let usable = Self::usable_connections(&mut *tx, scope, &cached).await?;
                    for (record, refusal) in records.iter().zip(&mut refusals) {
                        if record.require_usable_connection
                            && !usable.contains(&owned(record.chain()))
                        {
                            *refusal = Some(StoreError::Stale);
                        }
                    }

                    // (1) The replay guard: the first record of a new key passes, any
                    // other is a replay.
                    let keys: BTreeSet<(&str, &str)> = accepted(&records, &refusals)
                        .map(InboundRecord::replay_key)
                        .collect();
                    let keys: Vec<_> = keys.into_iter().collect();
                    let mut new_keys = Self::insert_replays(&mut *tx, &keys).await?;
                    for (record, refusal) in records.iter().zip(&mut refusals) {
                        if refusal.is_none() && !new_keys.remove(&owned(record.replay_key())) {
                            *refusal = Some(StoreError::Replayed);
                        }
                    }

                    // (2) The chains' locks, in key order, then their heads.
                    let chains: BTreeSet<(&str, &str)> = accepted(&records, &refusals)
                        .map(InboundRecord::chain)
                        .collect();
                    let chains: Vec<_> = chains.into_iter().collect();
                    let lock_keys: Vec<String> = chains
                        .iter()
                        .map(|(agent_did, connection_id)| {
                            chain_key(scope, agent_did, connection_id)
                        })
                        .collect();
                    Self::lock_chains(&mut tx, &lock_keys).await?;
                    let mut heads = Self::chain_heads(&mut tx, scope, &chains).await?;

                    // (3) Each period's usage row, locked: allowed records are counted in
                    // order while under their plan's cap.
                    let mut usage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                    for allowed in accepted(&records, &refusals).filter_map(|r| r.allow.as_ref()) {
                        if !usage.contains_key(&allowed.period) {
                            let used = Self::lock_usage(&mut *tx, scope, &allowed.period).await?;
                            usage.insert(allowed.period.clone(), (used, used));
                        }
                    }

                    // (4) The audit entries and the queued messages, in order.
                    let mut outcomes = Vec::with_capacity(records.len());
                    for (record, refusal) in records.iter().zip(refusals) {
                        if let Some(refusal) = refusal {
                            outcomes.push(Err(refusal));
                            continue;
                        }
                        let over_quota = match &record.allow {
                            Some(AllowedInbound { period, plan, .. }) => {
                                let (_, used) = usage.get_mut(period).ok_or_else(|| {
                                    StoreError::Corrupt(format!("usage of {period} not read"))
                                })?;
                                match plan.monthly_cap() {
                                    Some(cap) if *used >= cap => Some((*plan, *used, cap)),
                                    _ => {
                                        *used += 1;
                                        None
                                    }
                                }
                            }
                            None => None,
                        };
                        let fields = match over_quota {
                            Some((plan, used, cap)) => {
                                quota_exceeded_fields(record.audit.clone(), plan, used, cap)
                            }
                            None => record.audit.clone(),
                        };
                        let chain = owned(record.chain());
                        let entry = AuditEntry::next(heads.get(&chain), fields)?;
                        heads.insert(chain, entry.clone());
                        outcomes.push(Ok(match (&record.allow, over_quota) {
                            (_, Some((_, used, cap))) => {
                                InboundOutcome::QuotaExceeded { entry, used, cap }
                            }
                            (Some(_), None) => InboundOutcome::Queued { entry },
                            (None, None) => InboundOutcome::Denied { entry },
                        }));
                    }
                    let appends: Vec<ChainAppend<'_>> = records
                        .iter()
                        .zip(&outcomes)
                        .filter_map(|(record, outcome)| {
                            Some(ChainAppend {
                                agent_did: &record.agent_did,
                                connection_id: &record.connection_id,
                                entry: outcome.as_ref().ok()?.entry(),
                                extra: &record.extra,
                            })
                        })
                        .collect();
                    Self::insert_audits(&mut *tx, scope, &appends).await?;
                    for (period, (before, after)) in &usage {
                        if after > before {
                            Self::add_usage(&mut *tx, scope, period, after - before).await?;
                        }
                    }
                    let queued: Vec<(&NewMessage, Option<&String>)> = records
                        .iter()
                        .zip(&outcomes)
                        .filter_map(|(record, outcome)| match (outcome, &record.allow) {
                            (Ok(InboundOutcome::Queued { .. }), Some(allowed)) => {
                                Some((&allowed.message, record.notify_hosts.as_ref()))
                            }
                            _ => None,
                        })
                        .collect();
                    let messages: Vec<&NewMessage> =
                        queued.iter().map(|(message, _)| *message).collect();
                    Self::insert_messages(&mut *tx, scope, &messages).await?;
                    let events: BTreeSet<&String> =
                        queued.iter().filter_map(|(_, event)| *event).collect();
                    for event in events {
                        Self::notify_in_transaction(&mut tx, event).await?;
                    }
                    tx.commit().await?;
                    Ok(outcomes)
                }

                async fn ping(&self) -> StoreResult<()> {
                    sqlx::query(sql::PING).execute(&self.pool).await?;
                    Ok(())
                }

                async fn queue_depth(&self) -> StoreResult<u64> {
                    let mut tx = self.begin_host().await?;
                    let depth: i64 = sqlx::query_scalar(sql::QUEUE_DEPTH)
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    to_u64(depth, "queue depth")
                }

                async fn revocations(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                ) -> StoreResult<Vec<Revocation>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<RevocationRow> = sqlx::query_as(sql::SELECT_REVOCATIONS)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(rows.into_iter().map(Revocation::from).collect())
                }

                async fn deliverable_messages(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                    offset: u32,
                    limit: u32,
                ) -> StoreResult<Vec<QueuedMessage>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<QueuedMessageRow> = sqlx::query_as(sql::SELECT_DELIVERABLE)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .bind(now_ms())
                        .bind(i64::from(limit))
                        .bind(i64::from(offset))
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    rows.into_iter().map(QueuedMessage::try_from).collect()
                }

                async fn deliverable_count(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                ) -> StoreResult<u64> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let count: i64 = sqlx::query_scalar(sql::COUNT_DELIVERABLE)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .bind(now_ms())
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    to_u64(count, "deliverable count")
                }

                async fn take_for_push(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                    (offset, limit): (u32, u32),
                    in_flight: &HashSet<String>,
                    room: usize,
                ) -> StoreResult<Vec<QueuedMessage>> {
                    // Reads, then writes: the write lock first (SQLite), so the read is
                    // not of a snapshot that another writer makes stale.
                    let mut tx = self.begin_write(scope).await?;
                    let rows: Vec<QueuedMessageRow> = sqlx::query_as(sql::SELECT_DELIVERABLE)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .bind(now_ms())
                        .bind(i64::from(limit))
                        .bind(i64::from(offset))
                        .fetch_all(&mut *tx)
                        .await?;
                    let taken: Vec<QueuedMessageRow> = rows
                        .into_iter()
                        .filter(|row| !in_flight.contains(&row.id))
                        .take(room)
                        .collect();
                    if !taken.is_empty() {
                        let mut query = sqlx::QueryBuilder::<$db>::new(sql::COUNT_ATTEMPTS);
                        query.push_bind(scope.tenant_id()).push(" AND id IN (");
                        let mut ids = query.separated(", ");
                        for row in &taken {
                            ids.push_bind(&row.id);
                        }
                        query.push(")");
                        query.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    taken.into_iter().map(QueuedMessage::try_from).collect()
                }

                async fn ack_messages(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                    ids: &[String],
                ) -> StoreResult<u64> {
                    if ids.is_empty() {
                        return Ok(0);
                    }
                    let mut tx = self.begin_write(scope).await?;
                    let mut query = sqlx::QueryBuilder::<$db>::new(sql::ACK_MESSAGES);
                    query
                        .push_bind(scope.tenant_id())
                        .push(" AND agent_did = ")
                        .push_bind(agent_did)
                        .push(" AND id IN (");
                    let mut separated = query.separated(", ");
                    for id in ids {
                        separated.push_bind(id);
                    }
                    query.push(")");
                    let done = query.build().execute(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(done.rows_affected())
                }

                async fn expire_messages(&self, now_ms: i64) -> StoreResult<u64> {
                    let mut tx = self.begin_maintenance().await?;
                    let done = sqlx::query(sql::EXPIRE_MESSAGES)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(done.rows_affected())
                }

                async fn agent_connections(
                    &self,
                    scope: &TenantScope,
                    agent_did: &str,
                ) -> StoreResult<Vec<Connection>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let rows: Vec<ConnectionRow> = sqlx::query_as(sql::SELECT_AGENT_CONNECTIONS)
                        .bind(scope.tenant_id())
                        .bind(agent_did)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    rows.into_iter().map(Connection::try_from).collect()
                }

                async fn notify_hosts(&self, event: &str) -> StoreResult<()> {
                    self.notify_hosts_impl(event).await
                }

                async fn host_events(
                    &self,
                ) -> StoreResult<Option<$crate::store::postgres::HostEvents>> {
                    self.host_events_impl().await
                }

                async fn audit_chains(
                    &self,
                    scope: &TenantScope,
                ) -> StoreResult<Vec<(String, String)>> {
                    let mut tx = self.begin_scoped(scope).await?;
                    let mut chains: Vec<(String, String)> =
                        sqlx::query_as(sql::SELECT_AUDIT_CHAINS)
                            .bind(scope.tenant_id())
                            .fetch_all(&mut *tx)
                            .await?;
                    tx.commit().await?;
                    // Sorted here, by bytes: a Postgres collation may order text otherwise.
                    chains.sort_unstable();
                    Ok(chains)
                }
            }
        }
    };
}
use store_impl;

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
    pub(super) const SELECT_REVOCATIONS: &str = "SELECT kind, id, created_at FROM revocations \
         WHERE tenant_id = $1 AND agent_did = $2 ORDER BY created_at, kind, id";

    /// Followed by the rows and [`INSERT_REPLAYS_RETURNING_NEW`]: a key already there
    /// inserts nothing and returns nothing (a replay is not an error inside a transaction,
    /// which Postgres would abort).
    pub(super) const INSERT_REPLAYS: &str =
        "INSERT INTO replay_guard (signer_did, msg_id, seen_at) ";
    pub(super) const INSERT_REPLAYS_RETURNING_NEW: &str =
        " ON CONFLICT DO NOTHING RETURNING signer_did, msg_id";

    /// Followed by the rows `(agent_did, connection_id)`, then a query of `wanted`.
    pub(super) const WANTED_CHAINS: &str = "WITH wanted (agent_did, connection_id) AS (";
    /// After [`WANTED_CHAINS`]: the wanted pairs whose connection is active (then the
    /// tenant, [`USABLE_OF_WANTED_NOT_REVOKED`], the revocation kind and `)`).
    pub(super) const USABLE_OF_WANTED: &str = ") SELECT w.agent_did, w.connection_id \
         FROM wanted w JOIN connections c ON c.connection_id = w.connection_id \
         AND c.status = 'active' AND c.tenant_id = ";
    /// ... and not on the agent's revocation list.
    pub(super) const USABLE_OF_WANTED_NOT_REVOKED: &str = " WHERE NOT EXISTS (SELECT 1 \
         FROM revocations r WHERE r.tenant_id = c.tenant_id AND r.agent_did = w.agent_did \
         AND r.id = c.connection_id AND r.kind = ";

    pub(super) const SELECT_USAGE: &str =
        "SELECT inbound FROM usage WHERE tenant_id = $1 AND period = $2";

    /// Row-locks the period's usage (creating it at 0) and returns its count.
    pub(super) const LOCK_USAGE: &str = "INSERT INTO usage (tenant_id, period, inbound) \
         VALUES ($1, $2, 0) ON CONFLICT (tenant_id, period) \
         DO UPDATE SET inbound = usage.inbound RETURNING inbound";
    pub(super) const ADD_USAGE: &str =
        "UPDATE usage SET inbound = inbound + $3 WHERE tenant_id = $1 AND period = $2";

    /// Postgres only: the per-chain locks of appends, held until the transaction ends.
    /// Taken in the order of their lock keys, so two transactions wanting some of the same
    /// chains cannot deadlock (Postgres evaluates a volatile output column after the sort).
    pub(super) const LOCK_CHAINS: &str = "SELECT pg_advisory_xact_lock(lock_key) \
         FROM (SELECT DISTINCT hashtextextended(chain, 0) AS lock_key \
         FROM unnest($1::text[]) AS chain) AS chains ORDER BY lock_key";

    /// SQLite: the last entry of a chain (`$1` tenant, `$2` agent, `$3` connection).
    pub(super) const SELECT_CHAIN_HEAD: &str = "SELECT agent_did, connection_id, seq, \
         timestamp, msg_id, decision, policies_fired, obligations, spend_delta_cents, reason, \
         prev_hash, self_hash FROM audit_entries \
         WHERE tenant_id = $1 AND agent_did = $2 AND connection_id = $3 \
         ORDER BY seq DESC LIMIT 1";
    /// Postgres: the last entry of each chain (`$1` tenant, `$2` agents, `$3` connections),
    /// one statement whatever the number of chains.
    pub(super) const SELECT_CHAIN_HEADS: &str = "SELECT a.agent_did, a.connection_id, a.seq, \
         a.timestamp, a.msg_id, a.decision, a.policies_fired, a.obligations, \
         a.spend_delta_cents, a.reason, a.prev_hash, a.self_hash \
         FROM unnest($2::text[], $3::text[]) AS w(agent_did, connection_id) \
         CROSS JOIN LATERAL (SELECT * FROM audit_entries e WHERE e.tenant_id = $1 \
         AND e.agent_did = w.agent_did AND e.connection_id = w.connection_id \
         ORDER BY e.seq DESC LIMIT 1) AS a";
    pub(super) const SELECT_AUDIT_CHAINS: &str = "SELECT DISTINCT agent_did, connection_id \
         FROM audit_entries WHERE tenant_id = $1";
    pub(super) const SELECT_CHAIN: &str = "SELECT seq, timestamp, msg_id, decision, \
         policies_fired, obligations, spend_delta_cents, reason, prev_hash, self_hash \
         FROM audit_entries WHERE tenant_id = $1 AND agent_did = $2 AND connection_id = $3 \
         ORDER BY seq";
    /// Followed by the rows.
    pub(super) const INSERT_AUDITS: &str = "INSERT INTO audit_entries (tenant_id, agent_did, \
         connection_id, seq, timestamp, msg_id, decision, policies_fired, obligations, \
         spend_delta_cents, reason, prev_hash, self_hash, policy_digest, fuel_used, \
         envelope_sha256) ";

    /// Followed by the rows.
    pub(super) const INSERT_MESSAGES: &str = "INSERT INTO messages (tenant_id, id, agent_did, \
         connection_id, msg_id, msg_type, envelope, peer_did, obligations, policies_fired, \
         status, created_at, expires_at) ";
    pub(super) const SELECT_MESSAGE_STATUS: &str =
        "SELECT status FROM messages WHERE tenant_id = $1 AND id = $2";
    /// Arrival order: queue ids are UUIDv7, ordered by creation within a host.
    pub(super) const SELECT_DELIVERABLE: &str = "SELECT id, agent_did, connection_id, msg_id, \
         msg_type, envelope, peer_did, obligations, policies_fired, attempts, created_at, \
         expires_at FROM messages WHERE tenant_id = $1 AND agent_did = $2 \
         AND status = 'queued' AND (expires_at IS NULL OR expires_at > $3) \
         ORDER BY created_at, id LIMIT $4 OFFSET $5";
    pub(super) const COUNT_DELIVERABLE: &str = "SELECT COUNT(*) FROM messages \
         WHERE tenant_id = $1 AND agent_did = $2 AND status = 'queued' \
         AND (expires_at IS NULL OR expires_at > $3)";
    /// Followed by the tenant, then `AND id IN (...)`.
    pub(super) const COUNT_ATTEMPTS: &str =
        "UPDATE messages SET attempts = attempts + 1 WHERE tenant_id = ";
    /// Followed by the tenant, the agent and the ids.
    pub(super) const ACK_MESSAGES: &str =
        "UPDATE messages SET status = 'delivered' WHERE status = 'queued' AND tenant_id = ";
    pub(super) const EXPIRE_MESSAGES: &str = "UPDATE messages SET status = 'expired' \
         WHERE status = 'queued' AND expires_at <= $1";
    pub(super) const SELECT_AGENT_CONNECTIONS: &str = "SELECT connection_id, agent_did, \
         peer_did, status, token_json, cedar_policies, obligations, expires_at \
         FROM connections WHERE tenant_id = $1 AND agent_did = $2 ORDER BY connection_id";
    pub(super) const QUEUE_DEPTH: &str = "SELECT COUNT(*) FROM messages WHERE status = 'queued'";

    pub(super) const INSERT_POLICY_VERSION: &str = "INSERT INTO policy_versions (tenant_id, \
         digest, bytes, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
    /// Activates only a stored version: no row is inserted when the digest is unknown.
    pub(super) const ACTIVATE_POLICY: &str = "INSERT INTO active_policy (tenant_id, digest) \
         SELECT tenant_id, digest FROM policy_versions WHERE tenant_id = $1 AND digest = $2 \
         ON CONFLICT (tenant_id) DO UPDATE SET digest = excluded.digest";
    pub(super) const SELECT_ACTIVE_POLICY_DIGEST: &str =
        "SELECT digest FROM active_policy WHERE tenant_id = $1";
    pub(super) const SELECT_POLICY_BYTES: &str =
        "SELECT bytes FROM policy_versions WHERE tenant_id = $1 AND digest = $2";

    // ---- Tenant administration (issue #5, the admin API) ----

    pub(super) const SELECT_TENANTS: &str = "SELECT id, plan, created_at FROM tenants";
    pub(super) const UPDATE_PLAN: &str = "UPDATE tenants SET plan = $2 WHERE id = $1";
    pub(super) const SELECT_TENANT_LIMITS: &str = "SELECT limit_fuel, limit_deadline_ms, \
         limit_memory_bytes, limit_concurrency FROM tenants WHERE id = $1";
    pub(super) const UPDATE_TENANT_LIMITS: &str = "UPDATE tenants SET limit_fuel = $2, \
         limit_deadline_ms = $3, limit_memory_bytes = $4, limit_concurrency = $5 WHERE id = $1";
    pub(super) const INSERT_API_KEY: &str = "INSERT INTO api_keys (tenant_id, id, key_sha256, \
         label, created_at) VALUES ($1, $2, $3, $4, $5)";
    pub(super) const SELECT_API_KEYS: &str = "SELECT id, label, created_at, revoked_at \
         FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id";
    pub(super) const REVOKE_API_KEY: &str = "UPDATE api_keys \
         SET revoked_at = COALESCE(revoked_at, $3) WHERE tenant_id = $1 AND id = $2";
    pub(super) const SELECT_TENANT_BY_KEY: &str =
        "SELECT tenant_id FROM api_keys WHERE key_sha256 = $1 AND revoked_at IS NULL";
    pub(super) const SELECT_AGENTS: &str = "SELECT tenant_id, did, public_key_multibase, \
         did_document, agent_card, arp_json FROM agents WHERE tenant_id = $1";
    pub(super) const SELECT_CONNECTIONS: &str = "SELECT connection_id, agent_did, peer_did, \
         status, token_json, cedar_policies, obligations, expires_at FROM connections \
         WHERE tenant_id = $1";
    /// `length` of a blob / bytea is its size in bytes on both backends.
    pub(super) const SELECT_POLICY_VERSIONS: &str = "SELECT digest, \
         CAST(length(bytes) AS BIGINT) AS size_bytes, created_at FROM policy_versions \
         WHERE tenant_id = $1 ORDER BY created_at, digest";
    pub(super) const UPDATE_CONNECTION_STATUS: &str = "UPDATE connections SET status = $3 \
         WHERE tenant_id = $1 AND connection_id = $2 AND status = $4";

    pub(super) const PING: &str = "SELECT 1";

    /// Postgres only (row-level security, migration 0003): the role of every pooled
    /// connection, which owns no table, so the policies apply to it.
    pub(super) const SET_APP_ROLE: &str = "SET ROLE arp_app";
    /// Postgres only: the tenant of the current transaction.
    pub(super) const SET_TENANT: &str = "SELECT set_config('arp.tenant_id', $1, true)";
    /// Postgres only: tell every listening host (at commit, inside a transaction).
    pub(super) const NOTIFY_HOSTS: &str = "SELECT pg_notify($1, $2)";
    /// Postgres only: a host-wide read in the current transaction.
    pub(super) const SET_HOST_SCOPE: &str = "SELECT set_config('arp.scope', 'host', true)";
    /// Postgres only: host-wide queue upkeep in the current transaction.
    pub(super) const SET_MAINTENANCE_SCOPE: &str =
        "SELECT set_config('arp.scope', 'maintenance', true)";
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
    fn a_quota_refusal_is_a_deny_without_obligations() {
        let allowed = NewAuditEntry {
            timestamp: "2026-12-03T19:35:52.000Z".to_owned(),
            msg_id: "m-1".to_owned(),
            decision: AuditDecision::Allow,
            policies_fired: vec!["policy0".to_owned()],
            obligations: vec![Obligation {
                kind: "spend_cap".to_owned(),
                params: serde_json::json!({"max_cents": 500}),
            }],
            spend_delta_cents: 0,
            reason: None,
        };
        let refused = quota_exceeded_fields(allowed.clone(), Plan::Pro, 10_000, 10_000);
        assert_eq!(
            refused,
            NewAuditEntry {
                decision: AuditDecision::Deny,
                reason: Some("quota_exceeded:pro:10000/10000".to_owned()),
                obligations: Vec::new(),
                ..allowed
            }
        );
    }

    #[test]
    fn chain_keys_do_not_run_into_each_other() {
        let scope = TenantScope::looked_up("t".into());
        assert_ne!(chain_key(&scope, "a", "bc"), chain_key(&scope, "ab", "c"));
    }
}
