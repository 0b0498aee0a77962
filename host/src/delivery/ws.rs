//! One agent's WebSocket session (ARP-PROTOCOL §4): `GET /ws?did=<DID>&token=<bearer>`
//! (or `Authorization: Bearer <bearer>`), then JSON text frames discriminated by `kind`.
//!
//! The drain keeps up to [`DeliveryConfig::window`](crate::delivery::DeliveryConfig::window) pushes
//! in flight, oldest first, each counted as an attempt when taken from the queue; an `ack` marks a
//! message delivered in the store (the acks received together in one write) and makes room for the
//! next. A push not acked within
//! [`DeliveryConfig::ack_timeout`](crate::delivery::DeliveryConfig::ack_timeout) is sent again, and
//! every send counts an attempt. Pings go out every
//! [`DeliveryConfig::ping_interval`](crate::delivery::DeliveryConfig::ping_interval); a peer that
//! sends nothing (not even a pong) for two intervals is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Hub, SessionSignal, now_ms};
use crate::dispatch::{DispatchError, Dispatcher, Outcome};
use crate::envelope;
use crate::store::{QueuedMessage, TenantScope};

/// Close code of a session replaced by a newer one of the same agent.
pub const CLOSE_SUPERSEDED: u16 = 4000;
/// Close code of a session ended by the host's shutdown ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Most acks recorded in one store write.
const ACK_BATCH: usize = 64;

/// A frame from the agent.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ClientFrame {
    ClientHello {},
    Ack {
        #[serde(rename = "messageId")]
        message_id: String,
    },
    OutboundEnvelope {
        #[serde(rename = "msgId", default)]
        msg_id: Option<String>,
        #[serde(rename = "peerDid")]
        peer_did: String,
        envelope: String,
    },
    Pong {},
}

/// Why a session ended.
enum End {
    Closed,
    Superseded,
    Shutdown,
    Dead,
}

/// The session of one authenticated agent.
struct Session {
    hub: Arc<Hub>,
    dispatcher: Arc<Dispatcher>,
    scope: TenantScope,
    agent_did: String,
    socket: WebSocket,
    /// Pushed, not yet acked: queue id → when it was sent.
    in_flight: HashMap<String, Instant>,
    /// Acks received and not yet recorded.
    acks: Vec<String>,
    /// The last drain filled the window: more messages may be waiting behind it.
    backlog: bool,
    /// Set while a `Wake` waits in the signal inbox (see [`super::SessionTicket`]).
    woken: Arc<AtomicBool>,
}

/// Runs the session of `agent_did` on `socket` until it ends.
pub async fn run(
    socket: WebSocket,
    hub: Arc<Hub>,
    dispatcher: Arc<Dispatcher>,
    scope: TenantScope,
    agent_did: String,
) {
    let ticket = hub.register(&agent_did).await;
    tracing::info!(
        tenantId = scope.tenant_id(),
        agentDid = agent_did,
        session = ticket.id,
        "agent connected"
    );
    let mut session = Session {
        hub: hub.clone(),
        dispatcher,
        scope,
        agent_did,
        socket,
        in_flight: HashMap::new(),
        acks: Vec::new(),
        backlog: false,
        woken: ticket.woken.clone(),
    };
    let end = session.serve(ticket.signals).await;
    hub.unregister(&session.agent_did, &ticket.id);
    let reason = match end {
        End::Closed => "closed by the agent",
        End::Superseded => "superseded",
        End::Shutdown => "server shutdown",
        End::Dead => "no answer to pings",
    };
    tracing::info!(
        tenantId = session.scope.tenant_id(),
        agentDid = session.agent_did,
        session = ticket.id,
        reason,
        "agent disconnected"
    );
}

impl Session {
    async fn serve(
        &mut self,
        mut signals: tokio::sync::mpsc::UnboundedReceiver<SessionSignal>,
    ) -> End {
        let config = self.hub.config();
        let queued = self
            .hub
            .store()
            .deliverable_count(&self.scope, &self.agent_did)
            .await
            .unwrap_or(0);
        let hello = json!({
            "kind": "server_hello",
            "agentDid": self.agent_did,
            "serverTime": now_ms(),
            "queuedCount": queued,
        });
        if self.send_json(&hello).await.is_err() {
            return End::Closed;
        }
        if self.drain(true).await.is_err() {
            return End::Closed;
        }
        let mut pings = tokio::time::interval(config.ping_interval);
        pings.tick().await;
        let mut rescans = tokio::time::interval(config.rescan_interval.min(config.ack_timeout));
        rescans.tick().await;
        let mut last_heard = Instant::now();
        loop {
            let step = tokio::select! {
                signal = signals.recv() => match signal {
                    None | Some(SessionSignal::Superseded) => {
                        self.close(CLOSE_SUPERSEDED, "superseded").await;
                        return End::Superseded;
                    }
                    Some(SessionSignal::Shutdown) => {
                        let frame = json!({"kind": "shutdown", "reason": "server_shutdown"});
                        let _ = self.send_json(&frame).await;
                        self.close(CLOSE_GOING_AWAY, "server_shutdown").await;
                        return End::Shutdown;
                    }
                    Some(SessionSignal::Wake) => {
                        self.woken.store(false, Ordering::Release);
                        self.drain(false).await
                    }
                    Some(SessionSignal::Revocation { connection_id, reason }) => {
                        let frame = json!({
                            "kind": "revocation",
                            "connectionId": connection_id,
                            "reason": reason,
                        });
                        self.send_json(&frame).await
                    }
                },
                frame = self.socket.recv() => {
                    last_heard = Instant::now();
                    self.on_messages(frame).await
                }
                _ = pings.tick() => {
                    if last_heard.elapsed() > config.ping_interval * 2 {
                        return End::Dead;
                    }
                    self.socket.send(Message::Ping(Default::default())).await.map_err(|_| ())
                }
                _ = rescans.tick() => {
                    let timeout = config.ack_timeout;
                    self.in_flight.retain(|_, sent| sent.elapsed() < timeout);
                    self.drain(true).await
                }
            };
            if step.is_err() {
                return End::Closed;
            }
        }
    }

    /// Pushes deliverable messages until the window is full. The in-flight pushes are
    /// the oldest deliverable messages, so a wake-up reads on after them; a `full` scan
    /// starts from the oldest (after retries were dropped from the window, or to recover
    /// from any disorder).
    async fn drain(&mut self, full: bool) -> Result<(), ()> {
        let window = self.hub.config().window;
        let in_flight = u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX);
        if in_flight >= window {
            self.backlog = true;
            return Ok(());
        }
        let page = if full {
            (0, window.saturating_add(in_flight))
        } else {
            (in_flight, window - in_flight)
        };
        let room = usize::try_from(window - in_flight).unwrap_or(usize::MAX);
        let sent: HashSet<String> = self.in_flight.keys().cloned().collect();
        let messages = match self
            .hub
            .store()
            .take_for_push(&self.scope, &self.agent_did, page, &sent, room)
            .await
        {
            Ok(messages) => messages,
            Err(error) => {
                // The queue keeps the messages; the next rescan tries again.
                tracing::warn!(%error, agentDid = self.agent_did, "cannot read the queue");
                return Ok(());
            }
        };
        self.backlog = messages.len() >= room;
        for message in messages {
            self.send_json(&inbound_frame(&message)).await?;
            self.in_flight.insert(message.id, Instant::now());
        }
        Ok(())
    }

    /// Handles `first` and the frames already received behind it, then records their
    /// acks in one write: under load acks arrive in bursts.
    async fn on_messages(&mut self, first: Option<Result<Message, axum::Error>>) -> Result<(), ()> {
        let mut handled = self.on_message(first).await;
        while handled.is_ok() && self.acks.len() < ACK_BATCH {
            let Some(next) = self.socket.recv().now_or_never() else {
                break;
            };
            handled = self.on_message(next).await;
        }
        // Recorded even when the socket closed: those messages were acked.
        let recorded = self.record_acks().await;
        handled.and(recorded)
    }

    async fn on_message(
        &mut self,
        message: Option<Result<Message, axum::Error>>,
    ) -> Result<(), ()> {
        match message {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => Err(()),
            Some(Ok(Message::Text(text))) => self.on_frame(&text).await,
            Some(Ok(_)) => Ok(()),
        }
    }

    /// Marks the acked messages delivered, then pushes what waited behind a full window.
    async fn record_acks(&mut self) -> Result<(), ()> {
        if self.acks.is_empty() {
            return Ok(());
        }
        let acks = std::mem::take(&mut self.acks);
        match self
            .hub
            .store()
            .ack_messages(&self.scope, &self.agent_did, &acks)
            .await
        {
            Ok(_) => {
                for id in &acks {
                    self.in_flight.remove(id);
                }
                if self.backlog {
                    self.drain(false).await
                } else {
                    Ok(())
                }
            }
            // Left in flight: the pushes are retried after the ack timeout, and the agent
            // acks again.
            Err(error) => {
                tracing::warn!(%error, agentDid = self.agent_did, "cannot record acks");
                Ok(())
            }
        }
    }

    async fn on_frame(&mut self, text: &str) -> Result<(), ()> {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(error) => {
                let reply =
                    json!({"kind": "error", "error": "invalid_frame", "detail": error.to_string()});
                return self.send_json(&reply).await;
            }
        };
        match frame {
            ClientFrame::ClientHello {} | ClientFrame::Pong {} => Ok(()),
            ClientFrame::Ack { message_id } => {
                self.acks.push(message_id);
                Ok(())
            }
            ClientFrame::OutboundEnvelope {
                msg_id,
                peer_did,
                envelope,
            } => {
                let reply = outbound(
                    &self.dispatcher,
                    &self.scope,
                    &self.agent_did,
                    msg_id,
                    &peer_did,
                    &envelope,
                )
                .await;
                self.send_json(&reply).await
            }
        }
    }

    async fn send_json(&mut self, value: &Value) -> Result<(), ()> {
        self.socket
            .send(Message::Text(Utf8Bytes::from(value.to_string())))
            .await
            .map_err(|_| ())
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
    }
}

/// Routes an agent's envelope like a POST to the recipient agent, if the agent signed
/// it. The answer is an `outbound_result` frame.
async fn outbound(
    dispatcher: &Dispatcher,
    scope: &TenantScope,
    agent_did: &str,
    msg_id: Option<String>,
    peer_did: &str,
    compact: &str,
) -> Value {
    let result = match envelope::parse(compact) {
        Err(error) => Err(DispatchError::from(error)),
        Ok(parsed) if parsed.signer != agent_did => {
            return json!({
                "kind": "outbound_result",
                "msgId": msg_id,
                "ok": false,
                "error": "not_signed_by_agent",
                "detail": "an outbound envelope must be signed by the connected agent",
            });
        }
        Ok(_) => dispatcher.dispatch_to(peer_did, compact).await,
    };
    if let Ok(Outcome::Queued { .. }) = &result {
        dispatcher.metrics().outbound(scope.tenant_id());
    }
    match result {
        Ok(Outcome::Queued { message_id }) => json!({
            "kind": "outbound_result", "msgId": msg_id, "ok": true,
            "decision": "allow", "queued": true, "messageId": message_id,
        }),
        Ok(Outcome::Denied { reason }) => json!({
            "kind": "outbound_result", "msgId": msg_id, "ok": true,
            "decision": "deny", "queued": false, "reason": reason,
        }),
        Err(error) => json!({
            "kind": "outbound_result", "msgId": msg_id, "ok": false,
            "error": error.code(), "detail": error.to_string(),
        }),
    }
}

/// The `inbound_message` frame of a queued message.
fn inbound_frame(message: &QueuedMessage) -> Value {
    json!({
        "kind": "inbound_message",
        "messageId": message.id,
        "msgId": message.msg_id,
        "msgType": message.msg_type,
        "envelope": message.envelope,
        "connectionId": message.connection_id,
        "peerDid": message.peer_did,
        "decision": "allow",
        "obligations": message.obligations,
        "policiesFired": message.policies_fired,
        "attempts": message.attempts + 1,
    })
}
