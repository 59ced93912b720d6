-- Drift: each version's reference profile, the windows gateways profile from its traffic,
-- and the control plane's evaluations of those windows against the reference.

-- One reference per version: a modelgate-sketch Profile (JSON), with what made it.
CREATE TABLE drift_references (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    reference TEXT NOT NULL,
    rows BIGINT NOT NULL,
    source TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (model, version),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version) ON UPDATE CASCADE ON DELETE CASCADE
);

-- Closed windows as gateways report them: a resent report overwrites nothing (the key is
-- the gateway, arm and window start). Kept for twice the evaluation span, then deleted.
CREATE TABLE drift_windows (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    gateway TEXT NOT NULL,
    arm TEXT NOT NULL,
    start_ms BIGINT NOT NULL,
    seconds BIGINT NOT NULL,
    rows BIGINT NOT NULL,
    profile TEXT NOT NULL,
    PRIMARY KEY (model, version, gateway, arm, start_ms)
);
CREATE INDEX drift_windows_by_start ON drift_windows (start_ms);

-- Evaluations, newest last: the drift status JSON of one version at one time.
CREATE TABLE drift_results (
    model TEXT NOT NULL,
    version BIGINT NOT NULL,
    evaluated_ms BIGINT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (model, version, evaluated_ms)
);
