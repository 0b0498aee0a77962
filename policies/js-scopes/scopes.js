// `js-scopes`: the `scopes` example policy (policies/scopes) in JavaScript, built with
// `jco componentize` (ComponentizeJS) against the arp:policy world in wit/.
//
// The scope catalogue (policies/scopes/scope-actions.tsv; build.sh puts its text in place
// of the import below) maps each scope id to the Cedar action it grants (`-`: the action is
// the scope id itself) and, when its `resource_type` is not `-`, to the only entity type it
// may act on. A request is allowed when one of the connection's scopes grants its action on
// its target's type; scopes not in the catalogue grant nothing.
//
// An allow names the granting scope (the first, in the token's order) in `policiesFired`
// and carries a `spend_cap` obligation `{"max_cents": N}`: N is the context's
// `spend_cap_cents` when that is a non-negative integer that fits in 64 bits, otherwise 0.
// A deny has the reason `scope_not_granted`.
//
// The table is parsed at module evaluation, which ComponentizeJS runs at build time (its
// own Wizer snapshot), so every decision starts with the Map ready.

import { SCOPE_TABLE } from "./scope-table.js";

/** scope id -> { action, resourceType (null: any) }, from the TSV text (header skipped). */
function parseCatalogue(text) {
  const catalogue = new Map();
  const lines = text.split("\n").slice(1);
  for (const line of lines) {
    const columns = line.replace(/\r$/, "").split("\t");
    if (columns.length < 3) continue;
    const [scopeId, action, resourceType] = columns;
    catalogue.set(scopeId, {
      action: action === "-" ? scopeId : action,
      resourceType: resourceType === "-" ? null : resourceType,
    });
  }
  return catalogue;
}

const CATALOGUE = parseCatalogue(SCOPE_TABLE);

const U64_MAX = 18446744073709551615n;

/**
 * The raw JSON text of the top-level member `key` of the object in `text`, or null when
 * `text` is not an object or has no such member (the last one wins, as in serde_json).
 * A small scanner rather than JSON.parse, because JSON.parse turns `12.0` and `1e3` into
 * the integers 12 and 1000 and rounds integers above 2^53, while the Rust policy (serde_json
 * `Value::as_u64`) accepts only integer literals up to u64::MAX.
 */
function topLevelMember(text, key) {
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const fail = () => {
    throw new SyntaxError("bad JSON");
  };
  const string = () => {
    if (text[i] !== '"') fail();
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    if (i >= text.length) fail();
    i++;
    return JSON.parse(text.slice(start, i));
  };
  // Skips one value and returns its raw text.
  const value = () => {
    ws();
    const start = i;
    const c = text[i];
    if (c === '"') {
      string();
    } else if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      i++;
      ws();
      if (text[i] === close) {
        i++;
      } else {
        for (;;) {
          if (c === "{") {
            ws();
            string();
            ws();
            if (text[i++] !== ":") fail();
          }
          value();
          ws();
          const sep = text[i++];
          if (sep === close) break;
          if (sep !== ",") fail();
        }
      }
    } else {
      while (i < text.length && !",]} \t\n\r".includes(text[i])) i++;
      if (i === start) fail();
    }
    return text.slice(start, i);
  };

  try {
    ws();
    if (text[i] !== "{") return null;
    i++;
    ws();
    let found = null;
    if (text[i] === "}") return null;
    for (;;) {
      ws();
      const name = string();
      ws();
      if (text[i++] !== ":") fail();
      const raw = value();
      if (name === key) found = raw;
      ws();
      const sep = text[i++];
      if (sep === "}") break;
      if (sep !== ",") fail();
    }
    return found;
  } catch {
    return null;
  }
}

/**
 * The spending cap in cents from the context's `spend_cap_cents`, as JSON number text:
 * "0" (no spending) unless it is an integer literal in 0..=u64::MAX, so a malformed cap
 * never grants money.
 */
export function spendCapCents(contextJson) {
  const raw = topLevelMember(contextJson, "spend_cap_cents");
  if (raw === null || !/^(0|[1-9][0-9]*)$/.test(raw)) return "0";
  return BigInt(raw) <= U64_MAX ? raw : "0";
}

/** The first of the connection's scopes that grants the action on the target's type. */
function grantingScope(request) {
  for (const scopeId of request.connection.scopes) {
    const grant = CATALOGUE.get(scopeId);
    if (
      grant !== undefined &&
      grant.action === request.action &&
      (grant.resourceType === null || grant.resourceType === request.target.kind)
    ) {
      return scopeId;
    }
  }
  return null;
}

export const decide = {
  evaluate(request) {
    const scopeId = grantingScope(request);
    if (scopeId === null) {
      return {
        effect: "deny",
        policiesFired: [],
        obligations: [],
        reasons: ["scope_not_granted"],
      };
    }
    return {
      effect: "allow",
      policiesFired: [scopeId],
      obligations: [
        { kind: "spend_cap", params: `{"max_cents":${spendCapCents(request.context)}}` },
      ],
      reasons: [],
    };
  },
};

/** Everything is prepared at module evaluation (ComponentizeJS's build-time snapshot). */
export function init() {}
