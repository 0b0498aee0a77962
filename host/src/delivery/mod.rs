//! Delivery to connected agents (ARP-PROTOCOL §4): the [`Hub`] knows which agents hold a
//! live WebSocket session on this host and signals them; [`ws`] runs one session (auth,
//! `server_hello`, the at-least-once drain, acks, `outbound_envelope`); [`bearer`] checks
//! the agent's credentials.
//!
//! Delivery is at least once: a message stays `queued` in the store until its agent acks
//! it, so nothing depends on a push succeeding. The hub only says *when* to look:
//! dispatch calls [`Hub::message_queued`] after a commit; a session also rescans on a
//! timer, which retries unacked pushes and catches any missed signal.
//!
//! Several hosts may share one Postgres. Each host then listens to the store's host
//! events ([`Store::host_events`]): `queued` wakes the session holding the agent, wherever
//! it is; `session` announces a new session, and any other host holding an older one for
//! the same agent closes it (4000 `superseded`), so exactly one session lives;
//! `connection` carries a revocation or suspension to the agent's session.

pub mod bearer;
pub mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use crate::clock::now_ms;
use crate::store::{Store, TenantScope};

/// Delivery settings.
#[derive(Clone, Copy, Debug)]
pub struct DeliveryConfig {
    /// WebSocket pings go out this often; a peer silent for two intervals is dropped
    /// (§4: 25 s).
    pub ping_interval: Duration,
    /// A push not acked within this long is sent again.
    pub ack_timeout: Duration,
    /// Pushes in flight (sent, not yet acked) per session: the drain does not wait for
    /// each ack, but a slow agent is not flooded either.
    pub window: u32,
    /// How often a session rescans its queue although nothing signalled it (a safety
    /// net for lost host events).
    pub rescan_interval: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            ack_timeout: Duration::from_secs(30),
            window: 64,
            rescan_interval: Duration::from_secs(5),
        }
    }
}

/// What a session is told to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionSignal {
    /// New messages may be queued: drain.
    Wake,
    /// A newer session of the same agent took over: close with 4000 `superseded`.
    Superseded,
    /// A connection of the agent was revoked or suspended: send `revocation`.
    Revocation {
        /// The connection.
        connection_id: String,
        /// `revoked` or `suspended`.
        reason: String,
    },
    /// The host is shutting down: send `shutdown` and close.
    Shutdown,
}

/// An event between hosts sharing a store, as JSON text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum HostEvent {
    /// A message for `agent` was queued.
    Queued { agent: String },
    /// `session` (ordered by creation) now serves `agent`.
    Session { agent: String, session: String },
    /// A connection of `agent` changed.
    Connection {
        agent: String,
        connection_id: String,
        reason: String,
    },
}

/// A live session on this host.
#[derive(Debug)]
struct SessionHandle {
    /// A UUIDv7: later sessions have greater ids, on any host (up to clock skew).
    id: String,
    signals: mpsc::UnboundedSender<SessionSignal>,
    /// A `Wake` is waiting in `signals`: one is enough, as a drain reads everything
    /// queued before it starts.
    woken: Arc<AtomicBool>,
}

impl SessionHandle {
    fn send(&self, signal: SessionSignal) -> bool {
        if signal == SessionSignal::Wake && self.woken.swap(true, Ordering::AcqRel) {
            return true;
        }
        self.signals.send(signal).is_ok()
    }
}

/// A registered session: its id and its signal inbox.
#[derive(Debug)]
pub struct SessionTicket {
    /// The session id.
    pub id: String,
    /// Signals for the session.
    pub signals: mpsc::UnboundedReceiver<SessionSignal>,
    /// Set while a `Wake` waits in `signals`: the session clears it when it takes the
    /// `Wake`, before it drains.
    pub woken: Arc<AtomicBool>,
}

/// The sessions of this host and the signals between them, dispatch and other hosts.
#[derive(Debug)]
pub struct Hub {
    store: Arc<dyn Store>,
    config: DeliveryConfig,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    shutting_down: tokio::sync::watch::Sender<bool>,
}

impl Hub {
    /// A hub over `store`.
    pub fn new(store: Arc<dyn Store>, config: DeliveryConfig) -> Self {
        Self {
            store,
            config,
            sessions: Mutex::new(HashMap::new()),
            shutting_down: tokio::sync::watch::Sender::new(false),
        }
    }

    /// The delivery settings.
    pub fn config(&self) -> DeliveryConfig {
        self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionHandle>> {
        // A panic while holding the map cannot leave it half-updated (single inserts and
        // removes), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new session for `agent_did`, superseding this host's older one, and
    /// tells the other hosts so they close theirs.
    pub async fn register(&self, agent_did: &str) -> SessionTicket {
        let (sender, signals) = mpsc::unbounded_channel();
        let id = uuid::Uuid::now_v7().to_string();
        let woken = Arc::new(AtomicBool::new(false));
        let previous = self.sessions().insert(
            agent_did.to_owned(),
            SessionHandle {
                id: id.clone(),
                signals: sender,
                woken: woken.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.send(SessionSignal::Superseded);
        }
        self.tell_hosts(&HostEvent::Session {
            agent: agent_did.to_owned(),
            session: id.clone(),
        })
        .await;
        SessionTicket { id, signals, woken }
    }

    /// Removes the session `id` of `agent_did` (not a newer one that replaced it).
    pub fn unregister(&self, agent_did: &str, id: &str) {
        let mut sessions = self.sessions();
        if sessions
            .get(agent_did)
            .is_some_and(|handle| handle.id == id)
        {
            sessions.remove(agent_did);
        }
    }

    /// Agents with a live session on this host.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Signals the local session of `agent_did`; `false` when there is none.
    fn signal_local(&self, agent_did: &str, signal: SessionSignal) -> bool {
        self.sessions()
            .get(agent_did)
            .is_some_and(|handle| handle.send(signal))
    }

    /// What to tell the other hosts when a message for `agent_did` commits: nothing when
    /// its session is here, else a `queued` event (sent inside the recording transaction,
    /// see [`crate::store::InboundRecord::notify_hosts`]).
    pub fn queued_event_for(&self, agent_did: &str) -> Option<String> {
        if self.sessions().contains_key(agent_did) {
            return None;
        }
        serde_json::to_string(&HostEvent::Queued {
            agent: agent_did.to_owned(),
        })
        .ok()
    }

    /// A message for `agent_did` was committed to the queue: wake its session if it is
    /// here (another host was told by the transaction).
    pub fn message_queued(&self, agent_did: &str) {
        self.signal_local(agent_did, SessionSignal::Wake);
    }

    /// A connection of `agent_did` was revoked or suspended (`reason`): tell its session,
    /// here or on another host.
    pub async fn connection_changed(&self, agent_did: &str, connection_id: &str, reason: &str) {
        let signal = SessionSignal::Revocation {
            connection_id: connection_id.to_owned(),
            reason: reason.to_owned(),
        };
        if !self.signal_local(agent_did, signal) {
            self.tell_hosts(&HostEvent::Connection {
                agent: agent_did.to_owned(),
                connection_id: connection_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await;
        }
    }

    async fn tell_hosts(&self, event: &HostEvent) {
        let Ok(text) = serde_json::to_string(event) else {
            return;
        };
        // Best effort: a lost event delays a push until the session's rescan; it loses
        // nothing, as the queue is the truth.
        if let Err(error) = self.store.notify_hosts(&text).await {
            tracing::warn!(%error, "could not notify the other hosts");
        }
    }

    /// Acts on an event from another host (or this one: events come back to their
    /// sender, and are harmless there).
    fn on_host_event(&self, text: &str) {
        let Ok(event) = serde_json::from_str::<HostEvent>(text) else {
            tracing::warn!(event = text, "ignoring an unreadable host event");
            return;
        };
        match event {
            HostEvent::Queued { agent } => {
                self.signal_local(&agent, SessionSignal::Wake);
            }
            HostEvent::Session { agent, session } => {
                let mut sessions = self.sessions();
                if sessions
                    .get(&agent)
                    .is_some_and(|handle| handle.id < session)
                    && let Some(older) = sessions.remove(&agent)
                {
                    older.send(SessionSignal::Superseded);
                }
            }
            HostEvent::Connection {
                agent,
                connection_id,
                reason,
            } => {
                self.signal_local(
                    &agent,
                    SessionSignal::Revocation {
                        connection_id,
                        reason,
                    },
                );
            }
        }
    }

    /// Listens to the other hosts until the process ends (returns at once on a store
    /// without host events). After a lost connection every local session rescans, for
    /// the events missed meanwhile.
    pub async fn run_host_events(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.store.host_events().await {
                Ok(None) => return,
                Ok(Some(mut events)) => {
                    backoff = Duration::from_millis(100);
                    self.wake_all();
                    loop {
                        match events.next().await {
                            Ok(text) => self.on_host_event(&text),
                            Err(error) => {
                                tracing::warn!(%error, "lost the host events; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen to the host events; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    fn wake_all(&self) {
        for handle in self.sessions().values() {
            handle.send(SessionSignal::Wake);
        }
    }

    /// Marks queued messages past their expiry, every `interval`, until the process ends.
    pub async fn run_expiry(self: Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            match self.store.expire_messages(now_ms()).await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(expired, "expired queued messages"),
                Err(error) => tracing::warn!(%error, "could not expire queued messages"),
            }
        }
    }

    /// Whether [`Hub::shutdown`] has begun (sessions refuse to start then).
    pub fn is_shutting_down(&self) -> bool {
        *self.shutting_down.borrow()
    }

    /// A receiver that turns true when shutdown begins.
    pub fn shutdown_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutting_down.subscribe()
    }

    /// Sends `shutdown` to every session and waits (at most `grace`) for them to close.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutting_down.send_replace(true);
        for handle in self.sessions().values() {
            handle.send(SessionSignal::Shutdown);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while self.session_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The scope and key of the agent at `did`, if one is hosted here.
pub async fn hosted_agent(
    store: &dyn Store,
    did: &str,
) -> Result<Option<(TenantScope, String)>, crate::store::StoreError> {
    match store.agent_by_did(did).await {
        Ok((scope, agent)) => Ok(Some((scope, agent.public_key_multibase))),
        Err(crate::store::StoreError::NotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn host_events_round_trip_as_tagged_json() {
        let event = HostEvent::Connection {
            agent: "did:web:a.agent".into(),
            connection_id: "conn_1".into(),
            reason: "revoked".into(),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert!(text.contains(r#""kind":"connection""#), "{text}");
        assert_eq!(serde_json::from_str::<HostEvent>(&text).unwrap(), event);
    }
}
