-- Predictions gateways share for ground truth (routes with `feedback.shared`): feedback at
-- any gateway joins a prediction another one made. `judged_by` is the gateway that accepted
-- its truth (NULL while open), so a second truth is refused fleet-wide. Rows expire at
-- `expires_ms` and the oldest (`at_ms`) go past the control plane's row bound.
CREATE TABLE feedback_entries (
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    prediction TEXT NOT NULL,
    judged_by TEXT,
    PRIMARY KEY (model, request_id)
);
CREATE INDEX feedback_entries_by_expiry ON feedback_entries (expires_ms);
CREATE INDEX feedback_entries_by_age ON feedback_entries (at_ms);
