//! The dispatch pipeline of `POST /didcomm` (ARP-PROTOCOL §2), one stage after another:
//! route (host → agent → tenant) → envelope (parse, resolve the signer, verify, claims) →
//! connection (lookup, status, revocation) → policy decision → one store transaction
//! (replay guard, quota, audit append, enqueue), shared with concurrent envelopes of the
//! tenant ([`crate::recorder`]).
//!
//! Start with [`Dispatcher::dispatch`]. It never waits for an agent: an accepted message
//! is durably queued before the answer, and delivery happens elsewhere. Every refusal is a
//! [`DispatchError`] carrying the wire reason code; only a failing store is a 5xx.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::audit::{AuditDecision, NewAuditEntry, format_timestamp};
use crate::clock::now_ms;
use crate::connection::{self, ConnectionToken, LookupError, StatusDenial};
use crate::context_cache::{ContextCache, TenantContext};
use crate::delivery::Hub;
use crate::envelope::{self, ClaimError, EnvelopeError, VerifiedEnvelope, is_response_type};
use crate::mapping::map_request;
use crate::metrics::Metrics;
use crate::pdp::{
    self, CompiledPolicy, Decision, Effect, Message, Pdp, PolicyFailure, PolicyLimits,
    PolicyRegistry,
};
use crate::peers::PeerResolver;
use crate::recorder::Recorder;
use crate::routing::agent_did_from_host;
use crate::store::{
    AllowedInbound, AuditExtra, Connection, InboundOutcome, InboundRecord, NewMessage, Store,
    StoreError, TenantScope,
};

/// The reason of an allow the PDP was skipped for (responses).
pub const AUTO_ALLOW_RESPONSE: &str = "auto_allow_response";

/// Dispatch settings.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// How far `created_time` may be from the host clock.
    pub clock_window: Duration,
    /// Limits of every policy decision.
    pub policy_limits: PolicyLimits,
    /// How long a queued message stays deliverable (§4: 7 days).
    pub message_ttl: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            clock_window: envelope::DEFAULT_CLOCK_WINDOW,
            policy_limits: PolicyLimits::default(),
            message_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What an accepted envelope came to (answered 202).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed and durably queued under `message_id`.
    Queued {
        /// The queue id (a UUID).
        message_id: String,
    },
    /// Refused by the tenant's policy (`policy_denied`) or its quota (`quota_exceeded`).
    Denied {
        /// The wire reason.
        reason: &'static str,
    },
}

/// Why an envelope was refused before a decision could be recorded, or could not be
/// recorded.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The host names no agent hosted here.
    #[error("no agent is hosted at this host")]
    UnknownAgent,
    /// The envelope does not parse or verify.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// `from`, `to` or `created_time` is refused.
    #[error(transparent)]
    Claims(#[from] ClaimError),
    /// No connection could be chosen.
    #[error(transparent)]
    Connection(LookupError),
    /// The connection carries no messages (the refusal is audited).
    #[error("the connection is not active: {}", .0.code())]
    ConnectionDenied(StatusDenial),
    /// This (signer, message id) was accepted before.
    #[error("this message id was already received from this signer")]
    Replayed,
    /// The store failed: nothing was recorded, the sender may retry.
    #[error("store: {0}")]
    Store(StoreError),
}

impl DispatchError {
    /// The HTTP status: 404 for an unknown agent, 409 for a replay, 503 when the store is
    /// unreachable, 500 for another store failure, 400 for everything the sender got wrong.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownAgent => 404,
            Self::Replayed => 409,
            Self::Store(StoreError::Unavailable(_)) => 503,
            Self::Store(_) => 500,
            _ => 400,
        }
    }

    /// The wire reason code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownAgent => "unknown_agent",
            Self::Envelope(error) => error.code(),
            Self::Claims(error) => error.code(),
            Self::Connection(error) => error.code(),
            Self::ConnectionDenied(denial) => denial.code(),
            Self::Replayed => "replayed_message",
            Self::Store(StoreError::Unavailable(_)) => "store_unavailable",
            Self::Store(_) => "store_error",
        }
    }
}

impl From<StoreError> for DispatchError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Replayed => Self::Replayed,
            other => Self::Store(other),
        }
    }
}

impl From<LookupError> for DispatchError {
    fn from(error: LookupError) -> Self {
        match error {
            LookupError::Store(error) => error.into(),
            other => Self::Connection(other),
        }
    }
}

/// Runs the pipeline; shared by every request.
#[derive(Debug)]
pub struct Dispatcher {
    store: Arc<dyn Store>,
    pdp: Arc<Pdp>,
    registry: Arc<PolicyRegistry>,
    default_policy: Arc<CompiledPolicy>,
    peers: PeerResolver,
    metrics: Arc<Metrics>,
    config: DispatchConfig,
    hub: Option<Arc<Hub>>,
    cache: Arc<ContextCache>,
    recorder: Arc<Recorder>,
}

/// The verified envelope and where it goes: what the later stages need.
struct Routed {
    scope: TenantScope,
    target: String,
    envelope: VerifiedEnvelope,
    connection: Connection,
    /// The connection came from the cache: usable when cached, checked again at commit.
    connection_cached: bool,
    now_ms: i64,
}

impl Dispatcher {
    /// A dispatcher over these parts.
    pub fn new(
        store: Arc<dyn Store>,
        pdp: Arc<Pdp>,
        registry: Arc<PolicyRegistry>,
        default_policy: Arc<CompiledPolicy>,
        peers: PeerResolver,
        metrics: Arc<Metrics>,
        config: DispatchConfig,
    ) -> Self {
        Self {
            recorder: Recorder::new(store.clone()),
            store,
            pdp,
            registry,
            default_policy,
            peers,
            metrics,
            config,
            hub: None,
            cache: Arc::new(ContextCache::default()),
        }
    }

    /// What dispatch caches (the admin API invalidates a tenant's entries on changes).
    pub fn cache(&self) -> &Arc<ContextCache> {
        &self.cache
    }

    /// Signals `hub` after each queued message, so a connected agent gets it at once.
    pub fn with_delivery(mut self, hub: Arc<Hub>) -> Self {
        self.hub = Some(hub);
        self
    }

    /// The metrics dispatch records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The store dispatch writes to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Handles one envelope sent to `host` (already chosen from `target`,
    /// `X-Forwarded-Host` and `Host`).
    pub async fn dispatch(
        &self,
        host: Option<&str>,
        compact: &str,
    ) -> Result<Outcome, DispatchError> {
        let target = host
            .and_then(agent_did_from_host)
            .ok_or(DispatchError::UnknownAgent)?;
        self.dispatch_to(&target, compact).await
    }

    /// Handles one envelope sent to the agent `target` (a DID): a POST after routing, or
    /// an agent's `outbound_envelope`.
    pub async fn dispatch_to(&self, target: &str, compact: &str) -> Result<Outcome, DispatchError> {
        let routed = self
            .route_and_verify(target.to_owned(), compact, true)
            .await?;
        let tenant = routed.scope.tenant_id().to_owned();
        self.metrics.inbound(&tenant);
        let mut result = self.decide_and_record(routed).await;
        if let Err(DispatchError::Store(StoreError::Stale)) = result {
            // The cached connection changed under us: decide again from the store.
            self.cache.invalidate_tenant(&tenant);
            let routed = self
                .route_and_verify(target.to_owned(), compact, false)
                .await?;
            result = self.decide_and_record(routed).await;
        }
        match &result {
            Ok(Outcome::Queued { .. }) => {
                self.metrics.queued(&tenant);
                if let Some(hub) = &self.hub {
                    hub.message_queued(target);
                }
            }
            Ok(Outcome::Denied { reason }) => self.metrics.denied(&tenant, reason),
            Err(DispatchError::ConnectionDenied(denial)) => {
                self.metrics.denied(&tenant, denial.code());
            }
            Err(_) => {}
        }
        result
    }

    async fn route_and_verify(
        &self,
        target: String,
        compact: &str,
        use_cache: bool,
    ) -> Result<Routed, DispatchError> {
        let scope = match self.cache.route(&target) {
            Some((scope, _)) => scope,
            None => match self.store.agent_by_did(&target).await {
                Ok((scope, agent)) => {
                    self.cache.put_route(&target, &scope, &agent);
                    scope
                }
                Err(StoreError::NotFound(_)) => return Err(DispatchError::UnknownAgent),
                Err(error) => return Err(error.into()),
            },
        };
        let parsed = envelope::parse(compact)?;
        let document = self
            .peers
            .resolve(self.store.as_ref(), &parsed.signer)
            .await?
            .ok_or_else(|| EnvelopeError::UnknownPeer {
                did: parsed.signer.clone(),
            })?;
        let envelope = parsed.verify_with_document(&document)?;
        let now_ms = now_ms();
        envelope::check_claims(&envelope, &target, now_ms, self.config.clock_window)?;
        let named = connection::named_in(&envelope.payload.body);
        let cached = use_cache
            .then(|| {
                self.cache
                    .connection(&scope, &target, &envelope.signer, named)
            })
            .flatten();
        let connection_cached = cached.is_some();
        let connection = match cached {
            Some(connection) => connection,
            None => {
                connection::find(
                    self.store.as_ref(),
                    &scope,
                    &target,
                    &envelope.signer,
                    &envelope.payload.body,
                )
                .await?
            }
        };
        Ok(Routed {
            scope,
            target,
            envelope,
            connection,
            connection_cached,
            now_ms,
        })
    }

    async fn decide_and_record(&self, routed: Routed) -> Result<Outcome, DispatchError> {
        let Routed {
            scope,
            target,
            envelope,
            connection,
            connection_cached,
            now_ms,
        } = routed;
        let payload = &envelope.payload;
        let mut record = InboundRecord {
            signer_did: envelope.signer.clone(),
            msg_id: payload.id.clone(),
            agent_did: target.clone(),
            connection_id: connection.connection_id.clone(),
            audit: NewAuditEntry {
                timestamp: format_timestamp(now_ms).map_err(StoreError::from)?,
                msg_id: payload.id.clone(),
                decision: AuditDecision::Deny,
                policies_fired: Vec::new(),
                obligations: Vec::new(),
                spend_delta_cents: 0,
                reason: None,
            },
            extra: AuditExtra {
                envelope_sha256: Some(format!(
                    "sha256:{}",
                    hex::encode(Sha256::digest(envelope.compact.as_bytes()))
                )),
                ..AuditExtra::default()
            },
            allow: None,
            require_usable_connection: connection_cached,
            notify_hosts: None,
        };

        let denial = match connection::check_status(&connection, now_ms) {
            Err(denial) => Some(denial),
            Ok(()) if connection_cached => None,
            Ok(()) => {
                let revoked = self
                    .store
                    .is_revoked(
                        &scope,
                        &target,
                        connection::REVOKED_CONNECTION,
                        &connection.connection_id,
                    )
                    .await?;
                if !revoked {
                    let named = connection::named_in(&envelope.payload.body);
                    self.cache.put_connection(
                        &scope,
                        &target,
                        &envelope.signer,
                        named,
                        &connection,
                    );
                }
                revoked.then_some(StatusDenial::RevocationListed)
            }
        };
        if let Some(denial) = denial {
            record.audit.reason = Some(denial.code().to_owned());
            self.recorder.record(&scope, record).await?;
            return Err(DispatchError::ConnectionDenied(denial));
        }

        let decision = if is_response_type(&payload.kind) {
            Decision {
                effect: Effect::Allow,
                policies_fired: Vec::new(),
                obligations: Vec::new(),
                reasons: vec![AUTO_ALLOW_RESPONSE.to_owned()],
                failure: None,
                fuel_used: 0,
            }
        } else {
            let (digest, decision) = self.decide(&scope, &envelope, &connection, now_ms).await?;
            record.extra.policy_digest = Some(digest);
            record.extra.fuel_used = Some(decision.fuel_used);
            decision
        };
        if let Some(failure) = &decision.failure {
            tracing::warn!(
                tenantId = scope.tenant_id(),
                agentDid = target,
                reason = failure.code(),
                detail = failure.detail().unwrap_or_default(),
                "policy failed; the message is denied"
            );
        }

        record.audit.policies_fired = decision.policies_fired;
        if decision.effect == Effect::Allow {
            record.audit.decision = AuditDecision::Allow;
            record.audit.obligations = decision.obligations;
            record.audit.reason = (decision.reasons.first().map(String::as_str)
                == Some(AUTO_ALLOW_RESPONSE))
            .then(|| AUTO_ALLOW_RESPONSE.to_owned());
            let tenant = self.tenant_context(&scope).await?;
            record.notify_hosts = self
                .hub
                .as_ref()
                .and_then(|hub| hub.queued_event_for(&target));
            let expires_at_ms = now_ms.saturating_add(
                i64::try_from(self.config.message_ttl.as_millis()).unwrap_or(i64::MAX),
            );
            record.allow = Some(AllowedInbound {
                period: record.audit.timestamp[..7].to_owned(),
                plan: tenant.plan,
                message: NewMessage {
                    id: new_message_id(),
                    agent_did: target.clone(),
                    connection_id: connection.connection_id.clone(),
                    msg_id: payload.id.clone(),
                    msg_type: payload.kind.clone(),
                    envelope: envelope.compact.clone(),
                    peer_did: envelope.signer.clone(),
                    obligations: record.audit.obligations.clone(),
                    policies_fired: record.audit.policies_fired.clone(),
                    expires_at_ms: Some(expires_at_ms),
                },
            });
        } else {
            record.audit.reason = Some(if decision.reasons.is_empty() {
                "policy_denied".to_owned()
            } else {
                decision.reasons.join("; ")
            });
        }
        let message_id = record.allow.as_ref().map(|allow| allow.message.id.clone());
        match self.recorder.record(&scope, record).await? {
            InboundOutcome::Queued { .. } => Ok(Outcome::Queued {
                message_id: message_id.unwrap_or_default(),
            }),
            InboundOutcome::QuotaExceeded { .. } => Ok(Outcome::Denied {
                reason: "quota_exceeded",
            }),
            InboundOutcome::Denied { .. } => Ok(Outcome::Denied {
                reason: "policy_denied",
            }),
        }
    }

    /// Runs the tenant's active policy (the default `cedar` when none was activated) and
    /// returns its digest with the decision.
    async fn decide(
        &self,
        scope: &TenantScope,
        envelope: &VerifiedEnvelope,
        connection: &Connection,
        now_ms: i64,
    ) -> Result<(String, Decision), DispatchError> {
        let payload = &envelope.payload;
        let token = ConnectionToken::of_stored(connection);
        let mut request = map_request(
            payload,
            &envelope.signer,
            &connection.connection_id,
            &token.issuer,
        );
        request.tenant = scope.tenant_id().to_owned();
        request.connection = pdp::Connection {
            id: connection.connection_id.clone(),
            status: connection.status.as_str().to_owned(),
            issuer: token.issuer,
            purpose: token.purpose,
            scopes: token.scopes,
            cedar_policies: connection.cedar_policies.clone(),
            obligation_policies: token.obligation_policies,
            obligations: connection.obligations.clone(),
            expires_at_ms: connection.expires_at_ms,
        };
        request.message = Message {
            id: payload.id.clone(),
            kind: payload.kind.clone(),
            thread_id: payload.thid.clone(),
        };
        request.now_ms = now_ms;

        let tenant = self.tenant_context(scope).await?;
        let (digest, policy) = match tenant.active_policy {
            None => (
                self.default_policy.digest.clone(),
                Ok(self.default_policy.clone()),
            ),
            Some(digest) => {
                let policy = self.load_policy(scope, &digest).await?;
                (digest, policy)
            }
        };
        // The tenant's own limits (set by the operator through the admin API).
        let tenant_limits = tenant.limits;
        let limits = tenant_limits.apply(self.config.policy_limits);
        let concurrency = tenant_limits
            .concurrency
            .and_then(|permits| usize::try_from(permits).ok());
        let started = Instant::now();
        let decision = match policy {
            Ok(policy) => {
                self.pdp
                    .decide_limited(policy, limits, &request, concurrency)
                    .await
            }
            Err(failure) => Decision::failed(failure, 0),
        };
        self.metrics
            .pdp_latency(scope.tenant_id(), started.elapsed());
        Ok((digest, decision))
    }

    /// The tenant's plan, limits and active policy: cached, or read from the store.
    async fn tenant_context(&self, scope: &TenantScope) -> Result<TenantContext, DispatchError> {
        if let Some(context) = self.cache.tenant(scope) {
            return Ok(context);
        }
        let context = TenantContext {
            plan: self.store.tenant(scope).await?.plan,
            limits: self.store.tenant_limits(scope).await?,
            active_policy: self.store.active_policy_digest(scope).await?,
        };
        self.cache.put_tenant(scope, context.clone());
        Ok(context)
    }

    /// A tenant policy by digest: compiled already, or read from the store and compiled
    /// off the async reactor. A policy that cannot be loaded denies (fail closed).
    async fn load_policy(
        &self,
        scope: &TenantScope,
        digest: &str,
    ) -> Result<Result<Arc<CompiledPolicy>, PolicyFailure>, DispatchError> {
        if let Some(policy) = self.registry.get(digest) {
            return Ok(Ok(policy));
        }
        let bytes = self.store.policy_bytes(scope, digest).await?;
        let registry = self.registry.clone();
        let loaded = tokio::task::spawn_blocking(move || registry.load(&bytes)).await;
        Ok(match loaded {
            Ok(Ok(policy)) => Ok(policy),
            Ok(Err(error)) => Err(PolicyFailure::Unavailable(format!(
                "active policy {digest} cannot be loaded: {error}"
            ))),
            Err(error) => Err(PolicyFailure::Unavailable(format!(
                "loading policy {digest} failed: {error}"
            ))),
        })
    }
}

/// A random (v4) UUID, the queue id of a message.
fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
