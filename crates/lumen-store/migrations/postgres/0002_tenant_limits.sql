-- Limits shared by every key of a tenant (NULL: unlimited), checked with the key's own.
ALTER TABLE tenants ADD COLUMN rpm BIGINT;
ALTER TABLE tenants ADD COLUMN tpm BIGINT;
ALTER TABLE tenants ADD COLUMN max_parallel BIGINT;
ALTER TABLE tenants ADD COLUMN budget_tokens BIGINT;
ALTER TABLE tenants ADD COLUMN budget_period TEXT CHECK (budget_period IN ('day', 'month'));
CREATE INDEX usage_rollups_tenant ON usage_rollups(tenant_id, width, bucket_start);
