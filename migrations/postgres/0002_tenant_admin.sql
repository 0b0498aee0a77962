-- Tenant administration (issue #5): per-tenant policy limits set by the operator (NULL:
-- the host default) and tenant API keys (only their SHA-256 is stored).

ALTER TABLE tenants ADD COLUMN limit_fuel BIGINT;
ALTER TABLE tenants ADD COLUMN limit_deadline_ms BIGINT;
ALTER TABLE tenants ADD COLUMN limit_memory_bytes BIGINT;
ALTER TABLE tenants ADD COLUMN limit_concurrency BIGINT;

-- A key is found by its hash at authentication, before its tenant is known: hence the
-- index on key_sha256 alone (keys are 256 random bits, so hashes do not collide).
CREATE TABLE api_keys (
    tenant_id  TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    key_sha256 TEXT    NOT NULL,
    label      TEXT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX api_keys_hash ON api_keys (key_sha256);
