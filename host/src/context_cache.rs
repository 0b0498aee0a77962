//! What dispatch reads for every envelope but rarely changes, kept in memory for a short
//! while so the hot path does not ask the store: the hosted agent at a DID, a tenant's
//! plan, limits and active policy, and the usable connection between an agent and a peer.
//!
//! Why this is safe:
//! - Agents are never changed or removed once created, so a route stays true.
//! - A tenant's plan, limits or active policy changed on this host invalidate its entry at
//!   once (the admin API calls [`ContextCache::invalidate_tenant`]); another host sharing
//!   the store sees the change within [`TENANT_TTL`].
//! - A cached connection is only ever one that was active and not revoked, and the store
//!   checks that again inside the transaction that records the message
//!   ([`crate::store::InboundRecord::require_usable_connection`]); a connection suspended or
//!   revoked meanwhile makes that transaction fail as stale, and dispatch retries without
//!   the cache. So no message is accepted on a connection after its suspension committed.

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::pdp::TenantLimits;
use crate::store::{Agent, Connection, Plan, TenantScope};

/// How long a tenant's plan, limits and active policy are reused.
pub const TENANT_TTL: Duration = Duration::from_secs(1);
/// How long a usable connection is reused without asking the store.
pub const CONNECTION_TTL: Duration = Duration::from_secs(1);
/// How long a route (DID → hosted agent) is reused.
pub const ROUTE_TTL: Duration = Duration::from_secs(60);
/// Entries per map: the working set of a busy host, bounded.
const CAPACITY: usize = 10_000;

/// A tenant's settings that every decision needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantContext {
    /// The plan (the quota's cap).
    pub plan: Plan,
    /// The operator's limits for its decisions.
    pub limits: TenantLimits,
    /// The digest of its active policy; `None`: the default policy.
    pub active_policy: Option<String>,
}

/// A route: the tenant and the hosted agent at a DID.
type Route = (TenantScope, Agent);

/// The key of a connection lookup: tenant, agent, signer, and the id the envelope named.
type ConnectionKey = (String, String, String, Option<String>);

/// The cache; shared by dispatch and the admin API.
#[derive(Debug)]
pub struct ContextCache {
    routes: Mutex<LruCache<String, (Instant, Route)>>,
    tenants: Mutex<LruCache<String, (Instant, TenantContext)>>,
    connections: Mutex<LruCache<ConnectionKey, (Instant, Connection)>>,
}

impl Default for ContextCache {
    fn default() -> Self {
        let capacity = NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN);
        Self {
            routes: Mutex::new(LruCache::new(capacity)),
            tenants: Mutex::new(LruCache::new(capacity)),
            connections: Mutex::new(LruCache::new(capacity)),
        }
    }
}

/// The value of `map[key]` if it is younger than `ttl` (an older one is dropped).
fn fresh<K, V>(map: &Mutex<LruCache<K, (Instant, V)>>, key: &K, ttl: Duration) -> Option<V>
where
    K: std::hash::Hash + Eq,
    V: Clone,
{
    // A panic elsewhere cannot leave an LRU half-updated in a way that matters here.
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    match map.get(key) {
        Some((at, value)) if at.elapsed() < ttl => Some(value.clone()),
        Some(_) => {
            map.pop(key);
            None
        }
        None => None,
    }
}

fn put<K: std::hash::Hash + Eq, V>(map: &Mutex<LruCache<K, (Instant, V)>>, key: K, value: V) {
    map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .put(key, (Instant::now(), value));
}

impl ContextCache {
    /// The hosted agent at `did`, if cached.
    pub fn route(&self, did: &str) -> Option<Route> {
        fresh(&self.routes, &did.to_owned(), ROUTE_TTL)
    }

    /// Remembers the hosted agent at `did`.
    pub fn put_route(&self, did: &str, scope: &TenantScope, agent: &Agent) {
        put(&self.routes, did.to_owned(), (scope.clone(), agent.clone()));
    }

    /// The tenant's context, if cached.
    pub fn tenant(&self, scope: &TenantScope) -> Option<TenantContext> {
        fresh(&self.tenants, &scope.tenant_id().to_owned(), TENANT_TTL)
    }

    /// Remembers the tenant's context.
    pub fn put_tenant(&self, scope: &TenantScope, context: TenantContext) {
        put(&self.tenants, scope.tenant_id().to_owned(), context);
    }

    /// Forgets everything cached of the tenant (its settings and connections changed).
    pub fn invalidate_tenant(&self, tenant_id: &str) {
        self.tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop(tenant_id);
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<ConnectionKey> = connections
            .iter()
            .filter(|(key, _)| key.0 == tenant_id)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            connections.pop(&key);
        }
    }

    /// The usable connection for this lookup, if cached.
    pub fn connection(
        &self,
        scope: &TenantScope,
        agent: &str,
        signer: &str,
        named: Option<&str>,
    ) -> Option<Connection> {
        let key = connection_key(scope, agent, signer, named);
        fresh(&self.connections, &key, CONNECTION_TTL)
    }

    /// Remembers a connection found usable (active, not revoked) for this lookup.
    pub fn put_connection(
        &self,
        scope: &TenantScope,
        agent: &str,
        signer: &str,
        named: Option<&str>,
        connection: &Connection,
    ) {
        let key = connection_key(scope, agent, signer, named);
        put(&self.connections, key, connection.clone());
    }
}

fn connection_key(
    scope: &TenantScope,
    agent: &str,
    signer: &str,
    named: Option<&str>,
) -> ConnectionKey {
    (
        scope.tenant_id().to_owned(),
        agent.to_owned(),
        signer.to_owned(),
        named.map(str::to_owned),
    )
}
