-- Follow rules set through the API (`PUT /cp/v1/follow/{model}`): which registered model a
-- gateway serves under which name and aliases. Part of the desired state: changes bump the
-- generation like any other.
CREATE TABLE follow_rules (
    model TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    generation BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
