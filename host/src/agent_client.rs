//! `arp-host agent connect`: an agent client for operators and tests. It opens the
//! agent's WebSocket with a fresh bearer, prints every frame the host sends as one JSON
//! line on stdout, acks each `inbound_message`, and reconnects with backoff (1 s doubling
//! to 30 s, reset once a session says hello), like the reference client.

use std::io::Write;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::delivery::bearer::sign_bearer;
use crate::delivery::now_ms;

/// What the client does.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The host's base URL (`http://` or `ws://`).
    pub url: String,
    /// The agent's DID.
    pub did: String,
    /// The agent's key.
    pub key: SigningKey,
    /// Stop after this many messages (acked); `None`: run until interrupted.
    pub count: Option<u64>,
    /// Whether to ack messages.
    pub ack: bool,
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a host URL this client speaks (it has no TLS: reach a TLS host
    /// through a local tunnel or proxy).
    #[error("invalid URL {0:?}: expected http:// or ws:// (this client does not speak TLS)")]
    InvalidUrl(String),
    /// The host refused the credentials (no point retrying).
    #[error("the host refused the agent's credentials: {0}")]
    Refused(String),
    /// stdout is gone.
    #[error("cannot write to stdout: {0}")]
    Stdout(#[from] std::io::Error),
}

/// The WebSocket URL of the agent's session at `base`.
pub fn session_url(base: &str, did: &str) -> Result<String, ClientError> {
    let base = base.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("ws://") {
        base.to_owned()
    } else {
        return Err(ClientError::InvalidUrl(base.to_owned()));
    };
    let did: String = url_encode(did);
    Ok(format!("{ws_base}/ws?did={did}"))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Runs the client until `count` messages were received or the credentials are refused.
pub async fn run(options: ClientOptions) -> Result<(), ClientError> {
    let url = session_url(&options.url, &options.did)?;
    let mut received = 0u64;
    let mut backoff = Duration::from_secs(1);
    loop {
        if session(&url, &options, &mut received, &mut backoff).await? {
            return Ok(());
        }
        eprintln!("disconnected; reconnecting in {}s", backoff.as_secs());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One session: `Ok(true)` when done, `Ok(false)` to reconnect.
async fn session(
    url: &str,
    options: &ClientOptions,
    received: &mut u64,
    backoff: &mut Duration,
) -> Result<bool, ClientError> {
    let Ok(mut request) = url.into_client_request() else {
        return Err(ClientError::InvalidUrl(url.to_owned()));
    };
    let bearer = sign_bearer(&options.did, &options.key, now_ms());
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {bearer}")) {
        request.headers_mut().insert("authorization", value);
    }
    let mut socket = match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => socket,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            if status.as_u16() == 401 || status.as_u16() == 500 {
                return Err(ClientError::Refused(format!("{status} {body}")));
            }
            eprintln!("the host answered {status}: {body}");
            return Ok(false);
        }
        Err(error) => {
            eprintln!("cannot connect: {error}");
            return Ok(false);
        }
    };
    let hello = json!({"kind": "client_hello", "agentDid": options.did, "clientVersion": concat!("arp-host/", env!("CARGO_PKG_VERSION"))});
    if socket.send(Message::text(hello.to_string())).await.is_err() {
        return Ok(false);
    }
    let mut stdout = std::io::stdout();
    while let Some(frame) = socket.next().await {
        let Ok(frame) = frame else {
            return Ok(false);
        };
        let Message::Text(text) = frame else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        writeln!(stdout, "{value}")?;
        stdout.flush()?;
        match value["kind"].as_str() {
            Some("server_hello") => *backoff = Duration::from_secs(1),
            Some("inbound_message") => {
                if options.ack {
                    let ack = json!({"kind": "ack", "messageId": value["messageId"]});
                    if socket.send(Message::text(ack.to_string())).await.is_err() {
                        return Ok(false);
                    }
                }
                *received += 1;
                if options.count.is_some_and(|count| *received >= count) {
                    let _ = socket.close(None).await;
                    return Ok(true);
                }
            }
            Some("ping") => {
                let pong = json!({"kind": "pong", "nonce": value["nonce"]});
                if socket.send(Message::text(pong.to_string())).await.is_err() {
                    return Ok(false);
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn session_urls_switch_scheme_and_encode_the_did() {
        assert_eq!(
            session_url("http://127.0.0.1:8787/", "did:web:a.agent").unwrap(),
            "ws://127.0.0.1:8787/ws?did=did%3Aweb%3Aa.agent"
        );
        assert!(session_url("https://h.example", "d").is_err());
        assert!(session_url("ftp://x", "d").is_err());
    }
}
