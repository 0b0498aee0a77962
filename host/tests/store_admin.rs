//! The store operations of the admin API on both backends: tenants, plans, limits, API
//! keys, listings and policy versions per tenant, and owner actions on connections
//! (status change and audit entry in one transaction, never two winners).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use arp_host::audit::{self, AuditDecision, NewAuditEntry};
use arp_host::pdp::TenantLimits;
use arp_host::store::{Agent, Connection, ConnectionStatus, Plan, Store, StoreError};
use serde_json::json;

#[path = "../../tests/support/postgres.rs"]
mod postgres_support;
use postgres_support::TestDatabase;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let location = dir.path().join("data").display().to_string();
                    super::$name(arp_host::store::open(&location).await.unwrap()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let database = super::TestDatabase::create().await;
                    super::$name(arp_host::store::open(&database.url).await.unwrap()).await;
                }
            )*
        }
    };
}

on_both_backends!(
    admin_rows_are_per_tenant,
    concurrent_owner_actions_never_both_win,
);

fn agent(did: &str) -> Agent {
    Agent {
        did: did.to_owned(),
        public_key_multibase: "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK".to_owned(),
        did_document: json!({"id": did}),
        agent_card: json!({"name": did}),
        arp_json: json!({"version": "0.1"}),
    }
}

fn connection(id: &str, agent_did: &str) -> Connection {
    Connection {
        connection_id: id.to_owned(),
        agent_did: agent_did.to_owned(),
        peer_did: "did:web:peer.agent".to_owned(),
        status: ConnectionStatus::Active,
        token_json: json!({"connection_id": id, "issuer": "did:web:owner.example"}),
        cedar_policies: Vec::new(),
        obligations: Vec::new(),
        expires_at_ms: None,
    }
}

fn owner_entry(decision: AuditDecision) -> NewAuditEntry {
    NewAuditEntry {
        timestamp: audit::format_timestamp(1_776_859_200_000).unwrap(),
        msg_id: "owner-1".to_owned(),
        decision,
        policies_fired: Vec::new(),
        obligations: Vec::new(),
        spend_delta_cents: 0,
        reason: None,
    }
}

async fn admin_rows_are_per_tenant(store: Arc<dyn Store>) {
    let b = store.create_tenant("b", Plan::Free).await.unwrap();
    let a = store.create_tenant("a", Plan::Pro).await.unwrap();
    let ids: Vec<String> = store
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);
    store.set_plan(&a, Plan::Team).await.unwrap();
    assert_eq!(store.tenant(&a).await.unwrap().plan, Plan::Team);
    assert_eq!(store.tenant(&b).await.unwrap().plan, Plan::Free);

    // Limits: none by default, set per tenant, cleared again.
    assert_eq!(
        store.tenant_limits(&a).await.unwrap(),
        TenantLimits::default()
    );
    let limits = TenantLimits {
        fuel: Some(1000),
        deadline_ms: Some(20),
        memory_bytes: Some(1 << 20),
        concurrency: Some(2),
    };
    store.set_tenant_limits(&a, &limits).await.unwrap();
    assert_eq!(store.tenant_limits(&a).await.unwrap(), limits);
    assert_eq!(
        store.tenant_limits(&b).await.unwrap(),
        TenantLimits::default()
    );
    store
        .set_tenant_limits(&a, &TenantLimits::default())
        .await
        .unwrap();
    assert_eq!(
        store.tenant_limits(&a).await.unwrap(),
        TenantLimits::default()
    );

    // Keys: found by hash until revoked; another tenant cannot revoke them.
    store
        .create_api_key(&a, "key_1", "hash-1", Some("ci"))
        .await
        .unwrap();
    store
        .create_api_key(&b, "key_1", "hash-2", None)
        .await
        .unwrap();
    assert_eq!(store.tenant_by_api_key("hash-1").await.unwrap(), a);
    assert_eq!(store.tenant_by_api_key("hash-2").await.unwrap(), b);
    assert!(matches!(
        store.tenant_by_api_key("hash-3").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.revoke_api_key(&b, "key_9").await,
        Err(StoreError::NotFound(_))
    ));
    store.revoke_api_key(&a, "key_1").await.unwrap();
    store.revoke_api_key(&a, "key_1").await.unwrap();
    assert!(matches!(
        store.tenant_by_api_key("hash-1").await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.tenant_by_api_key("hash-2").await.unwrap(), b);
    let keys = store.api_keys(&a).await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].label.as_deref(), Some("ci"));
    assert!(keys[0].revoked_at_ms.is_some());
    assert!(store.api_keys(&b).await.unwrap()[0].revoked_at_ms.is_none());

    // Listings are per tenant.
    store
        .create_agent(&a, &agent("did:web:z.agent"))
        .await
        .unwrap();
    store
        .create_agent(&a, &agent("did:web:y.agent"))
        .await
        .unwrap();
    store
        .create_agent(&b, &agent("did:web:x.agent"))
        .await
        .unwrap();
    let dids: Vec<String> = store
        .agents(&a)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.did)
        .collect();
    assert_eq!(dids, ["did:web:y.agent", "did:web:z.agent"]);
    store
        .create_connection(&a, &connection("c2", "did:web:y.agent"))
        .await
        .unwrap();
    store
        .create_connection(&a, &connection("c1", "did:web:z.agent"))
        .await
        .unwrap();
    store
        .create_connection(&b, &connection("c1", "did:web:x.agent"))
        .await
        .unwrap();
    let ids: Vec<String> = store
        .connections(&a)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.connection_id)
        .collect();
    assert_eq!(ids, ["c1", "c2"]);
    assert_eq!(
        store.connections(&b).await.unwrap()[0].agent_did,
        "did:web:x.agent"
    );

    // Policy versions: sizes, per tenant.
    store
        .put_policy_version(&a, "sha256:aa", &[1, 2, 3])
        .await
        .unwrap();
    store
        .put_policy_version(&a, "sha256:aa", &[1, 2, 3])
        .await
        .unwrap();
    let versions = store.policy_versions(&a).await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(
        (versions[0].digest.as_str(), versions[0].size_bytes),
        ("sha256:aa", 3)
    );
    assert!(store.policy_versions(&b).await.unwrap().is_empty());
    assert!(matches!(
        store.activate_policy(&b, "sha256:aa").await,
        Err(StoreError::NotFound(_))
    ));
}

async fn concurrent_owner_actions_never_both_win(store: Arc<dyn Store>) {
    let a = store.create_tenant("a", Plan::Free).await.unwrap();
    let b = store.create_tenant("b", Plan::Free).await.unwrap();
    store
        .create_agent(&a, &agent("did:web:s.agent"))
        .await
        .unwrap();
    store
        .create_connection(&a, &connection("c1", "did:web:s.agent"))
        .await
        .unwrap();

    // Another tenant's connection is not found.
    let other = store
        .transition_connection(
            &b,
            "c1",
            &[ConnectionStatus::Active],
            ConnectionStatus::Suspended,
            owner_entry(AuditDecision::Suspend),
        )
        .await;
    assert!(matches!(other, Err(StoreError::NotFound(_))));

    let mut racers = Vec::new();
    for _ in 0..8 {
        let (store, a) = (store.clone(), a.clone());
        racers.push(tokio::spawn(async move {
            store
                .transition_connection(
                    &a,
                    "c1",
                    &[ConnectionStatus::Active],
                    ConnectionStatus::Suspended,
                    owner_entry(AuditDecision::Suspend),
                )
                .await
        }));
    }
    let mut won = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok((before, entry)) => {
                won += 1;
                assert_eq!(before.status, ConnectionStatus::Active);
                assert_eq!(entry.decision, AuditDecision::Suspend);
            }
            Err(StoreError::Conflict(_)) => {}
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        store.connection(&a, "c1").await.unwrap().status,
        ConnectionStatus::Suspended
    );

    let (_, entry) = store
        .transition_connection(
            &a,
            "c1",
            &[ConnectionStatus::Active, ConnectionStatus::Suspended],
            ConnectionStatus::Revoked,
            owner_entry(AuditDecision::Revoke),
        )
        .await
        .unwrap();
    assert_eq!(entry.seq, 1);
    assert!(
        store
            .is_revoked(&a, "did:web:s.agent", "connection", "c1")
            .await
            .unwrap()
    );
    let chain = store
        .audit_chain(&a, "did:web:s.agent", "c1")
        .await
        .unwrap();
    let decisions: Vec<AuditDecision> = chain.iter().map(|e| e.decision).collect();
    assert_eq!(decisions, [AuditDecision::Suspend, AuditDecision::Revoke]);
    assert!(audit::verify_chain(&chain).valid);
}

/// Postgres row-level security: the store's own connections (role `arp_app`) see a
/// tenant's rows only with that tenant set, so a query that forgets its tenant scope
/// returns nothing, and a write into another tenant is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_level_security_hides_rows_without_the_tenant() {
    use arp_host::store::postgres::PostgresStore;
    let database = TestDatabase::create().await;
    let store = PostgresStore::open(&database.url).await.unwrap();
    let a = store.create_tenant("a", Plan::Free).await.unwrap();
    let b = store.create_tenant("b", Plan::Free).await.unwrap();
    store
        .create_agent(&a, &agent("did:web:a.agent"))
        .await
        .unwrap();
    store
        .create_agent(&b, &agent("did:web:b.agent"))
        .await
        .unwrap();
    store
        .put_policy_version(&a, "sha256:aa", &[1])
        .await
        .unwrap();

    let count = |sql: &'static str, tenant: Option<&'static str>| {
        let pool = store.pool().clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            if let Some(tenant) = tenant {
                sqlx::query("SELECT set_config('arp.tenant_id', $1, true)")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut *tx).await.unwrap();
            n
        }
    };
    // No tenant_id in the WHERE: only the transaction's tenant decides.
    assert_eq!(count("SELECT COUNT(*) FROM agents", None).await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM agents", Some("a")).await, 1);
    assert_eq!(
        count("SELECT COUNT(*) FROM policy_versions", Some("b")).await,
        0
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM policy_versions", Some("a")).await,
        1
    );
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(role, "arp_app");

    // Writing another tenant's row from a tenant's transaction is refused.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("SELECT set_config('arp.tenant_id', 'a', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let refused =
        sqlx::query("INSERT INTO usage (tenant_id, period, inbound) VALUES ('b', '2026-01', 1)")
            .execute(&mut *tx)
            .await;
    assert!(refused.is_err());
    drop(tx);

    // Routing and key lookups still work (host-wide reads), and scoped reads see their own.
    assert_eq!(store.agent_by_did("did:web:b.agent").await.unwrap().0, b);
    assert_eq!(store.agents(&a).await.unwrap().len(), 1);
}
