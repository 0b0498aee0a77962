-- Row-level security: the second wall behind the tenant scope in code (issue #5).
--
-- The server's connections run as the role arp_app (`SET ROLE arp_app` when a pooled
-- connection opens; migrations run before that, as the connecting user, who owns the
-- tables). arp_app owns nothing, so these policies apply to it: a tenant-owned row is
-- visible and writable only inside a transaction that set `arp.tenant_id` to the row's
-- tenant (`set_config('arp.tenant_id', <tenant>, true)`, done by the store for every
-- tenant-scoped operation). A query that forgets the tenant scope sees nothing. The few
-- host-wide reads (routing by DID, finding an API key by its hash, the queue gauge) set
-- `arp.scope = 'host'`, which may read but never write; expiring queued messages sets
-- `arp.scope = 'maintenance'`, which may read and update messages only.
--
-- Roles are per cluster: several databases (and concurrent migrations) share arp_app.
-- The migrating user needs CREATEROLE (or a DBA creates arp_app NOLOGIN and grants it to
-- that user beforehand); otherwise the GRANT below fails and names the missing role.

DO $$
BEGIN
    CREATE ROLE arp_app NOLOGIN;
EXCEPTION WHEN others THEN NULL;
END
$$;

DO $$
BEGIN
    EXECUTE format('GRANT arp_app TO %I', current_user);
EXCEPTION WHEN others THEN NULL;
END
$$;

GRANT USAGE ON SCHEMA public TO arp_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, agents, connections, revocations,
    replay_guard, messages, audit_entries, usage, policy_versions, active_policy, api_keys
    TO arp_app;

ALTER TABLE agents ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON agents USING (tenant_id = current_setting('arp.tenant_id', true));
CREATE POLICY host_reads ON agents FOR SELECT USING (current_setting('arp.scope', true) = 'host');

ALTER TABLE connections ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON connections USING (tenant_id = current_setting('arp.tenant_id', true));

ALTER TABLE revocations ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON revocations USING (tenant_id = current_setting('arp.tenant_id', true));

ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON messages USING (tenant_id = current_setting('arp.tenant_id', true));
CREATE POLICY host_reads ON messages FOR SELECT USING (current_setting('arp.scope', true) = 'host');
-- Queue upkeep (marking expired messages) spans tenants: read and update, nothing else.
CREATE POLICY maintenance_reads ON messages FOR SELECT USING (current_setting('arp.scope', true) = 'maintenance');
CREATE POLICY maintenance_updates ON messages FOR UPDATE USING (current_setting('arp.scope', true) = 'maintenance');

ALTER TABLE audit_entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON audit_entries USING (tenant_id = current_setting('arp.tenant_id', true));

ALTER TABLE usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON usage USING (tenant_id = current_setting('arp.tenant_id', true));

ALTER TABLE policy_versions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON policy_versions USING (tenant_id = current_setting('arp.tenant_id', true));

ALTER TABLE active_policy ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON active_policy USING (tenant_id = current_setting('arp.tenant_id', true));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON api_keys USING (tenant_id = current_setting('arp.tenant_id', true));
CREATE POLICY host_reads ON api_keys FOR SELECT USING (current_setting('arp.scope', true) = 'host');
