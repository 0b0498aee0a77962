//! Concurrent writers on one connection keep one unbroken audit chain and lose nothing:
//! 8 writers × 500 envelopes through one server on SQLite and on Postgres, and through two
//! server processes sharing one Postgres. And when the store goes away, the answer is 503
//! `store_unavailable`, nothing is half-recorded, and the server recovers by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use arp_host::audit::verify_chain;
use arp_host::provision;
use arp_host::store::{self, Connection, ConnectionStatus, Plan, Store, TenantScope};
use serde_json::json;
use support::{Backend, Peer, Server};

const SAMANTHA: &str = "did:web:samantha.agent";
const WRITERS: usize = 8;
const PER_WRITER: usize = 500;

async fn provision(backend: &Backend) -> (Arc<dyn Store>, TenantScope, Peer) {
    let store = store::open(&backend.database_url()).await.unwrap();
    let scope = store.create_tenant("acme", Plan::Team).await.unwrap();
    let new = provision::new_agent(SAMANTHA, "did:web:ian.samantha.agent", None, None).unwrap();
    store.create_agent(&scope, &new.agent).await.unwrap();
    let peer = Peer::from_vectors(&support::envelope_vectors(), "keyuser");
    store
        .create_connection(
            &scope,
            &Connection {
                connection_id: "c1".into(),
                agent_did: SAMANTHA.into(),
                peer_did: peer.did.clone(),
                status: ConnectionStatus::Active,
                token_json: json!({"connection_id": "c1", "issuer": "did:web:ian.samantha.agent"}),
                cedar_policies: vec!["permit(principal, action, resource);".into()],
                obligations: Vec::new(),
                expires_at_ms: None,
            },
        )
        .await
        .unwrap();
    (store, scope, peer)
}

/// 8 writers × 500 envelopes on connection `c1`, writer `w` sending to server
/// `w % servers.len()`; then one chain of 4,000 entries and 4,000 queued messages.
async fn writers_keep_one_chain(backend: Backend, servers: usize) {
    let (store, scope, peer) = provision(&backend).await;
    let servers: Vec<Server> = (0..servers).map(|_| Server::spawn(&backend, &[])).collect();
    let peer = Arc::new(peer);
    let client = support::http_client();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = format!(
                "{}/didcomm?target=samantha.agent",
                servers[w % servers.len()].url
            );
            let (peer, client) = (peer.clone(), client.clone());
            tokio::spawn(async move {
                for n in 0..PER_WRITER {
                    let envelope =
                        peer.request(&format!("w{w}-{n}"), SAMANTHA, json!({"text": "hi"}));
                    let response = client.post(&url).body(envelope).send().await.unwrap();
                    assert_eq!(
                        response.status().as_u16(),
                        202,
                        "{}",
                        response.text().await.unwrap()
                    );
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let chain = store.audit_chain(&scope, SAMANTHA, "c1").await.unwrap();
    assert_eq!(chain.len(), WRITERS * PER_WRITER);
    let report = verify_chain(&chain);
    assert_eq!(report.first_break_at, None, "{:?}", report.reason);
    assert_eq!(report.entries_seen, (WRITERS * PER_WRITER) as u64);
    assert_eq!(
        store.queue_depth().await.unwrap(),
        (WRITERS * PER_WRITER) as u64
    );
    for server in servers {
        server.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_one_host_sqlite() {
    writers_keep_one_chain(Backend::sqlite(), 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_one_host_postgres() {
    writers_keep_one_chain(Backend::postgres().await, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_writers_two_hosts_sharing_postgres() {
    writers_keep_one_chain(Backend::postgres().await, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_store_is_503_and_the_host_recovers_by_itself() {
    let backend = Backend::postgres().await;
    let Backend::Postgres(database) = &backend else {
        unreachable!()
    };
    let (store, scope, peer) = provision(&backend).await;
    drop(store);
    let server = Server::spawn(&backend, &[]);
    let client = support::http_client();
    let post = |envelope: String| {
        client
            .post(format!("{}/didcomm?target=samantha.agent", server.url))
            .body(envelope)
            .send()
    };
    assert_eq!(
        post(peer.request("before", SAMANTHA, json!({})))
            .await
            .unwrap()
            .status(),
        202
    );

    // Take the database away: end its sessions and rename it.
    let name = database.name.clone();
    support::postgres::admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    support::postgres::admin(format!(
        "ALTER DATABASE \"{name}\" RENAME TO \"{name}_away\""
    ))
    .await;
    let during = peer.request("during", SAMANTHA, json!({}));
    let response = post(during.clone()).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");
    let ready = client
        .get(format!("{}/ready", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    // Back: the same envelope is accepted (nothing of it was recorded), no restart needed.
    support::postgres::admin(format!(
        "ALTER DATABASE \"{name}_away\" RENAME TO \"{name}\""
    ))
    .await;
    let response = post(during).await.unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let store = store::open(&backend.database_url()).await.unwrap();
    let chain = store.audit_chain(&scope, SAMANTHA, "c1").await.unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(verify_chain(&chain).first_break_at, None);
    server.stop();
}
