//! An agent's side of `GET /ws`, on a real socket (tokio-tungstenite).

use std::time::Duration;

use arp_host::delivery::bearer::sign_bearer;
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one frame before failing.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// `ws://.../ws?did=<did>&token=<bearer>` for the server at `http_url`.
pub fn ws_url(http_url: &str, did: &str, bearer: &str) -> String {
    let session = arp_host::agent_client::session_url(http_url, did).unwrap();
    format!("{session}&token={bearer}")
}

/// What opening the socket came to: the socket, or the HTTP refusal (status, JSON body).
/// (Built once per connection attempt: the size difference does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Opened {
    Socket(AgentSocket),
    Refused(u16, Value),
}

pub async fn open(url: &str) -> Opened {
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Opened::Socket(AgentSocket { socket }),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Opened::Refused(response.status().as_u16(), body)
        }
        Err(error) => panic!("cannot open {url}: {error}"),
    }
}

/// A connected agent.
pub struct AgentSocket {
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl AgentSocket {
    /// Connects as `did` with a fresh bearer, and reads its `server_hello`.
    pub async fn connect(http_url: &str, did: &str, key: &SigningKey) -> (Self, Value) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let url = ws_url(http_url, did, &sign_bearer(did, key, now));
        let Opened::Socket(mut agent) = open(&url).await else {
            panic!("{did} was refused");
        };
        let hello = agent.next_json().await;
        assert_eq!(hello["kind"], "server_hello", "{hello}");
        (agent, hello)
    }

    /// The next JSON text frame (pings are answered by tungstenite on the next read).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .expect("no frame in time")
                .expect("the socket ended")
                .expect("the socket failed");
            match frame {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The close frame's code, waiting for it.
    pub async fn closed_with(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .expect("no close in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|frame| frame.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.socket
            .send(Message::text(value.to_string()))
            .await
            .unwrap();
    }

    pub async fn ack(&mut self, message_id: &str) {
        self.send_json(json!({"kind": "ack", "messageId": message_id}))
            .await;
    }
}
