//! A local HTTPS server for did:web documents, for tests.
//!
//! `spawn(documents)` serves each DID's document at its did:web path on 127.0.0.1 with a
//! self-signed certificate valid for every host those DIDs name. Point a resolver at it with
//! `connect_to: Some(server.addr)` and trust `server.ca_pem` as an extra root.
//!
//! Use from a test file with
//! `#[path = "support/did_web_server.rs"] mod did_web_server;` (or `../../tests/support/...`
//! from `host/tests`).
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header::HOST;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;

/// A running did:web server; it lives until the test's runtime shuts down.
pub struct DidWebServer {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Its self-signed certificate in PEM: trust it as a root.
    pub ca_pem: Vec<u8>,
    /// Requests served so far (any path, any status), to test caching.
    pub requests: Arc<AtomicUsize>,
}

impl DidWebServer {
    /// Requests served so far.
    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The URL path of a did:web DID's document (`/.well-known/did.json` or `/a/b/did.json`),
/// and its host (port dropped, lowercased); `None` if `did` is not did:web. Path segments
/// are used as written.
pub fn did_web_host_and_path(did: &str) -> Option<(String, String)> {
    let id = did.strip_prefix("did:web:")?;
    let mut parts = id.split(':');
    let authority = parts.next().unwrap_or_default().to_ascii_lowercase();
    let host = match authority.split_once("%3a") {
        Some((host, _port)) => host.to_owned(),
        None => authority,
    };
    let segments: Vec<&str> = parts.collect();
    let path = if segments.is_empty() {
        "/.well-known/did.json".to_owned()
    } else {
        format!("/{}/did.json", segments.join("/"))
    };
    Some((host, path))
}

/// Starts an HTTPS server serving `documents` (DID -> document) at their did:web host
/// (the request's `Host`) and path (404 for anything else), with a self-signed certificate for every host they name
/// (plus `localhost`). Entries that are not did:web (e.g. the `did:key` ones of the golden
/// vectors) are ignored.
pub async fn spawn(documents: HashMap<String, serde_json::Value>) -> DidWebServer {
    let mut hosts = BTreeSet::from(["localhost".to_owned()]);
    let mut by_path = HashMap::new();
    for (did, doc) in documents {
        let Some((host, path)) = did_web_host_and_path(&did) else {
            continue;
        };
        hosts.insert(host.clone());
        by_path.insert((host, path), serde_json::to_vec(&doc).unwrap());
    }
    let cert = rcgen::generate_simple_self_signed(hosts.into_iter().collect::<Vec<_>>()).unwrap();
    let ca_pem = cert.cert.pem().into_bytes();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let requests = Arc::new(AtomicUsize::new(0));
    let by_path = Arc::new(by_path);
    let counter = Arc::clone(&requests);
    let app = Router::new().fallback(move |headers: HeaderMap, uri: Uri| {
        let by_path = Arc::clone(&by_path);
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            // Documents are per virtual host: every did:web DID without a path lives at
            // /.well-known/did.json of its own host.
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let host = host
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            match by_path.get(&(host, uri.path().to_owned())) {
                Some(body) => Response::builder()
                    .header("content-type", "application/did+json")
                    .body(axum::body::Body::from(body.clone()))
                    .unwrap(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
    });

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    // Handshakes run concurrently, off the accept loop, so a client that stalls or rejects
    // the certificate does not hold up the next one.
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = tcp.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                if let Ok(Ok(tls)) = handshake.await {
                    let _ = tx.send((tls, peer)).await;
                }
            });
        }
    });
    let listener = TlsListener { rx, addr };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    DidWebServer {
        addr,
        ca_pem,
        requests,
    }
}

/// A TCP listener that never answers: accepted connections are held open in silence (for
/// timeout tests). Returns its address.
pub async fn spawn_silent() -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = tcp.accept().await {
            held.push(stream);
        }
    });
    addr
}

struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop is gone (runtime shutting down): wait forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
