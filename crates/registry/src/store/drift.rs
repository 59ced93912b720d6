//! Drift references, the windows gateways report, and evaluations.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use sqlx::Row;

use super::write::Change;
use super::{Store, json_col, now_ms, to_json};
use crate::drift::{Evaluation, Merged, Reference, StoredReference};
use crate::error::RegistryError;
use crate::sync::{DriftStatus, DriftWindow};
use crate::types::Status;

impl Store {
    /// Sets a version's drift reference (replacing any). The version must exist and be READY:
    /// gateways start profiling on the reference's features with the next desired state.
    pub async fn put_drift_reference(
        &self,
        model: &str,
        version: i64,
        reference: &Reference,
        source: &str,
    ) -> Result<i64, RegistryError> {
        reference.check()?;
        let mut change = Change::begin(self).await?;
        let status = change.version_status(model, version).await?;
        if status != Status::Ready {
            return Err(RegistryError::Conflict(format!(
                "model '{model}' version {version} is {}: a reference is set on a READY version",
                status.as_str()
            )));
        }
        let rows = i64::try_from(reference.profile.rows()).unwrap_or(i64::MAX);
        change
            .execute(
                sqlx::query(
                    "INSERT INTO drift_references (model, version, reference, rows, source, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (model, version) DO UPDATE SET \
                     reference = $3, rows = $4, source = $5, created_ms = $6",
                )
                .bind(model.to_owned())
                .bind(version)
                .bind(to_json(reference))
                .bind(rows)
                .bind(source.to_owned())
                .bind(now_ms()),
            )
            .await?;
        let payload = json!({ "version": version, "rows": rows, "source": source,
            "features": reference.profile.features.len() });
        change.commit("drift_reference_set", model, payload).await
    }

    /// Removes a version's reference; not found when it has none.
    pub async fn delete_drift_reference(&self, model: &str, version: i64) -> Result<i64, RegistryError> {
        let mut change = Change::begin(self).await?;
        let deleted = change
            .execute(
                sqlx::query("DELETE FROM drift_references WHERE model = $1 AND version = $2")
                    .bind(model.to_owned())
                    .bind(version),
            )
            .await?;
        if deleted == 0 {
            return Err(RegistryError::NotFound(format!("model '{model}' version {version} has no drift reference")));
        }
        change.commit("drift_reference_deleted", model, json!({ "version": version })).await
    }

    /// A version's reference, if it has one.
    pub async fn drift_reference(&self, model: &str, version: i64) -> Result<Option<StoredReference>, RegistryError> {
        let row = sqlx::query(
            "SELECT reference, rows, source, created_ms FROM drift_references WHERE model = $1 AND version = $2",
        )
        .bind(model.to_owned())
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let rows: i64 = row.try_get("rows")?;
        Ok(Some(StoredReference {
            reference: json_col(&row, "reference")?,
            rows: u64::try_from(rows).unwrap_or(0),
            source: row.try_get("source")?,
            created_ms: row.try_get("created_ms")?,
        }))
    }

    /// Every reference's feature specs, by (model, version): what gateways profile on.
    pub(super) async fn drift_feature_specs(
        &self,
    ) -> Result<BTreeMap<(String, i64), BTreeMap<String, modelgate_sketch::FeatureSpec>>, RegistryError> {
        let rows = sqlx::query("SELECT model, version, reference FROM drift_references").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let reference: Reference = json_col(row, "reference")?;
                Ok(((row.try_get("model")?, row.try_get("version")?), reference.profile.specs()))
            })
            .collect()
    }

    /// Stores a gateway's closed windows. Windows for versions the report does not say the
    /// gateway holds are refused (a gateway profiles only what it serves); returns how many
    /// were refused. A window sent twice is stored once.
    pub async fn add_drift_windows(
        &self,
        gateway: &str,
        windows: &[DriftWindow],
        held: &BTreeSet<(String, i64)>,
    ) -> Result<usize, RegistryError> {
        let mut refused = 0;
        let mut tx = self.pool.begin().await?;
        for window in windows {
            if !held.contains(&(window.model.clone(), window.version)) {
                refused += 1;
                continue;
            }
            sqlx::query(
                "INSERT INTO drift_windows (model, version, gateway, arm, start_ms, seconds, rows, profile) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(window.model.clone())
            .bind(window.version)
            .bind(gateway.to_owned())
            .bind(window.arm.clone())
            .bind(window.start_ms)
            .bind(i64::from(window.seconds))
            .bind(i64::try_from(window.rows).unwrap_or(i64::MAX))
            .bind(to_json(&StoredWindow { profile: &window.profile, predictions: &window.predictions }))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(refused)
    }

    /// (model, version) pairs with windows starting at or after `since_ms`.
    pub async fn versions_with_windows(&self, since_ms: i64) -> Result<Vec<(String, i64)>, RegistryError> {
        let rows = sqlx::query("SELECT DISTINCT model, version FROM drift_windows WHERE start_ms >= $1")
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("model")?, row.try_get("version")?))).collect()
    }

    /// A version's windows since `since_ms` (of one arm, or all), merged across gateways; with
    /// `on`, only features profiled on those specs (a reference's) are merged.
    pub async fn merged_windows(
        &self,
        model: &str,
        version: i64,
        since_ms: i64,
        arm: Option<&str>,
        on: Option<&BTreeMap<String, modelgate_sketch::FeatureSpec>>,
    ) -> Result<Merged, RegistryError> {
        let rows = sqlx::query(
            "SELECT gateway, arm, rows, profile FROM drift_windows \
             WHERE model = $1 AND version = $2 AND start_ms >= $3 ORDER BY start_ms",
        )
        .bind(model.to_owned())
        .bind(version)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut merged = Merged::default();
        if let Some(specs) = on {
            // Empty summaries on the reference's specs: windows on other edges are left out.
            merged.profile = modelgate_sketch::Profile::empty(specs)
                .map_err(|e| RegistryError::Internal(format!("a stored reference's specs: {e}")))?;
        }
        for row in &rows {
            let window_arm: String = row.try_get("arm")?;
            if arm.is_some_and(|a| a != window_arm) {
                continue;
            }
            add_window(&mut merged, row, window_arm)?;
        }
        Ok(merged)
    }

    /// A version's earliest windows up to `rows` rows, merged; `None` until that many arrived.
    pub async fn first_rows(&self, model: &str, version: i64, rows: u64) -> Result<Option<Merged>, RegistryError> {
        let found = sqlx::query(
            "SELECT gateway, arm, rows, profile FROM drift_windows \
             WHERE model = $1 AND version = $2 ORDER BY start_ms, gateway, arm",
        )
        .bind(model.to_owned())
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        let mut merged = Merged::default();
        for row in &found {
            add_window(&mut merged, row, row.try_get("arm")?)?;
            if merged.rows >= rows {
                return Ok(Some(merged));
            }
        }
        Ok(None)
    }

    /// The version that served the `stable` arm of `model` since `since_ms` beside `canary`
    /// (the one with the most rows, if several did).
    pub async fn stable_arm_version(
        &self,
        model: &str,
        canary: i64,
        since_ms: i64,
    ) -> Result<Option<i64>, RegistryError> {
        let rows = sqlx::query(
            "SELECT version, SUM(rows) AS total FROM drift_windows \
             WHERE model = $1 AND version <> $2 AND arm = 'stable' AND start_ms >= $3 \
             GROUP BY version ORDER BY total DESC, version DESC",
        )
        .bind(model.to_owned())
        .bind(canary)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.first().map(|row| row.try_get("version")).transpose().map_err(Into::into)
    }

    /// Stores one round of evaluations. This bumps the generation (gateways pull the new
    /// statuses with the desired state) without an event: evaluations are not changes anyone
    /// made, and their history is `GET /cp/v1/models/{m}/drift`.
    pub async fn put_drift_results(&self, results: &[(String, i64, Evaluation)]) -> Result<i64, RegistryError> {
        let mut change = Change::begin(self).await?;
        for (model, version, evaluation) in results {
            change
                .execute(
                    sqlx::query(
                        "INSERT INTO drift_results (model, version, evaluated_ms, result) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(model.clone())
                    .bind(*version)
                    .bind(evaluation.evaluated_ms)
                    .bind(to_json(evaluation)),
                )
                .await?;
        }
        change.commit_quietly().await
    }

    /// Logs that a version's drift status flipped (`drift_detected` / `drift_cleared`): the
    /// alert trail beside the metric and the webhook.
    pub async fn record_drift_flip(
        &self,
        model: &str,
        version: i64,
        status: &DriftStatus,
    ) -> Result<i64, RegistryError> {
        let kind = if status.drifted { "drift_detected" } else { "drift_cleared" };
        let drifted: Vec<&String> = status.features.iter().filter(|(_, f)| f.drifted).map(|(n, _)| n).collect();
        let payload = json!({ "version": version, "share": status.share, "rows": status.rows,
            "drifted_features": drifted });
        Change::begin(self).await?.commit(kind, model, payload).await
    }

    /// A model's evaluations, newest first, at most `limit` per version.
    pub async fn drift_results(
        &self,
        model: &str,
        limit: usize,
    ) -> Result<BTreeMap<i64, Vec<Evaluation>>, RegistryError> {
        let rows = sqlx::query(
            "SELECT version, result FROM drift_results WHERE model = $1 ORDER BY version, evaluated_ms DESC",
        )
        .bind(model.to_owned())
        .fetch_all(&self.pool)
        .await?;
        let mut by_version: BTreeMap<i64, Vec<Evaluation>> = BTreeMap::new();
        for row in &rows {
            let entry = by_version.entry(row.try_get("version")?).or_default();
            if entry.len() < limit {
                entry.push(json_col(row, "result")?);
            }
        }
        Ok(by_version)
    }

    /// Every version's latest evaluation as the gateways get it.
    pub async fn latest_drift_statuses(&self) -> Result<BTreeMap<(String, i64), DriftStatus>, RegistryError> {
        let rows = sqlx::query(
            "SELECT r.model, r.version, r.result FROM drift_results r JOIN \
             (SELECT model, version, MAX(evaluated_ms) AS latest FROM drift_results GROUP BY model, version) l \
             ON r.model = l.model AND r.version = l.version AND r.evaluated_ms = l.latest",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let evaluation: Evaluation = json_col(row, "result")?;
                Ok(((row.try_get("model")?, row.try_get("version")?), evaluation.status()))
            })
            .collect()
    }

    /// Deletes windows that started before `windows_before` and evaluations before
    /// `results_before` (Unix ms).
    pub async fn prune_drift(&self, windows_before: i64, results_before: i64) -> Result<(), RegistryError> {
        sqlx::query("DELETE FROM drift_windows WHERE start_ms < $1").bind(windows_before).execute(&self.pool).await?;
        sqlx::query("DELETE FROM drift_results WHERE evaluated_ms < $1")
            .bind(results_before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A window's profile column: the profile and which of its features are predictions.
#[derive(serde::Serialize)]
struct StoredWindow<'a> {
    profile: &'a modelgate_sketch::Profile,
    predictions: &'a BTreeSet<String>,
}

#[derive(serde::Deserialize)]
struct StoredWindowOwned {
    profile: modelgate_sketch::Profile,
    #[serde(default)]
    predictions: BTreeSet<String>,
}

/// Adds one stored window to `merged`, feature by feature. A feature profiled on other
/// histogram edges than what is merged so far (a window from before the version's reference
/// was set, or from a gateway that has not seen it yet) is left out and counted: windows of one
/// feature compare only on the same edges.
fn add_window(merged: &mut Merged, row: &sqlx::any::AnyRow, arm: String) -> Result<(), RegistryError> {
    let stored: StoredWindowOwned = json_col(row, "profile")?;
    let rows: i64 = row.try_get("rows")?;
    for (name, summary) in stored.profile.features {
        match merged.profile.features.get_mut(&name) {
            Some(mine) => {
                // A refused merge (other edges, other kind) leaves `mine` as it was.
                if mine.merge(&summary).is_err() {
                    merged.skipped_features += 1;
                }
            }
            None => {
                merged.profile.features.insert(name, summary);
            }
        }
    }
    merged.rows += u64::try_from(rows).unwrap_or(0);
    merged.windows += 1;
    merged.gateways.insert(row.try_get("gateway")?);
    merged.predictions.extend(stored.predictions);
    merged.arms.insert(arm);
    Ok(())
}
