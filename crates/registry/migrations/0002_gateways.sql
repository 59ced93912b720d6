-- The gateways that follow this control plane, as their last report left them.
-- Reports are not changes of the desired state: they bump no generation.
CREATE TABLE gateways (
    id TEXT PRIMARY KEY,
    applied_generation BIGINT NOT NULL,
    report TEXT NOT NULL,
    seen_ms BIGINT NOT NULL
);
