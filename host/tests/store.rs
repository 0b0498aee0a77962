//! The store against real databases: every behaviour is one body run on SQLite (a file in a
//! temporary directory) and on Postgres (a fresh database per test on 127.0.0.1:5432, user
//! `postgres`, or `ARP_TEST_POSTGRES_URL`). Postgres being unreachable fails the Postgres
//! tests: they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use arp_host::audit::{self, AuditDecision, NewAuditEntry};
use arp_host::pdp::Obligation;
use arp_host::store::{
    self, Agent, AuditExtra, Connection, ConnectionStatus, NewMessage, Plan, Store, StoreError,
};
use serde_json::json;
use sqlx::{AssertSqlSafe, Connection as _, Executor as _, PgConnection};

/// The server the Postgres tests use (without a database name).
fn postgres_server() -> String {
    std::env::var("ARP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// A fresh Postgres database, dropped when this is.
struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "arp_test_{}_{nanos}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let server = postgres_server();
        let mut admin = PgConnection::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|error| panic!("Postgres at {server} is required: {error}"));
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = format!("{server}/{name}");
        Self { name, url }
    }
}

impl Drop for TestDatabase {
    /// Drops the database even when the test failed (on its own thread and runtime, as
    /// `drop` cannot await). `WITH (FORCE)` ends the store's open connections.
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&format!("{}/postgres", postgres_server()))
                    .await
                    .unwrap();
                admin.execute(AssertSqlSafe(sql)).await.unwrap();
            });
        })
        .join();
        if dropped.is_err() && !std::thread::panicking() {
            panic!("could not drop test database {}", self.name);
        }
    }
}

/// Runs each named body against a SQLite file and a fresh Postgres database. A body takes
/// the store and the location it was opened from (to reopen it).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let location = dir.path().join("data").display().to_string();
                    let store = arp_host::store::open(&location).await.unwrap();
                    assert_eq!(store.backend(), "sqlite");
                    super::$name(store, location).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let database = super::TestDatabase::create().await;
                    let store = arp_host::store::open(&database.url).await.unwrap();
                    assert_eq!(store.backend(), "postgres");
                    super::$name(store, database.url.clone()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrations_run_and_reopening_keeps_the_data,
    tenants_agents_and_connections_round_trip_within_their_tenant,
    a_replayed_message_is_a_conflict,
    the_quota_stops_exactly_at_the_cap_under_concurrency,
    concurrent_audit_appends_never_fork_or_lose_an_entry,
    policy_versions_are_activated_per_tenant,
);

fn agent(did: &str) -> Agent {
    Agent {
        did: did.to_owned(),
        public_key_multibase: "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".to_owned(),
        did_document: json!({"id": did, "verificationMethod": []}),
        agent_card: json!({"name": did}),
        arp_json: json!({"version": "0.1"}),
    }
}

fn connection(id: &str, agent_did: &str, peer_did: &str, status: ConnectionStatus) -> Connection {
    Connection {
        connection_id: id.to_owned(),
        agent_did: agent_did.to_owned(),
        peer_did: peer_did.to_owned(),
        status,
        token_json: json!({"connection_id": id, "issuer": "did:web:owner.example"}),
        cedar_policies: vec!["permit(principal, action, resource);".to_owned()],
        obligations: vec![Obligation {
            kind: "spend_cap".to_owned(),
            params: json!({"max_cents": 500}),
        }],
        expires_at_ms: Some(1_900_000_000_000),
    }
}

fn audit_fields(n: u64) -> NewAuditEntry {
    NewAuditEntry {
        timestamp: audit::format_timestamp(1_776_859_200_000 + i64::try_from(n).unwrap()).unwrap(),
        msg_id: format!("msg-{n}"),
        decision: if n.is_multiple_of(5) {
            AuditDecision::Deny
        } else {
            AuditDecision::Allow
        },
        policies_fired: vec!["policy0".to_owned()],
        obligations: vec![Obligation {
            kind: "spend_cap".to_owned(),
            params: json!({"max_cents": n, "ratio": 0.5}),
        }],
        spend_delta_cents: i64::try_from(n % 7).unwrap(),
        reason: n.is_multiple_of(2).then(|| format!("reason {n}")),
    }
}

async fn migrations_run_and_reopening_keeps_the_data(store: Arc<dyn Store>, location: String) {
    let scope = store.create_tenant("acme", Plan::Team).await.unwrap();
    store
        .create_agent(&scope, &agent("did:web:samantha.agent"))
        .await
        .unwrap();
    drop(store);
    // Opening again runs the (already applied) migrations again: a no-op.
    let store = store::open(&location).await.unwrap();
    let (scope, found) = store.agent_by_did("did:web:samantha.agent").await.unwrap();
    assert_eq!(scope.tenant_id(), "acme");
    assert_eq!(found, agent("did:web:samantha.agent"));
    assert_eq!(store.tenant(&scope).await.unwrap().plan, Plan::Team);
}

async fn tenants_agents_and_connections_round_trip_within_their_tenant(
    store: Arc<dyn Store>,
    _location: String,
) {
    let a = store.create_tenant("tenant-a", Plan::Pro).await.unwrap();
    let b = store.create_tenant("tenant-b", Plan::Free).await.unwrap();
    assert!(matches!(
        store.create_tenant("tenant-a", Plan::Free).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.tenant_scope("tenant-a").await.unwrap(), a);
    assert!(matches!(
        store.tenant_scope("tenant-c").await,
        Err(StoreError::NotFound(_))
    ));
    let tenant = store.tenant(&a).await.unwrap();
    assert_eq!((tenant.id.as_str(), tenant.plan), ("tenant-a", Plan::Pro));
    assert_eq!(store.tenant(&b).await.unwrap().plan, Plan::Free);

    // Agents: routed by DID to their tenant; a DID is hosted once across the host.
    let alice = "did:web:alice.agent";
    let bob = "did:web:bob.agent";
    store.create_agent(&a, &agent(alice)).await.unwrap();
    assert!(matches!(
        store.create_agent(&b, &agent(alice)).await,
        Err(StoreError::Conflict(_))
    ));
    let (routed, found) = store.agent_by_did(alice).await.unwrap();
    assert_eq!(routed, a);
    assert_eq!(found, agent(alice));
    assert_eq!(store.agent(&a, alice).await.unwrap(), agent(alice));
    assert!(matches!(
        store.agent(&b, alice).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.agent_by_did(bob).await,
        Err(StoreError::NotFound(_))
    ));

    // Connections: round trip, and tenant B's scope cannot see A's.
    let c1 = connection("conn-1", alice, bob, ConnectionStatus::Active);
    store.create_connection(&a, &c1).await.unwrap();
    assert_eq!(store.connection(&a, "conn-1").await.unwrap(), c1);
    assert!(matches!(
        store.connection(&b, "conn-1").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.create_connection(&a, &c1).await,
        Err(StoreError::Conflict(_))
    ));
    // The same id in another tenant is another connection.
    let other = connection(
        "conn-1",
        "did:web:carol.agent",
        bob,
        ConnectionStatus::Active,
    );
    store.create_connection(&b, &other).await.unwrap();
    assert_eq!(store.connection(&b, "conn-1").await.unwrap(), other);
    assert_eq!(store.connection(&a, "conn-1").await.unwrap(), c1);

    // The active connection between two DIDs, in either orientation.
    for (x, y) in [(alice, bob), (bob, alice)] {
        let found = store.active_connections_between(&a, x, y).await.unwrap();
        assert_eq!(found, vec![c1.clone()]);
    }
    assert!(
        store
            .active_connections_between(&b, alice, bob)
            .await
            .unwrap()
            .is_empty()
    );
    let suspended = connection("conn-0", bob, alice, ConnectionStatus::Suspended);
    store.create_connection(&a, &suspended).await.unwrap();
    assert_eq!(
        store
            .active_connections_between(&a, alice, bob)
            .await
            .unwrap(),
        vec![c1.clone()]
    );
    let c2 = connection("conn-2", bob, alice, ConnectionStatus::Active);
    store.create_connection(&a, &c2).await.unwrap();
    let ambiguous = store
        .active_connections_between(&a, bob, alice)
        .await
        .unwrap();
    assert_eq!(ambiguous, vec![c1.clone(), c2]);

    // Revocations are per tenant.
    assert!(
        !store
            .is_revoked(&a, alice, "connection", "conn-1")
            .await
            .unwrap()
    );
    store
        .add_revocation(&a, alice, "connection", "conn-1")
        .await
        .unwrap();
    store
        .add_revocation(&a, alice, "connection", "conn-1")
        .await
        .unwrap();
    assert!(
        store
            .is_revoked(&a, alice, "connection", "conn-1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_revoked(&b, alice, "connection", "conn-1")
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_revoked(&a, alice, "token", "conn-1")
            .await
            .unwrap()
    );

    // The message queue.
    let message = NewMessage {
        id: "3f0c1e2a-0000-4000-8000-000000000001".to_owned(),
        agent_did: alice.to_owned(),
        connection_id: "conn-1".to_owned(),
        msg_id: "m-1".to_owned(),
        msg_type: "https://didcomm.org/arp/1.0/request".to_owned(),
        envelope: "aGVhZGVy.cGF5bG9hZA.c2ln".to_owned(),
        peer_did: bob.to_owned(),
        obligations: c1.obligations.clone(),
        policies_fired: vec!["policy0".to_owned()],
        expires_at_ms: None,
    };
    store.enqueue_message(&a, &message).await.unwrap();
    assert_eq!(
        store.message_status(&a, &message.id).await.unwrap(),
        "queued"
    );
    assert!(matches!(
        store.message_status(&b, &message.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.enqueue_message(&a, &message).await,
        Err(StoreError::Conflict(_))
    ));
}

async fn a_replayed_message_is_a_conflict(store: Arc<dyn Store>, _location: String) {
    let signer = "did:web:bob.agent";
    store.record_replay(signer, "m-1").await.unwrap();
    assert!(matches!(
        store.record_replay(signer, "m-1").await,
        Err(StoreError::Conflict(_))
    ));
    store.record_replay(signer, "m-2").await.unwrap();
    store
        .record_replay("did:web:carol.agent", "m-1")
        .await
        .unwrap();

    // Concurrent replays of one message: exactly one is accepted.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.record_replay(signer, "m-3").await })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => accepted += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(accepted, 1);
}

async fn the_quota_stops_exactly_at_the_cap_under_concurrency(
    store: Arc<dyn Store>,
    _location: String,
) {
    let scope = store.create_tenant("quota", Plan::Free).await.unwrap();
    let other = store.create_tenant("other", Plan::Free).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            let scope = scope.clone();
            tokio::spawn(async move {
                store
                    .count_usage_if_under(&scope, "2026-12", Some(20))
                    .await
            })
        })
        .collect();
    let mut counted = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Some(used) => counted.push(used),
            None => refused += 1,
        }
    }
    counted.sort_unstable();
    assert_eq!(counted, (1..=20).collect::<Vec<u64>>());
    assert_eq!(refused, 30);
    assert_eq!(store.usage(&scope, "2026-12").await.unwrap(), 20);
    assert_eq!(
        store
            .count_usage_if_under(&scope, "2026-12", Some(20))
            .await
            .unwrap(),
        None
    );
    // Unlimited plans count without a cap; periods and tenants are separate counters.
    assert_eq!(
        store
            .count_usage_if_under(&scope, "2026-12", None)
            .await
            .unwrap(),
        Some(21)
    );
    assert_eq!(store.usage(&scope, "2027-01").await.unwrap(), 0);
    assert_eq!(
        store
            .count_usage_if_under(&scope, "2027-01", Some(20))
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(store.usage(&other, "2026-12").await.unwrap(), 0);
    assert_eq!(
        store
            .count_usage_if_under(&other, "2026-12", Some(0))
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.usage(&other, "2026-12").await.unwrap(), 0);
}

async fn concurrent_audit_appends_never_fork_or_lose_an_entry(
    store: Arc<dyn Store>,
    _location: String,
) {
    let scope = store
        .create_tenant("audited", Plan::Internal)
        .await
        .unwrap();
    let agent_did = "did:web:alice.agent";
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let store = store.clone();
            let scope = scope.clone();
            tokio::spawn(async move {
                for n in 0..50u64 {
                    let extra = AuditExtra {
                        policy_digest: Some(format!("sha256:{task}")),
                        fuel_used: Some(n * 1000),
                        envelope_sha256: None,
                    };
                    store
                        .append_audit(
                            &scope,
                            agent_did,
                            "conn-1",
                            audit_fields(task * 50 + n),
                            extra,
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Another chain of the same agent, appended meanwhile, is its own chain.
    let first = store
        .append_audit(
            &scope,
            agent_did,
            "conn-2",
            audit_fields(0),
            AuditExtra::default(),
        )
        .await
        .unwrap();
    assert_eq!(first.seq, 0);
    assert_eq!(first.prev_hash, audit::GENESIS_PREV_HASH);
    for task in tasks {
        task.await.unwrap();
    }

    let chain = store
        .audit_chain(&scope, agent_did, "conn-1")
        .await
        .unwrap();
    assert_eq!(chain.len(), 400);
    assert!(chain.iter().map(|entry| entry.seq).eq(0..400));
    let report = audit::verify_chain(&chain);
    assert!(report.valid, "{report:?}");
    assert_eq!(report.entries_seen, 400);
    let mut msg_ids: Vec<&str> = chain.iter().map(|entry| entry.msg_id.as_str()).collect();
    msg_ids.sort_unstable();
    msg_ids.dedup();
    assert_eq!(msg_ids.len(), 400);

    let other = store
        .audit_chain(&scope, agent_did, "conn-2")
        .await
        .unwrap();
    assert_eq!(other, vec![first]);
    // Another tenant's scope sees no chain there.
    let stranger = store.create_tenant("stranger", Plan::Free).await.unwrap();
    assert!(
        store
            .audit_chain(&stranger, agent_did, "conn-1")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn policy_versions_are_activated_per_tenant(store: Arc<dyn Store>, _location: String) {
    let a = store.create_tenant("tenant-a", Plan::Pro).await.unwrap();
    let b = store.create_tenant("tenant-b", Plan::Pro).await.unwrap();
    assert_eq!(store.active_policy(&a).await.unwrap(), None);
    assert!(matches!(
        store.activate_policy(&a, "sha256:one").await,
        Err(StoreError::NotFound(_))
    ));
    store
        .put_policy_version(&a, "sha256:one", b"\0asm one")
        .await
        .unwrap();
    store
        .put_policy_version(&a, "sha256:one", b"\0asm one")
        .await
        .unwrap();
    store
        .put_policy_version(&a, "sha256:two", b"\0asm two")
        .await
        .unwrap();
    store.activate_policy(&a, "sha256:one").await.unwrap();
    assert_eq!(
        store.active_policy(&a).await.unwrap(),
        Some(("sha256:one".to_owned(), b"\0asm one".to_vec()))
    );
    store.activate_policy(&a, "sha256:two").await.unwrap();
    assert_eq!(
        store.active_policy(&a).await.unwrap(),
        Some(("sha256:two".to_owned(), b"\0asm two".to_vec()))
    );
    // Tenant B cannot activate (or see) A's versions.
    assert!(matches!(
        store.activate_policy(&b, "sha256:two").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.active_policy(&b).await.unwrap(), None);
}

#[tokio::test]
async fn an_unreachable_postgres_is_unavailable() {
    // Port 1 on localhost: nothing listens, the connection is refused.
    match store::open("postgres://postgres@127.0.0.1:1/arp").await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("expected Unavailable, got a store"),
    }
}

#[tokio::test]
async fn an_unopenable_sqlite_file_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"").unwrap();
    let location = file.join("data").join("arp.sqlite3").display().to_string();
    match store::open(&location).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("expected Unavailable, got a store"),
    }
}

#[tokio::test]
async fn a_location_of_another_scheme_is_refused() {
    assert!(matches!(
        store::open("mysql://localhost/arp").await,
        Err(StoreError::InvalidLocation(_))
    ));
}

#[tokio::test]
async fn sqlite_opens_from_a_url_a_file_or_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("by-url.db").display());
    store::open(&url).await.unwrap();
    assert!(dir.path().join("by-url.db").is_file());
    store::open(&dir.path().display().to_string())
        .await
        .unwrap();
    assert!(dir.path().join(store::sqlite::DEFAULT_FILE_NAME).is_file());
    let nested = dir.path().join("a").join("b").join("store.db");
    store::open(&nested.display().to_string()).await.unwrap();
    assert!(nested.is_file());
}
