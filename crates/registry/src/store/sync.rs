//! What the gateways read and write: the desired state, their reports, and
//! the alias moves a finished rollout asks for.

use serde_json::json;
use sqlx::Row;

use super::write::{AliasWrite, Change};
use super::{Store, json_col, now_ms, to_json};
use crate::error::RegistryError;
use crate::sync::{
    DesiredModel, DesiredState, DesiredVersion, FollowSpec, GatewayStatus, OnRollback, Outcome, ROLLED_BACK_TAG,
    Report, RolloutOutcome,
};
use crate::types::{Status, Tags};

/// The actor of alias moves a rollout asks for.
const ROLLOUT_ACTOR: &str = "rollout";

/// A desired state encoded once for every long poll that wants it.
#[derive(Clone, Debug)]
pub struct EncodedState {
    /// Its generation.
    pub generation: i64,
    /// `DesiredState` as JSON.
    pub json: bytes::Bytes,
}

impl Store {
    /// The desired state as JSON, at `generation` or later. One change wakes every waiting
    /// long poll at once (a hundred gateways on a replica): the first one reads and encodes the
    /// state, the others wait for it on the lock and take the same bytes, instead of each running
    /// the same queries against the pool.
    pub async fn desired_state_json(&self, generation: i64) -> Result<EncodedState, RegistryError> {
        let mut cached = self.desired.lock().await;
        if let Some(state) = cached.as_ref().filter(|s| s.generation >= generation) {
            return Ok(state.clone());
        }
        let state = self.desired_state().await?;
        let json = serde_json::to_vec(&state)
            .map_err(|e| RegistryError::Internal(format!("encoding the desired state: {e}")))?;
        let encoded = EncodedState { generation: state.generation, json: json.into() };
        *cached = Some(encoded.clone());
        Ok(encoded)
    }

    /// The whole desired state: every model, its aliases, the READY versions they point
    /// at (with manifests) and the versions tagged rolled back. The generation is read
    /// first: a change that commits meanwhile may already show, and the next poll (from
    /// this older generation) returns at once with it, so nothing is missed.
    pub async fn desired_state(&self) -> Result<DesiredState, RegistryError> {
        let generation = self.generation().await?;
        let mut state = DesiredState { generation, ..DesiredState::default() };
        for row in sqlx::query("SELECT name, tags FROM registered_models").fetch_all(&self.pool).await? {
            let tags: Tags = json_col(&row, "tags")?;
            state.models.insert(row.try_get("name")?, DesiredModel { tags, ..DesiredModel::default() });
        }
        let ready = sqlx::query("SELECT model, version FROM model_versions WHERE status = $1")
            .bind(Status::Ready.as_str())
            .fetch_all(&self.pool)
            .await?;
        for row in &ready {
            let model: String = row.try_get("model")?;
            if let Some(entry) = state.models.get_mut(&model) {
                entry.ready.insert(row.try_get("version")?);
            }
        }
        let aliases = sqlx::query("SELECT model, alias, version FROM aliases").fetch_all(&self.pool).await?;
        for row in &aliases {
            let model: String = row.try_get("model")?;
            let alias: String = row.try_get("alias")?;
            let version: i64 = row.try_get("version")?;
            let Some(entry) = state.models.get_mut(&model) else { continue };
            entry.aliases.insert(alias, version);
            if entry.versions.contains_key(&version) {
                continue;
            }
            let Some(found) = self.version(&model, version).await? else { continue };
            if let (Status::Ready, Some(files), Some(digest)) = (found.status, found.manifest, found.manifest_digest) {
                let desired = DesiredVersion {
                    manifest_digest: digest,
                    format: found.format,
                    config_pbtxt: found.config_pbtxt,
                    files,
                    drift_features: None,
                };
                entry.versions.insert(version, desired);
            }
        }
        for ((model, version), specs) in self.drift_feature_specs().await? {
            if let Some(desired) = state.models.get_mut(&model).and_then(|m| m.versions.get_mut(&version)) {
                desired.drift_features = Some(specs);
            }
        }
        for ((model, version), status) in self.latest_drift_statuses().await? {
            if let Some(entry) = state.models.get_mut(&model) {
                entry.drift.insert(version, status);
            }
        }
        // The tag is a key of a JSON text column: LIKE narrows, the parse decides.
        let tagged = sqlx::query("SELECT model, version, tags FROM model_versions WHERE tags LIKE $1")
            .bind(format!("%{ROLLED_BACK_TAG}%"))
            .fetch_all(&self.pool)
            .await?;
        for row in &tagged {
            let tags: Tags = json_col(row, "tags")?;
            let model: String = row.try_get("model")?;
            if tags.contains_key(ROLLED_BACK_TAG)
                && let Some(entry) = state.models.get_mut(&model)
            {
                entry.rolled_back.insert(row.try_get("version")?);
            }
        }
        state.follow = self.follow_rules().await?;
        Ok(state)
    }

    /// The follow rules set through the API, by served name.
    pub async fn follow_rules(&self) -> Result<Vec<FollowSpec>, RegistryError> {
        let rows = sqlx::query("SELECT rule FROM follow_rules ORDER BY model").fetch_all(&self.pool).await?;
        rows.iter().map(|row| json_col(row, "rule")).collect()
    }

    /// Sets the follow rule of `spec.model` (checked); returns the generation.
    pub async fn put_follow(&self, spec: &FollowSpec) -> Result<i64, RegistryError> {
        spec.check()?;
        let mut change = Change::begin(self).await?;
        change.upsert_follow(spec).await?;
        change.commit("follow_set", &spec.model, serde_json::to_value(spec).unwrap_or_default()).await
    }

    /// Removes the follow rule of `model`; 404 when there is none.
    pub async fn delete_follow(&self, model: &str) -> Result<(), RegistryError> {
        let mut change = Change::begin(self).await?;
        if !change.delete_follow(model).await? {
            return Err(RegistryError::NotFound(format!("no follow rule for '{model}'")));
        }
        change.commit("follow_deleted", model, json!({})).await?;
        Ok(())
    }

    /// Records a gateway's report and carries out the alias moves its finished
    /// rollouts ask for. Each move happens only while the aliases still say what the
    /// rollout started from, so a report sent twice (or late) moves nothing twice.
    /// Drift windows for versions the report does not list as loaded are refused; returns
    /// how many were.
    pub async fn apply_report(&self, gateway: &str, report: &Report) -> Result<usize, RegistryError> {
        let held = report.loaded.iter().map(|l| (l.model.clone(), l.version)).collect();
        let refused = self.add_drift_windows(gateway, &report.drift_windows, &held).await?;
        // The gateway's row keeps the report without its windows (they are stored above).
        let summary = Report { drift_windows: Vec::new(), ..report.clone() };
        sqlx::query(
            "INSERT INTO gateways (id, applied_generation, report, seen_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET applied_generation = $2, report = $3, seen_ms = $4",
        )
        .bind(gateway.to_owned())
        .bind(report.applied_generation)
        .bind(to_json(&summary))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        for rollout in &report.rollouts {
            self.finish_rollout(gateway, rollout).await?;
        }
        Ok(refused)
    }

    async fn finish_rollout(&self, gateway: &str, rollout: &RolloutOutcome) -> Result<(), RegistryError> {
        let RolloutOutcome { model, stable, canary, .. } = rollout;
        let mut change = Change::begin(self).await?;
        // A model or version deleted meanwhile: nothing left to move.
        if change.version_status(model, *canary).await.is_err() {
            return Ok(());
        }
        let stable_alias = change.current_alias(model, &rollout.stable_alias).await?.map(|a| a.0);
        let canary_alias = match &rollout.canary_alias {
            Some(alias) => change.current_alias(model, alias).await?.map(|a| a.0),
            None => None,
        };
        let write = |reason: String| AliasWrite { if_match: None, actor: ROLLOUT_ACTOR.into(), reason };
        let mut moved = Vec::new();
        match rollout.outcome {
            Outcome::Promoted => {
                let why = format!("gateway {gateway} promoted version {canary}: {}", rollout.reason);
                if stable_alias != Some(*canary) {
                    change.set_alias(model, &rollout.stable_alias, *canary, &write(why.clone())).await?;
                    moved.push(rollout.stable_alias.clone());
                }
                if let Some(alias) = &rollout.canary_alias
                    && canary_alias == Some(*canary)
                {
                    change.delete_alias(model, alias, &write(why)).await?;
                    moved.push(alias.clone());
                }
            }
            Outcome::RolledBack => {
                let why = format!("gateway {gateway} rolled version {canary} back: {}", rollout.reason);
                change.set_tag(model, Some(*canary), ROLLED_BACK_TAG, Some(&why)).await?;
                if rollout.on_rollback == OnRollback::RevertAlias {
                    if stable_alias == Some(*canary) && change.version_status(model, *stable).await.is_ok() {
                        change.set_alias(model, &rollout.stable_alias, *stable, &write(why.clone())).await?;
                        moved.push(rollout.stable_alias.clone());
                    }
                    if let Some(alias) = &rollout.canary_alias
                        && canary_alias == Some(*canary)
                    {
                        change.delete_alias(model, alias, &write(why)).await?;
                        moved.push(alias.clone());
                    }
                }
            }
        }
        let kind = match rollout.outcome {
            Outcome::Promoted => "rollout_promoted",
            Outcome::RolledBack => "rollout_rolled_back",
        };
        let payload = json!({
            "gateway": gateway, "stable": stable, "canary": canary, "reason": rollout.reason, "aliases_moved": moved,
        });
        change.commit(kind, model, payload).await?;
        Ok(())
    }

    /// Every gateway that has reported, by id.
    pub async fn gateways(&self) -> Result<Vec<GatewayStatus>, RegistryError> {
        let rows = sqlx::query("SELECT id, applied_generation, report, seen_ms FROM gateways ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(GatewayStatus {
                    id: row.try_get("id")?,
                    applied_generation: row.try_get("applied_generation")?,
                    seen_ms: row.try_get("seen_ms")?,
                    report: json_col(row, "report")?,
                })
            })
            .collect()
    }
}
