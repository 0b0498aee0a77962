//! The store against real databases: every behaviour is one body run on SQLite (a file in a
//! temporary directory) and on Postgres (a fresh database per test on 127.0.0.1:5432, user
//! `postgres`, or `ARP_TEST_POSTGRES_URL`). Postgres being unreachable fails the Postgres
//! tests: they never skip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::Arc;

use arp_host::audit::{self, AuditDecision, NewAuditEntry};
use arp_host::pdp::Obligation;
use arp_host::recorder::Recorder;
use arp_host::store::{
    self, Agent, AllowedInbound, AuditExtra, Connection, ConnectionStatus, InboundOutcome,
    InboundRecord, NewMessage, Plan, Store, StoreError, TenantScope,
};
use serde_json::json;

#[path = "../../tests/support/postgres.rs"]
mod postgres_support;
use postgres_support::TestDatabase;

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
    an_allowed_inbound_message_is_counted_audited_and_queued,
    a_denied_inbound_message_is_only_audited,
    an_inbound_message_at_the_cap_is_denied_as_quota_exceeded,
    a_replayed_inbound_message_writes_nothing,
    concurrent_inbound_records_keep_one_unbroken_chain,
    concurrent_records_through_the_recorder_keep_one_unbroken_chain,
    queues_revocations_chains_and_ping_are_per_tenant,
    delivery_acks_counts_attempts_and_expires_per_agent,
    a_batch_gives_each_record_its_own_outcome_in_order,
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
    assert_eq!(store.active_policy_digest(&a).await.unwrap(), None);
    assert!(matches!(
        store.activate_policy(&a, "sha256:one").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.policy_bytes(&a, "sha256:one").await,
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
    assert_eq!(
        store.policy_bytes(&a, "sha256:one").await.unwrap(),
        b"\0asm one"
    );
    assert_eq!(
        store.policy_bytes(&a, "sha256:two").await.unwrap(),
        b"\0asm two"
    );
    store.activate_policy(&a, "sha256:one").await.unwrap();
    assert_eq!(
        store.active_policy_digest(&a).await.unwrap().as_deref(),
        Some("sha256:one")
    );
    store.activate_policy(&a, "sha256:two").await.unwrap();
    assert_eq!(
        store.active_policy_digest(&a).await.unwrap().as_deref(),
        Some("sha256:two")
    );
    // Tenant B cannot activate (or see) A's versions.
    assert!(matches!(
        store.activate_policy(&b, "sha256:two").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.active_policy_digest(&b).await.unwrap(), None);
    assert!(matches!(
        store.policy_bytes(&b, "sha256:two").await,
        Err(StoreError::NotFound(_))
    ));
}

const ALICE: &str = "did:web:alice.agent";
const BOB: &str = "did:web:bob.agent";
const PERIOD: &str = "2026-12";

/// An inbound record from Bob to Alice on `conn-1`: allowed (for `plan`) or denied.
fn inbound(n: u64, allow: Option<Plan>) -> InboundRecord {
    let mut audit = audit_fields(n);
    audit.msg_id = format!("m-{n}");
    audit.decision = if allow.is_some() {
        AuditDecision::Allow
    } else {
        AuditDecision::Deny
    };
    InboundRecord {
        signer_did: BOB.to_owned(),
        msg_id: audit.msg_id.clone(),
        agent_did: ALICE.to_owned(),
        connection_id: "conn-1".to_owned(),
        extra: AuditExtra {
            policy_digest: Some("sha256:policy".to_owned()),
            fuel_used: Some(1234),
            envelope_sha256: Some(format!("sha256:{n:064x}")),
        },
        allow: allow.map(|plan| AllowedInbound {
            period: PERIOD.to_owned(),
            plan,
            message: NewMessage {
                id: format!("00000000-0000-4000-8000-{n:012}"),
                agent_did: ALICE.to_owned(),
                connection_id: "conn-1".to_owned(),
                msg_id: audit.msg_id.clone(),
                msg_type: "https://didcomm.org/arp/1.0/request".to_owned(),
                envelope: format!("aGVhZGVy.{n}.c2ln"),
                peer_did: BOB.to_owned(),
                obligations: audit.obligations.clone(),
                policies_fired: audit.policies_fired.clone(),
                expires_at_ms: n.is_multiple_of(2).then_some(1_900_000_000_000),
            },
        }),
        audit,
        require_usable_connection: false,
        notify_hosts: None,
    }
}

/// The audit entry of a `Queued` outcome (fails the test on any other).
fn queued(outcome: InboundOutcome) -> audit::AuditEntry {
    match outcome {
        InboundOutcome::Queued { entry } => entry,
        other => panic!("expected Queued, got {other:?}"),
    }
}

/// How many entries Alice's chain on `conn-1` has.
async fn chain_len(store: &Arc<dyn Store>, scope: &store::TenantScope) -> usize {
    store
        .audit_chain(scope, ALICE, "conn-1")
        .await
        .unwrap()
        .len()
}

/// Sets a tenant's usage counter directly, through a second handle on the database.
async fn set_usage(backend: &str, location: &str, tenant_id: &str, period: &str, inbound: i64) {
    const UPSERT: &str = "INSERT INTO usage (tenant_id, period, inbound) VALUES ($1, $2, $3) \
        ON CONFLICT (tenant_id, period) DO UPDATE SET inbound = excluded.inbound";
    match backend {
        "sqlite" => {
            let store = store::sqlite::SqliteStore::open(location).await.unwrap();
            sqlx::query(UPSERT)
                .bind(tenant_id)
                .bind(period)
                .bind(inbound)
                .execute(store.pool())
                .await
                .unwrap();
        }
        "postgres" => {
            let store = store::postgres::PostgresStore::open(location)
                .await
                .unwrap();
            // Row-level security: the tenant's rows only with the tenant set.
            let mut tx = store.pool().begin().await.unwrap();
            sqlx::query("SELECT set_config('arp.tenant_id', $1, true)")
                .bind(tenant_id)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query(UPSERT)
                .bind(tenant_id)
                .bind(period)
                .bind(inbound)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        other => panic!("unknown backend {other}"),
    }
}

async fn an_allowed_inbound_message_is_counted_audited_and_queued(
    store: Arc<dyn Store>,
    _location: String,
) {
    let scope = store.create_tenant("acme", Plan::Pro).await.unwrap();
    let record = inbound(1, Some(Plan::Pro));
    let entry = queued(store.record_inbound(&scope, record.clone()).await.unwrap());
    assert_eq!(entry.seq, 0);
    assert_eq!(entry.prev_hash, audit::GENESIS_PREV_HASH);
    assert_eq!(entry.decision, AuditDecision::Allow);
    assert_eq!(entry.msg_id, "m-1");
    assert_eq!(
        store.audit_chain(&scope, ALICE, "conn-1").await.unwrap(),
        vec![entry]
    );
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 1);
    let message = record.allow.unwrap().message;
    assert_eq!(
        store.message_status(&scope, &message.id).await.unwrap(),
        "queued"
    );
    let queued = store
        .deliverable_messages(&scope, ALICE, 0, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    let got = &queued[0];
    assert_eq!(
        (
            got.id.as_str(),
            got.agent_did.as_str(),
            got.connection_id.as_str(),
            got.msg_id.as_str(),
            got.msg_type.as_str(),
            got.envelope.as_str(),
            got.peer_did.as_str(),
        ),
        (
            message.id.as_str(),
            ALICE,
            "conn-1",
            "m-1",
            message.msg_type.as_str(),
            message.envelope.as_str(),
            BOB,
        )
    );
    assert_eq!(got.obligations, message.obligations);
    assert_eq!(got.policies_fired, message.policies_fired);
    assert_eq!(got.attempts, 0);
    assert_eq!(got.expires_at_ms, message.expires_at_ms);
    assert!(got.created_at_ms > 1_700_000_000_000);
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    // The replay guard was recorded in the same transaction.
    assert!(matches!(
        store.record_replay(BOB, "m-1").await,
        Err(StoreError::Conflict(_))
    ));
}

async fn a_denied_inbound_message_is_only_audited(store: Arc<dyn Store>, _location: String) {
    let scope = store.create_tenant("acme", Plan::Free).await.unwrap();
    let record = inbound(2, None);
    let outcome = store.record_inbound(&scope, record.clone()).await.unwrap();
    let InboundOutcome::Denied { entry } = outcome else {
        panic!("expected Denied, got {outcome:?}");
    };
    assert_eq!(entry.decision, AuditDecision::Deny);
    assert_eq!(entry.reason, record.audit.reason);
    assert_eq!(entry.obligations, record.audit.obligations);
    assert_eq!(
        store.audit_chain(&scope, ALICE, "conn-1").await.unwrap(),
        vec![entry]
    );
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 0);
    assert!(
        store
            .deliverable_messages(&scope, ALICE, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

async fn an_inbound_message_at_the_cap_is_denied_as_quota_exceeded(
    store: Arc<dyn Store>,
    location: String,
) {
    let scope = store.create_tenant("acme", Plan::Free).await.unwrap();
    // One under the cap: the 1000th message is queued.
    set_usage(store.backend(), &location, "acme", PERIOD, 999).await;
    queued(
        store
            .record_inbound(&scope, inbound(1, Some(Plan::Free)))
            .await
            .unwrap(),
    );
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 1000);

    // At the cap: audited as a deny, nothing counted or queued.
    let record = inbound(3, Some(Plan::Free));
    let outcome = store.record_inbound(&scope, record.clone()).await.unwrap();
    let InboundOutcome::QuotaExceeded { entry, used, cap } = outcome else {
        panic!("expected QuotaExceeded, got {outcome:?}");
    };
    assert_eq!((used, cap), (1000, 1000));
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.decision, AuditDecision::Deny);
    assert_eq!(
        entry.reason.as_deref(),
        Some("quota_exceeded:free:1000/1000")
    );
    assert!(entry.obligations.is_empty());
    assert_eq!(entry.policies_fired, record.audit.policies_fired);
    assert_eq!(entry.msg_id, "m-3");
    let chain = store.audit_chain(&scope, ALICE, "conn-1").await.unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], entry);
    assert!(audit::verify_chain(&chain).valid);
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 1000);
    let queued = store
        .deliverable_messages(&scope, ALICE, 0, 10)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].msg_id, "m-1");
    // The replay guard holds the refused message too.
    assert!(matches!(
        store.record_inbound(&scope, record).await,
        Err(StoreError::Replayed)
    ));
}

async fn a_replayed_inbound_message_writes_nothing(store: Arc<dyn Store>, _location: String) {
    let scope = store.create_tenant("acme", Plan::Pro).await.unwrap();
    let record = inbound(4, Some(Plan::Pro));
    store.record_inbound(&scope, record.clone()).await.unwrap();
    // The same (signer, message id) again, allowed or denied: refused, nothing written.
    for again in [record.clone(), inbound(4, None)] {
        assert!(matches!(
            store.record_inbound(&scope, again).await,
            Err(StoreError::Replayed)
        ));
    }
    let mut other_id = record.clone();
    other_id.allow.as_mut().unwrap().message.id = "another-queue-id".to_owned();
    assert!(matches!(
        store.record_inbound(&scope, other_id).await,
        Err(StoreError::Replayed)
    ));
    assert_eq!(chain_len(&store, &scope).await, 1);
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 1);
    assert_eq!(store.queue_depth().await.unwrap(), 1);
    // A failure after the replay insert rolls the replay row back too: a queue id taken
    // already fails the whole record, and the message can be recorded again later.
    let mut clash = inbound(5, Some(Plan::Pro));
    clash.allow.as_mut().unwrap().message.id = record.allow.unwrap().message.id;
    assert!(matches!(
        store.record_inbound(&scope, clash).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(chain_len(&store, &scope).await, 1);
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 1);
    queued(
        store
            .record_inbound(&scope, inbound(5, Some(Plan::Pro)))
            .await
            .unwrap(),
    );
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 2);
}

async fn concurrent_inbound_records_keep_one_unbroken_chain(
    store: Arc<dyn Store>,
    _location: String,
) {
    let scope = store.create_tenant("busy", Plan::Team).await.unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let store = store.clone();
            let scope = scope.clone();
            tokio::spawn(async move {
                for n in 0..50u64 {
                    let outcome = store
                        .record_inbound(&scope, inbound(task * 50 + n, Some(Plan::Team)))
                        .await
                        .unwrap();
                    assert!(matches!(outcome, InboundOutcome::Queued { .. }));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_one_queued_chain_of(&store, &scope, 400).await;
}

/// Alice's chain on `conn-1` is unbroken with `count` entries, each counted and queued.
async fn assert_one_queued_chain_of(store: &Arc<dyn Store>, scope: &TenantScope, count: usize) {
    let chain = store.audit_chain(scope, ALICE, "conn-1").await.unwrap();
    assert_eq!(chain.len(), count);
    let report = audit::verify_chain(&chain);
    assert!(report.valid, "{report:?}");
    assert_eq!(report.entries_seen, count as u64);
    assert_eq!(store.usage(scope, PERIOD).await.unwrap(), count as u64);
    assert_eq!(store.queue_depth().await.unwrap(), count as u64);
    assert_eq!(
        store
            .deliverable_messages(scope, ALICE, 0, 1000)
            .await
            .unwrap()
            .len(),
        count
    );
}

/// The group commit of dispatch: concurrent records share transactions, and each still
/// gets its own outcome (a replay among them refuses only itself).
async fn concurrent_records_through_the_recorder_keep_one_unbroken_chain(
    store: Arc<dyn Store>,
    _location: String,
) {
    let scope = store.create_tenant("busy", Plan::Team).await.unwrap();
    let recorder = Recorder::new(store.clone());
    let tasks: Vec<_> = (0..8u64)
        .map(|task| {
            let recorder = recorder.clone();
            let scope = scope.clone();
            tokio::spawn(async move {
                for n in 0..50u64 {
                    let key = task * 50 + n;
                    let outcome = recorder
                        .record(&scope, inbound(key, Some(Plan::Team)))
                        .await
                        .unwrap();
                    assert!(matches!(outcome, InboundOutcome::Queued { .. }));
                    let again = recorder
                        .record(&scope, inbound(key, Some(Plan::Team)))
                        .await;
                    assert!(matches!(again, Err(StoreError::Replayed)), "{again:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_one_queued_chain_of(&store, &scope, 400).await;
}

async fn queues_revocations_chains_and_ping_are_per_tenant(
    store: Arc<dyn Store>,
    _location: String,
) {
    store.ping().await.unwrap();
    let a = store.create_tenant("tenant-a", Plan::Team).await.unwrap();
    let b = store.create_tenant("tenant-b", Plan::Team).await.unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 0);
    assert!(store.audit_chains(&a).await.unwrap().is_empty());
    assert!(store.revocations(&a, ALICE).await.unwrap().is_empty());

    // Queued messages, oldest first, at most `limit`; another agent's are not listed.
    for n in 0..5u64 {
        let record = inbound(n, Some(Plan::Team));
        store.record_inbound(&a, record).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let mut carol = inbound(9, Some(Plan::Team));
    carol.agent_did = "did:web:carol.agent".to_owned();
    carol.allow.as_mut().unwrap().message.agent_did = "did:web:carol.agent".to_owned();
    store.record_inbound(&a, carol).await.unwrap();
    let queued = store.deliverable_messages(&a, ALICE, 0, 3).await.unwrap();
    let ids: Vec<&str> = queued.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids, ["m-0", "m-1", "m-2"]);
    assert!(
        queued
            .windows(2)
            .all(|pair| pair[0].created_at_ms <= pair[1].created_at_ms)
    );
    assert_eq!(
        store
            .deliverable_messages(&a, ALICE, 0, 100)
            .await
            .unwrap()
            .len(),
        5
    );
    assert!(
        store
            .deliverable_messages(&a, ALICE, 0, 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .deliverable_messages(&b, ALICE, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
    // The gauge is host-wide: B's message counts too.
    store
        .record_inbound(&b, inbound(20, Some(Plan::Team)))
        .await
        .unwrap();
    assert_eq!(store.queue_depth().await.unwrap(), 7);

    // Audit chains of the tenant, sorted.
    store
        .append_audit(&a, ALICE, "conn-0", audit_fields(0), AuditExtra::default())
        .await
        .unwrap();
    assert_eq!(
        store.audit_chains(&a).await.unwrap(),
        vec![
            (ALICE.to_owned(), "conn-0".to_owned()),
            (ALICE.to_owned(), "conn-1".to_owned()),
            ("did:web:carol.agent".to_owned(), "conn-1".to_owned()),
        ]
    );
    assert_eq!(
        store.audit_chains(&b).await.unwrap(),
        vec![(ALICE.to_owned(), "conn-1".to_owned())]
    );
    let c = store.create_tenant("tenant-c", Plan::Team).await.unwrap();
    assert!(store.audit_chains(&c).await.unwrap().is_empty());

    // Revocations, oldest first, per agent and tenant.
    store
        .add_revocation(&a, ALICE, "connection", "conn-1")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    store
        .add_revocation(&a, ALICE, "token", "tok-9")
        .await
        .unwrap();
    store
        .add_revocation(&a, ALICE, "connection", "conn-1")
        .await
        .unwrap();
    store
        .add_revocation(&a, "did:web:carol.agent", "connection", "conn-7")
        .await
        .unwrap();
    let revoked = store.revocations(&a, ALICE).await.unwrap();
    let kinds: Vec<(&str, &str)> = revoked
        .iter()
        .map(|r| (r.kind.as_str(), r.id.as_str()))
        .collect();
    assert_eq!(kinds, [("connection", "conn-1"), ("token", "tok-9")]);
    assert!(revoked[0].created_at_ms < revoked[1].created_at_ms);
    assert!(store.revocations(&b, ALICE).await.unwrap().is_empty());
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

async fn delivery_acks_counts_attempts_and_expires_per_agent(
    store: Arc<dyn Store>,
    _location: String,
) {
    let a = store.create_tenant("tenant-a", Plan::Team).await.unwrap();
    let b = store.create_tenant("tenant-b", Plan::Team).await.unwrap();
    // m-1 never expires (odd n), m-2 expires in 2030, m-3 never; m-5 is already expired.
    for n in [1u64, 2, 3] {
        store
            .record_inbound(&a, inbound(n, Some(Plan::Team)))
            .await
            .unwrap();
    }
    let mut stale = inbound(5, Some(Plan::Team));
    stale.allow.as_mut().unwrap().message.expires_at_ms = Some(1);
    store.record_inbound(&a, stale).await.unwrap();

    assert_eq!(store.deliverable_count(&a, ALICE).await.unwrap(), 3);
    assert_eq!(store.deliverable_count(&b, ALICE).await.unwrap(), 0);
    let page = store.deliverable_messages(&a, ALICE, 1, 10).await.unwrap();
    let ids: Vec<&str> = page.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(
        ids,
        ["m-2", "m-3"],
        "offset skips the oldest; the expired is never listed"
    );

    // Taking for a push counts an attempt of each message taken, and only of those: the
    // in-flight are left out, and `room` bounds how many are taken.
    let none = HashSet::new();
    let first = store
        .take_for_push(&a, ALICE, (0, 10), &none, 1)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let id = first[0].id.clone();
    assert_eq!(first[0].attempts, 0, "returned as read");
    let again = store
        .take_for_push(&a, ALICE, (0, 1), &none, 5)
        .await
        .unwrap();
    assert_eq!((again[0].id.as_str(), again[0].attempts), (id.as_str(), 1));
    let in_flight = HashSet::from([id.clone()]);
    let others = store
        .take_for_push(&a, ALICE, (0, 10), &in_flight, 5)
        .await
        .unwrap();
    let others: Vec<&str> = others.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(others, ["m-2", "m-3"]);
    let page = store.deliverable_messages(&a, ALICE, 0, 10).await.unwrap();
    let attempts: Vec<u32> = page.iter().map(|m| m.attempts).collect();
    assert_eq!(attempts, [2, 1, 1]);
    assert!(
        store
            .take_for_push(&b, ALICE, (0, 10), &none, 5)
            .await
            .unwrap()
            .is_empty()
    );

    // Acks are per tenant and agent, and only once.
    assert!(!store.ack_message(&b, ALICE, &id).await.unwrap());
    assert!(
        !store
            .ack_message(&a, "did:web:carol.agent", &id)
            .await
            .unwrap()
    );
    assert!(store.ack_message(&a, ALICE, &id).await.unwrap());
    assert!(!store.ack_message(&a, ALICE, &id).await.unwrap());
    assert_eq!(store.message_status(&a, &id).await.unwrap(), "delivered");
    assert_eq!(store.deliverable_count(&a, ALICE).await.unwrap(), 2);

    assert_eq!(store.expire_messages(1_000).await.unwrap(), 1);
    assert_eq!(store.expire_messages(1_000).await.unwrap(), 0);
    assert_eq!(store.queue_depth().await.unwrap(), 2);
    // Acks in a batch count only the agent's queued messages.
    let rest: Vec<String> = store
        .deliverable_messages(&a, ALICE, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(rest.len(), 2);
    assert_eq!(store.ack_messages(&b, ALICE, &rest).await.unwrap(), 0);
    let mixed = vec![rest[0].clone(), id.clone(), "unknown".to_owned()];
    assert_eq!(store.ack_messages(&a, ALICE, &mixed).await.unwrap(), 1);
    assert_eq!(store.queue_depth().await.unwrap(), 1);

    // Connection listing stays within the tenant.
    store
        .create_connection(&a, &connection("c-a", ALICE, BOB, ConnectionStatus::Active))
        .await
        .unwrap();
    assert_eq!(store.agent_connections(&a, ALICE).await.unwrap().len(), 1);
    assert!(store.agent_connections(&b, ALICE).await.unwrap().is_empty());

    // A record that relies on a cached connection is refused as stale, writing nothing,
    // once the connection stops carrying messages.
    let mut cached = inbound(20, Some(Plan::Team));
    cached.connection_id = "c-a".to_owned();
    cached.require_usable_connection = true;
    store.record_inbound(&a, cached).await.unwrap();
    store
        .add_revocation(&a, ALICE, "connection", "c-a")
        .await
        .unwrap();
    let mut late = inbound(21, Some(Plan::Team));
    late.connection_id = "c-a".to_owned();
    late.require_usable_connection = true;
    assert!(matches!(
        store.record_inbound(&a, late.clone()).await,
        Err(StoreError::Stale)
    ));
    assert_eq!(store.audit_chain(&a, ALICE, "c-a").await.unwrap().len(), 1);
    late.require_usable_connection = false;
    store.record_inbound(&a, late).await.unwrap();
}

async fn a_batch_gives_each_record_its_own_outcome_in_order(
    store: Arc<dyn Store>,
    location: String,
) {
    let scope = store.create_tenant("acme", Plan::Free).await.unwrap();
    for (id, status) in [
        ("c-ok", ConnectionStatus::Active),
        ("c-gone", ConnectionStatus::Suspended),
    ] {
        store
            .create_connection(&scope, &connection(id, ALICE, BOB, status))
            .await
            .unwrap();
    }
    // Three under the cap of 1000; m-7 is recorded first, alone.
    set_usage(store.backend(), &location, "acme", PERIOD, 997).await;
    queued(
        store
            .record_inbound(&scope, inbound(7, Some(Plan::Free)))
            .await
            .unwrap(),
    );

    let on = |mut record: InboundRecord, connection_id: &str| {
        record.connection_id = connection_id.to_owned();
        record.require_usable_connection = true;
        record
    };
    let mut same_key = inbound(1, Some(Plan::Free));
    same_key.allow.as_mut().unwrap().message.id = "00000000-0000-4000-8000-000000000099".into();
    let batch = vec![
        inbound(1, Some(Plan::Free)),               // queued: 999
        inbound(2, None),                           // denied
        same_key,                                   // the key of the first: a replay
        inbound(3, Some(Plan::Free)),               // queued: 1000, the cap
        inbound(4, Some(Plan::Free)),               // over the cap
        on(inbound(5, Some(Plan::Free)), "c-gone"), // its cached connection is suspended
        on(inbound(6, None), "c-ok"),               // another chain, usable
        inbound(7, Some(Plan::Free)),               // received before: a replay
    ];
    let results = store.record_inbound_batch(&scope, batch).await.unwrap();
    assert_eq!(results.len(), 8);
    let kinds: Vec<String> = results
        .iter()
        .map(|result| match result {
            Ok(InboundOutcome::Queued { entry }) => format!("queued {}", entry.seq),
            Ok(InboundOutcome::Denied { entry }) => format!("denied {}", entry.seq),
            Ok(InboundOutcome::QuotaExceeded { entry, used, cap }) => {
                format!("over {} {used}/{cap}", entry.seq)
            }
            Err(StoreError::Replayed) => "replayed".to_owned(),
            Err(StoreError::Stale) => "stale".to_owned(),
            Err(other) => format!("error {other}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "queued 1",
            "denied 2",
            "replayed",
            "queued 3",
            "over 4 1000/1000",
            "stale",
            "denied 0",
            "replayed",
        ]
    );

    // One unbroken chain per connection, in the batch's order.
    let chain = store.audit_chain(&scope, ALICE, "conn-1").await.unwrap();
    assert!(audit::verify_chain(&chain).valid);
    let ids: Vec<&str> = chain.iter().map(|entry| entry.msg_id.as_str()).collect();
    assert_eq!(ids, ["m-7", "m-1", "m-2", "m-3", "m-4"]);
    assert_eq!(
        chain[4].reason.as_deref(),
        Some("quota_exceeded:free:1000/1000")
    );
    let other = store.audit_chain(&scope, ALICE, "c-ok").await.unwrap();
    assert_eq!(other.len(), 1);
    assert!(
        store
            .audit_chain(&scope, ALICE, "c-gone")
            .await
            .unwrap()
            .is_empty()
    );

    // Counted and queued: exactly the allowed records under the cap.
    assert_eq!(store.usage(&scope, PERIOD).await.unwrap(), 1000);
    let queue = store
        .deliverable_messages(&scope, ALICE, 0, 10)
        .await
        .unwrap();
    let mut queued_ids: Vec<&str> = queue.iter().map(|m| m.msg_id.as_str()).collect();
    queued_ids.sort_unstable();
    assert_eq!(queued_ids, ["m-1", "m-3", "m-7"]);
    // The stale record wrote nothing: its key is still new.
    store.record_replay(BOB, "m-5").await.unwrap();
}
