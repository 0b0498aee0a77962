"""`python-scopes`: the `scopes` example policy (policies/scopes) in Python, built with
componentize-py against the arp:policy world in wit/.

The scope catalogue (policies/scopes/scope-actions.tsv, embedded at build time as the
generated module `scope_table`) maps each scope id to the Cedar action it grants (`-`: the
action is the scope id itself) and, when its `resource_type` is not `-`, to the only entity
type it may act on. A request is allowed when one of the connection's scopes grants its
action on its target's type; scopes not in the catalogue grant nothing.

An allow names the granting scope (the first, in the token's order) in `policies_fired`
and carries a `spend_cap` obligation `{"max_cents": N}`: N is the context's
`spend_cap_cents` when that is a non-negative integer that fits in 64 bits, otherwise 0.
A deny has the reason `scope_not_granted`.

The table is parsed when this module is imported, which componentize-py does at build
time (its own pre-initialisation), so every decision starts with the dict ready.
"""

import json

import wit_world
from wit_world import exports
from wit_world.exports.decide import Decision, Effect, Obligation, Request

from scope_table import SCOPE_TABLE

_U64_MAX = (1 << 64) - 1


def _parse_catalogue(text: str) -> dict:
    """scope id -> (action, resource type or None), from the TSV text (header skipped)."""
    catalogue = {}
    for line in text.splitlines()[1:]:
        columns = line.split("\t")
        if len(columns) < 3:
            continue
        scope_id, action, resource_type = columns[0], columns[1], columns[2]
        catalogue[scope_id] = (
            scope_id if action == "-" else action,
            None if resource_type == "-" else resource_type,
        )
    return catalogue


CATALOGUE = _parse_catalogue(SCOPE_TABLE)


def spend_cap_cents(context_json: str) -> int:
    """The context's `spend_cap_cents` when it is a JSON integer in 0..=u64::MAX, else 0
    (a malformed cap never grants money). Same rule as serde_json's `Value::as_u64`: a
    number written with a fraction or exponent (`12.0`, `1e3`) is not an integer."""
    try:
        context = json.loads(context_json)
    except ValueError:
        return 0
    if not isinstance(context, dict):
        return 0
    value = context.get("spend_cap_cents")
    # bool is a subclass of int in Python; JSON true is not a number.
    if type(value) is not int or value < 0 or value > _U64_MAX:
        return 0
    return value


def granting_scope(request: Request):
    """The first of the connection's scopes that grants the action on the target's type."""
    for scope_id in request.connection.scopes:
        grant = CATALOGUE.get(scope_id)
        if grant is None:
            continue
        action, resource_type = grant
        if action == request.action and (
            resource_type is None or resource_type == request.target.kind
        ):
            return scope_id
    return None


class Decide(exports.Decide):
    def evaluate(self, request: Request) -> Decision:
        scope_id = granting_scope(request)
        if scope_id is None:
            return Decision(
                effect=Effect.DENY,
                policies_fired=[],
                obligations=[],
                reasons=["scope_not_granted"],
            )
        params = json.dumps({"max_cents": spend_cap_cents(request.context)})
        return Decision(
            effect=Effect.ALLOW,
            policies_fired=[scope_id],
            obligations=[Obligation(kind="spend_cap", params=params)],
            reasons=[],
        )


class WitWorld(wit_world.WitWorld):
    def init(self) -> None:
        # Everything is prepared at import time (componentize-py's build-time snapshot).
        pass
