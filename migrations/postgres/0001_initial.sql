-- The host's store, Postgres form (production; several hosts may share one database).
-- Every tenant-owned table has tenant_id in its primary key and unique constraints; no
-- foreign key crosses tenants.
-- Times are epoch milliseconds (UTC); JSON columns are JSONB.

CREATE TABLE tenants (
    id         TEXT    NOT NULL PRIMARY KEY,
    plan       TEXT    NOT NULL CHECK (plan IN ('free', 'pro', 'team', 'internal')),
    created_at BIGINT NOT NULL
);

-- Routing is by DID, so a DID names one agent across the whole host.
CREATE TABLE agents (
    tenant_id            TEXT NOT NULL,
    did                  TEXT NOT NULL,
    public_key_multibase TEXT NOT NULL,
    did_document         JSONB NOT NULL,
    agent_card           JSONB NOT NULL,
    arp_json             JSONB NOT NULL,
    created_at           BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, did),
    UNIQUE (did)
);

CREATE TABLE connections (
    tenant_id      TEXT NOT NULL,
    connection_id  TEXT NOT NULL,
    agent_did      TEXT NOT NULL,
    peer_did       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked', 'expired')),
    token_json     JSONB NOT NULL,
    cedar_policies JSONB NOT NULL,
    obligations    JSONB NOT NULL,
    expires_at     BIGINT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, connection_id)
);
CREATE INDEX connections_pair ON connections (tenant_id, agent_did, peer_did, status);

CREATE TABLE revocations (
    tenant_id  TEXT NOT NULL,
    agent_did  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, agent_did, kind, id)
);

-- Host-wide: a (signer, message id) is accepted once, whichever tenant it was sent to.
CREATE TABLE replay_guard (
    signer_did TEXT    NOT NULL,
    msg_id     TEXT    NOT NULL,
    seen_at    BIGINT NOT NULL,
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
    obligations    JSONB   NOT NULL,
    policies_fired JSONB   NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('queued', 'delivered', 'expired')),
    attempts       BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX messages_queue ON messages (tenant_id, agent_did, status, created_at);

CREATE TABLE audit_entries (
    tenant_id         TEXT    NOT NULL,
    agent_did         TEXT    NOT NULL,
    connection_id     TEXT    NOT NULL,
    seq               BIGINT NOT NULL,
    timestamp         TEXT    NOT NULL,
    msg_id            TEXT    NOT NULL,
    decision          TEXT    NOT NULL,
    policies_fired    JSONB   NOT NULL,
    obligations       JSONB   NOT NULL,
    spend_delta_cents BIGINT NOT NULL,
    reason            TEXT,
    prev_hash         TEXT    NOT NULL,
    self_hash         TEXT    NOT NULL,
    policy_digest     TEXT,
    fuel_used         BIGINT,
    envelope_sha256   TEXT,
    PRIMARY KEY (tenant_id, agent_did, connection_id, seq)
);

CREATE TABLE usage (
    tenant_id TEXT    NOT NULL,
    period    TEXT    NOT NULL,
    inbound   BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, period)
);

CREATE TABLE policy_versions (
    tenant_id  TEXT    NOT NULL,
    digest     TEXT    NOT NULL,
    bytes      BYTEA    NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, digest)
);

CREATE TABLE active_policy (
    tenant_id TEXT NOT NULL PRIMARY KEY,
    digest    TEXT NOT NULL
);
