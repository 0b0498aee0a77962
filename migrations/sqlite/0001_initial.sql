-- The host's store, SQLite form (the embedded default). Every tenant-owned table has
-- tenant_id in its primary key and unique constraints; no foreign key crosses tenants.
-- Times are epoch milliseconds (UTC); JSON columns hold JSON text.

CREATE TABLE tenants (
    id         TEXT    NOT NULL PRIMARY KEY,
    plan       TEXT    NOT NULL CHECK (plan IN ('free', 'pro', 'team', 'internal')),
    created_at INTEGER NOT NULL
);

-- Routing is by DID, so a DID names one agent across the whole host.
CREATE TABLE agents (
    tenant_id            TEXT NOT NULL,
    did                  TEXT NOT NULL,
    public_key_multibase TEXT NOT NULL,
    did_document         TEXT NOT NULL,
    agent_card           TEXT NOT NULL,
    arp_json             TEXT NOT NULL,
    created_at           INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, did),
    UNIQUE (did)
);

CREATE TABLE connections (
    tenant_id      TEXT NOT NULL,
    connection_id  TEXT NOT NULL,
    agent_did      TEXT NOT NULL,
    peer_did       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked', 'expired')),
    token_json     TEXT NOT NULL,
    cedar_policies TEXT NOT NULL,
    obligations    TEXT NOT NULL,
    expires_at     INTEGER,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, connection_id)
);
CREATE INDEX connections_pair ON connections (tenant_id, agent_did, peer_did, status);

CREATE TABLE revocations (
    tenant_id  TEXT NOT NULL,
    agent_did  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, agent_did, kind, id)
);

-- Host-wide: a (signer, message id) is accepted once, whichever tenant it was sent to.
CREATE TABLE replay_guard (
    signer_did TEXT    NOT NULL,
    msg_id     TEXT    NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (signer_did, msg_id)
);

CREATE TABLE messages (
    tenant_id      TEXT    NOT NULL,
    id             TEXT    NOT NULL,
    agent_did      TEXT    NOT NULL,
    connection_id  TEXT    NOT NULL,
    msg_id         TEXT    NOT NULL,
    msg_type       TEXT    NOT NULL,
    envelope       TEXT    NOT NULL,
    peer_did       TEXT    NOT NULL,
    obligations    TEXT    NOT NULL,
    policies_fired TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('queued', 'delivered', 'expired')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX messages_queue ON messages (tenant_id, agent_did, status, created_at);

CREATE TABLE audit_entries (
    tenant_id         TEXT    NOT NULL,
    agent_did         TEXT    NOT NULL,
    connection_id     TEXT    NOT NULL,
    seq               INTEGER NOT NULL,
    timestamp         TEXT    NOT NULL,
    msg_id            TEXT    NOT NULL,
    decision          TEXT    NOT NULL,
    policies_fired    TEXT    NOT NULL,
    obligations       TEXT    NOT NULL,
    spend_delta_cents INTEGER NOT NULL,
    reason            TEXT,
    prev_hash         TEXT    NOT NULL,
    self_hash         TEXT    NOT NULL,
    policy_digest     TEXT,
    fuel_used         INTEGER,
    envelope_sha256   TEXT,
    PRIMARY KEY (tenant_id, agent_did, connection_id, seq)
);

CREATE TABLE usage (
    tenant_id TEXT    NOT NULL,
    period    TEXT    NOT NULL,
    inbound   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, period)
);

CREATE TABLE policy_versions (
    tenant_id  TEXT    NOT NULL,
    digest     TEXT    NOT NULL,
    bytes      BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, digest)
);

CREATE TABLE active_policy (
    tenant_id TEXT NOT NULL PRIMARY KEY,
    digest    TEXT NOT NULL
);
