//! `arp-policy-scopes`: an example ARP policy that allows exactly what the connection's
//! scopes grant, without Cedar.
//!
//! The scope catalogue (`scope-actions.tsv`, the table of the shared ARP vectors) maps each
//! scope id to the Cedar action it grants (`-`: the action is the scope id itself) and,
//! when its `resource_type` is not `-`, to the only entity type it may act on. A request is
//! allowed when one of the connection's scopes grants its action on its target's type.
//! Scopes that are not in the catalogue grant nothing. (The catalogue's
//! `resource_id_source` column is not checked: it says where dispatch takes the id from.)
//!
//! An allow names the granting scope in `policies_fired` (the first one, in the token's
//! order) and carries a `spend_cap` obligation `{"max_cents": N}`: N is the context's
//! `spend_cap_cents` when that is a non-negative integer, and otherwise 0, which means no
//! spending is allowed. A deny has the reason `scope_not_granted`.
//!
//! The table is parsed into a sorted list once, in `init()`, so the host's snapshot holds it
//! ready and a decision only binary-searches it (scanning the text for every scope cost
//! ~700 wasm instructions per row). Without `init()` the first decision parses it.

use std::sync::OnceLock;

use arp_policy_sdk::serde_json::{Value, json};
use arp_policy_sdk::{Decision, Policy, Request};

/// The scope catalogue: a header row, then `scope_id`, `cedar_action`, `resource_type`,
/// `resource_id_source`, separated by tabs.
const SCOPE_TABLE: &str = include_str!("../scope-actions.tsv");

/// What one scope of the catalogue grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    /// The Cedar action the scope allows.
    action: &'static str,
    /// The only target entity type it allows, if it constrains the type.
    resource_type: Option<&'static str>,
}

/// The catalogue, parsed, sorted by scope id.
static CATALOGUE: OnceLock<Vec<(&'static str, Grant)>> = OnceLock::new();

/// The parsed catalogue; parses it on first use.
fn catalogue() -> &'static [(&'static str, Grant)] {
    CATALOGUE.get_or_init(|| {
        let mut rows: Vec<(&'static str, Grant)> = SCOPE_TABLE
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut columns = line.split('\t');
                let scope_id = columns.next()?;
                let action = columns.next()?;
                let resource_type = columns.next()?;
                let grant = Grant {
                    action: if action == "-" { scope_id } else { action },
                    resource_type: (resource_type != "-").then_some(resource_type),
                };
                Some((scope_id, grant))
            })
            .collect();
        rows.sort_unstable_by_key(|(scope_id, _)| *scope_id);
        rows
    })
}

/// Looks `scope_id` up in the catalogue; `None` for a scope the catalogue does not know.
fn grant(scope_id: &str) -> Option<Grant> {
    let rows = catalogue();
    rows.binary_search_by(|(id, _)| (*id).cmp(scope_id))
        .ok()
        .map(|index| rows[index].1)
}

/// The spending cap in cents from the context's `spend_cap_cents`; 0 (no spending) when it
/// is absent or not a non-negative integer, so a malformed cap never grants money.
fn spend_cap_cents(context: &Value) -> u64 {
    context
        .get("spend_cap_cents")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Allows what the connection's scopes grant.
pub struct Scopes;

impl Policy for Scopes {
    fn evaluate(request: &Request) -> Decision {
        let granting_scope = request.connection.scopes.iter().find(|scope_id| {
            grant(scope_id).is_some_and(|grant| {
                grant.action == request.action
                    && grant
                        .resource_type
                        .is_none_or(|kind| kind == request.target.kind)
            })
        });
        match granting_scope {
            Some(scope_id) => Decision::allow().fired(scope_id.as_str()).obligation(
                "spend_cap",
                json!({ "max_cents": spend_cap_cents(&request.context) }),
            ),
            None => Decision::deny().reason("scope_not_granted"),
        }
    }

    /// Parses the catalogue into the snapshot, so decisions do not.
    fn init() {
        catalogue();
    }
}

arp_policy_sdk::export_policy!(Scopes);

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use arp_policy_sdk::{Connection, Entity};

    fn request(action: &str, target: Entity, scopes: &[&str]) -> Request {
        let mut connection = Connection::new("conn_orion_sam_01");
        for scope in scopes {
            connection = connection.scope(*scope);
        }
        Request::new(Entity::new("Agent", "did:web:orion.agent"), action, target)
            .with_connection(connection)
    }

    #[test]
    fn table_has_every_scope_with_four_columns() {
        let rows: Vec<&str> = SCOPE_TABLE.lines().skip(1).collect();
        assert_eq!(rows.len(), 51);
        for row in rows {
            assert_eq!(row.split('\t').count(), 4, "{row}");
            let scope_id = row.split('\t').next().unwrap();
            assert!(grant(scope_id).is_some(), "{scope_id}");
        }
        assert_eq!(catalogue().len(), 51);
        Scopes::init();
    }

    #[test]
    fn lookup_maps_actions_and_types() {
        assert_eq!(
            grant("calendar.availability.read"),
            Some(Grant {
                action: "check_availability",
                resource_type: Some("Calendar")
            })
        );
        // `-` action: the scope id is the action.
        assert_eq!(
            grant("files.project.files.read"),
            Some(Grant {
                action: "files.project.files.read",
                resource_type: None
            })
        );
        assert_eq!(
            grant("contacts.search"),
            Some(Grant {
                action: "search_contacts",
                resource_type: None
            })
        );
        assert_eq!(grant("unknown.scope"), None);
        // A prefix of a scope id is not that scope.
        assert_eq!(grant("calendar.events"), None);
        assert_eq!(grant(""), None);
    }

    #[test]
    fn allows_granted_action_on_the_right_type() {
        let decision = Scopes::evaluate(&request(
            "check_availability",
            Entity::new("Calendar", "primary"),
            &["calendar.availability.read"],
        ));
        assert!(decision.is_allow());
        assert_eq!(decision.policies_fired, ["calendar.availability.read"]);
        assert_eq!(decision.obligations.len(), 1);
        assert_eq!(decision.obligations[0].kind, "spend_cap");
        assert_eq!(decision.obligations[0].params, json!({"max_cents": 0}));
    }

    #[test]
    fn denies_the_wrong_resource_type() {
        let decision = Scopes::evaluate(&request(
            "check_availability",
            Entity::new("Project", "alpha"),
            &["calendar.availability.read"],
        ));
        assert!(!decision.is_allow());
        assert_eq!(decision.reasons, ["scope_not_granted"]);
        assert!(decision.policies_fired.is_empty());
    }

    #[test]
    fn denies_without_a_granting_scope() {
        for scopes in [&[][..], &["contacts.search"], &["no.such.scope"]] {
            let decision =
                Scopes::evaluate(&request("read", Entity::new("Project", "alpha"), scopes));
            assert!(!decision.is_allow(), "{scopes:?}");
            assert_eq!(decision.reasons, ["scope_not_granted"]);
            assert!(decision.obligations.is_empty());
        }
    }

    #[test]
    fn untyped_scope_allows_any_target_and_passthrough_action() {
        let target = Entity::new("Resource", "default");
        let decision = Scopes::evaluate(&request(
            "files.project.files.read",
            target.clone(),
            &["files.project.files.read"],
        ));
        assert!(decision.is_allow());
        // The pass-through scope grants only its own id as an action.
        let decision = Scopes::evaluate(&request("read", target, &["files.project.files.read"]));
        assert!(!decision.is_allow());
    }

    #[test]
    fn first_granting_scope_in_token_order_fires() {
        let decision = Scopes::evaluate(&request(
            "read",
            Entity::new("Project", "alpha"),
            &["contacts.search", "tasks.read", "contacts.attributes.read"],
        ));
        assert!(decision.is_allow());
        assert_eq!(decision.policies_fired, ["tasks.read"]);
    }

    #[test]
    fn spend_cap_comes_from_the_context() {
        let base = request(
            "authorize_payment",
            Entity::new("Wallet", "primary"),
            &["payments.authorize.capped"],
        );
        let cap = |context: Value| {
            let decision = Scopes::evaluate(&base.clone().with_context(context));
            assert!(decision.is_allow());
            decision.obligations[0].params["max_cents"].clone()
        };
        assert_eq!(cap(json!({"spend_cap_cents": 5000})), json!(5000));
        assert_eq!(cap(json!({})), json!(0));
        assert_eq!(cap(json!({"spend_cap_cents": -1})), json!(0));
        assert_eq!(cap(json!({"spend_cap_cents": 12.5})), json!(0));
        assert_eq!(cap(json!({"spend_cap_cents": "5000"})), json!(0));
    }
}
