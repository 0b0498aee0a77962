//! did:web resolution against a local HTTPS server: cache, TTL, negative cache, document
//! checks, size bound, timeout and certificate trust.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/support/did_web_server.rs"]
mod did_web_server;

use std::collections::HashMap;
use std::time::Duration;

use arp_host::did_web::{DidWebConfig, DidWebError, DidWebResolver};
use serde_json::{Value, json};

const GHOST: &str = "did:web:ghost.agent";
const ECHO: &str = "did:web:hub.example.org:bots:echo";

/// The golden DID documents (`dids` of tests/vectors/envelopes.json).
fn vector_dids() -> HashMap<String, Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/vectors/envelopes.json"
    );
    let vectors: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(vectors["dids"].clone()).unwrap()
}

/// A minimal document for `did`.
fn doc(did: &str) -> Value {
    json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": did,
        "verificationMethod": [{
            "id": format!("{did}#key-1"),
            "type": "Ed25519VerificationKey2020",
            "controller": did,
            "publicKeyMultibase": "z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw",
        }],
    })
}

fn documents() -> HashMap<String, Value> {
    let mut docs = vector_dids();
    docs.insert(ECHO.to_owned(), doc(ECHO));
    docs
}

fn config_for(server: &did_web_server::DidWebServer) -> DidWebConfig {
    DidWebConfig {
        connect_to: Some(server.addr),
        extra_root_certificates_pem: vec![server.ca_pem.clone()],
        ..DidWebConfig::default()
    }
}

#[tokio::test]
async fn resolves_host_and_path_dids_then_serves_from_cache() {
    let docs = documents();
    let server = did_web_server::spawn(docs.clone()).await;
    let resolver = DidWebResolver::new(config_for(&server)).unwrap();

    let ghost = resolver.resolve(GHOST).await.unwrap();
    assert_eq!(ghost, docs[GHOST]);
    let echo = resolver.resolve(ECHO).await.unwrap();
    assert_eq!(echo, docs[ECHO]);
    assert_eq!(server.request_count(), 2);

    // Cached: no new request, also through a clone of the resolver.
    assert_eq!(resolver.resolve(GHOST).await.unwrap(), docs[GHOST]);
    assert_eq!(resolver.clone().resolve(ECHO).await.unwrap(), docs[ECHO]);
    assert_eq!(server.request_count(), 2);
    assert!(format!("{resolver:?}").contains("DidWebResolver"));
}

#[tokio::test]
async fn ttl_expiry_refetches() {
    let server = did_web_server::spawn(documents()).await;
    let resolver = DidWebResolver::new(DidWebConfig {
        ttl: Duration::from_millis(200),
        ..config_for(&server)
    })
    .unwrap();
    resolver.resolve(GHOST).await.unwrap();
    resolver.resolve(GHOST).await.unwrap();
    assert_eq!(server.request_count(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    resolver.resolve(GHOST).await.unwrap();
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn lru_evicts_least_recently_used() {
    let server = did_web_server::spawn(documents()).await;
    let resolver = DidWebResolver::new(DidWebConfig {
        capacity: 2,
        ..config_for(&server)
    })
    .unwrap();
    resolver.resolve("did:web:samantha.agent").await.unwrap();
    resolver.resolve(GHOST).await.unwrap();
    resolver.resolve("did:web:samantha.agent").await.unwrap(); // ghost is now the oldest
    resolver.resolve(ECHO).await.unwrap(); // evicts ghost
    assert_eq!(server.request_count(), 3);
    resolver.resolve("did:web:samantha.agent").await.unwrap();
    assert_eq!(server.request_count(), 3);
    resolver.resolve(GHOST).await.unwrap();
    assert_eq!(server.request_count(), 4);
}

#[tokio::test]
async fn unknown_did_is_404_and_negative_cached() {
    let server = did_web_server::spawn(documents()).await;
    let resolver = DidWebResolver::new(DidWebConfig {
        negative_ttl: Duration::from_millis(300),
        ..config_for(&server)
    })
    .unwrap();
    let unknown = "did:web:ghost.agent:nobody";
    assert_eq!(
        resolver.resolve(unknown).await,
        Err(DidWebError::Status(404))
    );
    assert_eq!(
        resolver.resolve(unknown).await,
        Err(DidWebError::Status(404))
    );
    assert_eq!(server.request_count(), 1, "the 404 is cached");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        resolver.resolve(unknown).await,
        Err(DidWebError::Status(404))
    );
    assert_eq!(server.request_count(), 2, "negative entries expire");
}

#[tokio::test]
async fn concurrent_resolves_share_one_fetch() {
    let server = did_web_server::spawn(documents()).await;
    let resolver = DidWebResolver::new(config_for(&server)).unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let resolver = resolver.clone();
            tokio::spawn(async move { resolver.resolve(GHOST).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn id_mismatch_is_refused() {
    let mut docs = documents();
    // Served at ghost.agent's path, but claims to be someone else.
    docs.insert(GHOST.to_owned(), doc("did:web:orion.agent"));
    let server = did_web_server::spawn(docs).await;
    let resolver = DidWebResolver::new(config_for(&server)).unwrap();
    assert_eq!(resolver.resolve(GHOST).await, Err(DidWebError::IdMismatch));
}

#[tokio::test]
async fn non_object_documents_are_not_json() {
    let mut docs = documents();
    docs.insert(GHOST.to_owned(), json!(["did:web:ghost.agent"]));
    let server = did_web_server::spawn(docs).await;
    let resolver = DidWebResolver::new(config_for(&server)).unwrap();
    assert_eq!(resolver.resolve(GHOST).await, Err(DidWebError::NotJson));
}

#[tokio::test]
async fn oversize_document_is_too_large() {
    let mut docs = documents();
    let mut big = doc(GHOST);
    big["padding"] = json!("x".repeat(100 * 1024));
    docs.insert(GHOST.to_owned(), big);
    let server = did_web_server::spawn(docs).await;
    let resolver = DidWebResolver::new(config_for(&server)).unwrap();
    assert_eq!(resolver.resolve(GHOST).await, Err(DidWebError::TooLarge));
    // The default bound (64 KiB) still admits ordinary documents.
    assert!(resolver.resolve(ECHO).await.is_ok());
}

#[tokio::test]
async fn silent_server_times_out() {
    let addr = did_web_server::spawn_silent().await;
    let resolver = DidWebResolver::new(DidWebConfig {
        timeout: Duration::from_millis(300),
        connect_to: Some(addr),
        ..DidWebConfig::default()
    })
    .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), resolver.resolve(GHOST))
        .await
        .expect("the resolver's own timeout fires first");
    assert_eq!(outcome, Err(DidWebError::Timeout));
}

#[tokio::test]
async fn untrusted_certificate_is_a_fetch_error() {
    let server = did_web_server::spawn(documents()).await;
    let resolver = DidWebResolver::new(DidWebConfig {
        connect_to: Some(server.addr),
        ..DidWebConfig::default()
    })
    .unwrap();
    match resolver.resolve(GHOST).await {
        Err(DidWebError::Fetch(msg)) => assert!(msg.contains("certificate"), "{msg}"),
        other => panic!("expected a fetch error, got {other:?}"),
    }
}

#[tokio::test]
async fn certificate_must_name_the_did_host() {
    // The server's certificate names ghost.agent etc., not other.example.
    let server = did_web_server::spawn(documents()).await;
    let resolver = DidWebResolver::new(config_for(&server)).unwrap();
    assert!(matches!(
        resolver.resolve("did:web:other.example").await,
        Err(DidWebError::Fetch(_))
    ));
}

#[tokio::test]
async fn explicit_port_in_the_did_is_used() {
    let server = did_web_server::spawn(documents()).await;
    let port = server.addr.port();
    // connect_to's port is a dead one: only the DID's own port reaches the server.
    let resolver = DidWebResolver::new(DidWebConfig {
        connect_to: Some("127.0.0.1:1".parse().unwrap()),
        extra_root_certificates_pem: vec![server.ca_pem.clone()],
        ..DidWebConfig::default()
    })
    .unwrap();
    let did = format!("did:web:localhost%3A{port}");
    assert_eq!(resolver.resolve(&did).await, Err(DidWebError::Status(404)));
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn not_did_web_is_refused_without_fetching() {
    let server = did_web_server::spawn(documents()).await;
    let resolver = DidWebResolver::new(config_for(&server)).unwrap();
    for bad in [
        "did:key:z6Mkabc",
        "did:web:ghost.agent:..",
        "did:web:ghost.agent#key-1",
    ] {
        assert_eq!(resolver.resolve(bad).await, Err(DidWebError::NotDidWeb));
    }
    assert_eq!(server.request_count(), 0);
}

#[test]
fn bad_extra_root_is_a_client_error() {
    let err = DidWebResolver::new(DidWebConfig {
        extra_root_certificates_pem: vec![b"not a pem".to_vec()],
        ..DidWebConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, DidWebError::Client(_)), "{err:?}");
}
