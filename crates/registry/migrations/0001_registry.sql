-- The registry's schema. One text for SQLite and PostgreSQL: only types both
-- know (TEXT, BIGINT), JSON kept as TEXT, times as Unix milliseconds.

-- One row: the generation, bumped first in every writing transaction (which
-- also serializes writers, so generations commit in order).
CREATE TABLE cp_state (
    id BIGINT PRIMARY KEY,
    generation BIGINT NOT NULL
);
INSERT INTO cp_state (id, generation) VALUES (1, 0);

CREATE TABLE registered_models (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    generation BIGINT NOT NULL
);

CREATE TABLE model_versions (
    model TEXT NOT NULL REFERENCES registered_models (name) ON UPDATE CASCADE ON DELETE CASCADE,
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT NOT NULL,
    source TEXT NOT NULL,
    format TEXT,
    config_pbtxt TEXT,
    manifest TEXT,
    manifest_digest TEXT,
    lineage TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    creator TEXT NOT NULL,
    archived BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);

CREATE TABLE aliases (
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    version BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (model, alias),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version) ON UPDATE CASCADE ON DELETE CASCADE
);

CREATE TABLE alias_history (
    generation BIGINT NOT NULL,
    model TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version BIGINT,
    to_version BIGINT,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (generation, model, alias)
);
CREATE INDEX alias_history_model ON alias_history (model, alias);

CREATE TABLE events (
    generation BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    payload TEXT NOT NULL
);
