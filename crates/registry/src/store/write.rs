//! Changes. Each runs in one transaction that starts by bumping the
//! generation (which serializes writers) and ends by appending its event.

use serde_json::json;
use sqlx::{Any, Transaction};

use super::{Store, now_ms, to_json};
use crate::error::RegistryError;
use crate::manifest::Manifest;
use crate::types::{Alias, Format, Model, NewVersion, Stage, Status, Tags, Version};

/// One writing transaction, holding its generation.
pub(super) struct Change {
    tx: Transaction<'static, Any>,
    generation: i64,
    now: i64,
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl Change {
    pub(super) async fn begin(store: &Store) -> Result<Change, RegistryError> {
        let mut tx = store.pool.begin().await?;
        let generation: i64 =
            sqlx::query_scalar("UPDATE cp_state SET generation = generation + 1 WHERE id = 1 RETURNING generation")
                .fetch_one(&mut *tx)
                .await?;
        if store.notifies() {
            // Sent at commit, not at all on rollback: wakes the other replicas' long polls.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(super::listen::CHANNEL)
                .bind(generation.to_string())
                .execute(&mut *tx)
                .await?;
        }
        Ok(Change { tx, generation, now: now_ms(), changed: store.changed.clone() })
    }

    /// Appends the event and commits; returns the generation.
    pub(super) async fn commit(
        mut self,
        kind: &str,
        model: &str,
        payload: serde_json::Value,
    ) -> Result<i64, RegistryError> {
        sqlx::query("INSERT INTO events (generation, at_ms, kind, model, payload) VALUES ($1, $2, $3, $4, $5)")
            .bind(self.generation)
            .bind(self.now)
            .bind(kind.to_owned())
            .bind(model.to_owned())
            .bind(payload.to_string())
            .execute(&mut *self.tx)
            .await?;
        self.tx.commit().await?;
        // Wakes the gateways' long polls served by this process (others re-read each second).
        self.changed.notify_waiters();
        Ok(self.generation)
    }

    /// Commits without an event (the generation moves so gateways re-read the state).
    pub(super) async fn commit_quietly(self) -> Result<i64, RegistryError> {
        self.tx.commit().await?;
        self.changed.notify_waiters();
        Ok(self.generation)
    }

    /// Runs one statement inside the change; returns the rows it touched.
    pub(super) async fn execute<'q>(
        &mut self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> Result<u64, RegistryError> {
        Ok(query.execute(&mut *self.tx).await?.rows_affected())
    }

    async fn model_exists(&mut self, name: &str) -> Result<bool, RegistryError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT generation FROM registered_models WHERE name = $1")
            .bind(name.to_owned())
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(found.is_some())
    }

    async fn require_model(&mut self, name: &str) -> Result<(), RegistryError> {
        if self.model_exists(name).await? {
            Ok(())
        } else {
            Err(RegistryError::NotFound(format!("registered model '{name}' not found")))
        }
    }

    /// The version's status, or not found.
    pub(super) async fn version_status(&mut self, model: &str, version: i64) -> Result<Status, RegistryError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM model_versions WHERE model = $1 AND version = $2")
                .bind(model.to_owned())
                .bind(version)
                .fetch_optional(&mut *self.tx)
                .await?;
        status.ok_or_else(|| RegistryError::NotFound(format!("model '{model}' has no version {version}")))?.parse()
    }

    pub(super) async fn current_alias(
        &mut self,
        model: &str,
        alias: &str,
    ) -> Result<Option<(i64, i64)>, RegistryError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT version, generation FROM aliases WHERE model = $1 AND alias = $2")
                .bind(model.to_owned())
                .bind(alias.to_owned())
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(row)
    }

    async fn record_alias(
        &mut self,
        model: &str,
        alias: &str,
        from: Option<i64>,
        to: Option<i64>,
        write: &AliasWrite,
    ) -> Result<(), RegistryError> {
        sqlx::query(
            "INSERT INTO alias_history (generation, model, alias, from_version, to_version, actor, reason, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(self.generation)
        .bind(model.to_owned())
        .bind(alias.to_owned())
        .bind(from)
        .bind(to)
        .bind(write.actor.clone())
        .bind(write.reason.clone())
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Points `alias` at `version` (which must be READY), with history.
    pub(super) async fn set_alias(
        &mut self,
        model: &str,
        alias: &str,
        version: i64,
        write: &AliasWrite,
    ) -> Result<Option<i64>, RegistryError> {
        match self.version_status(model, version).await? {
            Status::Ready => {}
            other => {
                return Err(RegistryError::Conflict(format!(
                    "version {version} of '{model}' is {}; only READY versions can carry an alias",
                    other.as_str()
                )));
            }
        }
        let current = self.current_alias(model, alias).await?;
        check_if_match(write.if_match, current)?;
        let from = current.map(|c| c.0);
        if current.is_some() {
            sqlx::query(
                "UPDATE aliases SET version = $1, generation = $2, updated_ms = $3, updated_by = $4 WHERE model = $5 AND alias = $6",
            )
            .bind(version)
            .bind(self.generation)
            .bind(self.now)
            .bind(write.actor.clone())
            .bind(model.to_owned())
            .bind(alias.to_owned())
            .execute(&mut *self.tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO aliases (model, alias, version, generation, updated_ms, updated_by) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(model.to_owned())
            .bind(alias.to_owned())
            .bind(version)
            .bind(self.generation)
            .bind(self.now)
            .bind(write.actor.clone())
            .execute(&mut *self.tx)
            .await?;
        }
        self.record_alias(model, alias, from, Some(version), write).await?;
        Ok(from)
    }

    /// Removes `alias`, with history; `None` when it did not exist.
    pub(super) async fn delete_alias(
        &mut self,
        model: &str,
        alias: &str,
        write: &AliasWrite,
    ) -> Result<Option<i64>, RegistryError> {
        let current = self.current_alias(model, alias).await?;
        check_if_match(write.if_match, current)?;
        let Some((from, _)) = current else { return Ok(None) };
        sqlx::query("DELETE FROM aliases WHERE model = $1 AND alias = $2")
            .bind(model.to_owned())
            .bind(alias.to_owned())
            .execute(&mut *self.tx)
            .await?;
        self.record_alias(model, alias, Some(from), None, write).await?;
        Ok(Some(from))
    }
}

impl Change {
    /// Inserts or replaces a follow rule.
    pub(super) async fn upsert_follow(&mut self, spec: &crate::sync::FollowSpec) -> Result<(), RegistryError> {
        sqlx::query(
            "INSERT INTO follow_rules (model, rule, generation, updated_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model) DO UPDATE SET rule = $2, generation = $3, updated_ms = $4",
        )
        .bind(spec.model.clone())
        .bind(to_json(spec))
        .bind(self.generation)
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Deletes a follow rule; whether there was one.
    pub(super) async fn delete_follow(&mut self, model: &str) -> Result<bool, RegistryError> {
        let done = sqlx::query("DELETE FROM follow_rules WHERE model = $1")
            .bind(model.to_owned())
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Sets (`Some`) or deletes (`None`) one tag of a model, or of one of its versions.
    pub(super) async fn set_tag(
        &mut self,
        model: &str,
        version: Option<i64>,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), RegistryError> {
        let current: Option<String> = match version {
            None => {
                sqlx::query_scalar("SELECT tags FROM registered_models WHERE name = $1")
                    .bind(model.to_owned())
                    .fetch_optional(&mut *self.tx)
                    .await?
            }
            Some(v) => {
                sqlx::query_scalar("SELECT tags FROM model_versions WHERE model = $1 AND version = $2")
                    .bind(model.to_owned())
                    .bind(v)
                    .fetch_optional(&mut *self.tx)
                    .await?
            }
        };
        let current = current.ok_or_else(|| match version {
            None => RegistryError::NotFound(format!("registered model '{model}' not found")),
            Some(v) => RegistryError::NotFound(format!("model '{model}' has no version {v}")),
        })?;
        let mut tags: Tags =
            serde_json::from_str(&current).map_err(|e| RegistryError::Internal(format!("stored tags: {e}")))?;
        match value {
            Some(value) => {
                tags.insert(key.to_owned(), value.to_owned());
            }
            None => {
                tags.remove(key);
            }
        }
        match version {
            None => {
                sqlx::query("UPDATE registered_models SET tags = $1, updated_ms = $2, generation = $3 WHERE name = $4")
                    .bind(to_json(&tags))
                    .bind(self.now)
                    .bind(self.generation)
                    .bind(model.to_owned())
                    .execute(&mut *self.tx)
                    .await?;
            }
            Some(v) => {
                sqlx::query(
                    "UPDATE model_versions SET tags = $1, updated_ms = $2, generation = $3 WHERE model = $4 AND version = $5",
                )
                .bind(to_json(&tags))
                .bind(self.now)
                .bind(self.generation)
                .bind(model.to_owned())
                .bind(v)
                .execute(&mut *self.tx)
                .await?;
            }
        }
        Ok(())
    }
}

/// `If-Match` against the alias's generation (0 = the alias must not exist).
fn check_if_match(given: Option<i64>, current: Option<(i64, i64)>) -> Result<(), RegistryError> {
    let current = current.map_or(0, |c| c.1);
    match given {
        Some(given) if given != current => Err(RegistryError::PreconditionFailed { given, current }),
        _ => Ok(()),
    }
}

/// Who moves an alias, why, and under which precondition.
#[derive(Clone, Debug, Default)]
pub struct AliasWrite {
    /// The alias's generation the client last saw (`If-Match`); `None` = unconditional.
    pub if_match: Option<i64>,
    /// Who (recorded in the history).
    pub actor: String,
    /// Why (recorded in the history).
    pub reason: String,
}

impl Store {
    /// Registers a model.
    pub async fn create_model(&self, name: &str, description: &str, tags: &Tags) -> Result<Model, RegistryError> {
        let mut change = Change::begin(self).await?;
        if change.model_exists(name).await? {
            return Err(RegistryError::AlreadyExists(format!("registered model '{name}' already exists")));
        }
        sqlx::query(
            "INSERT INTO registered_models (name, description, tags, created_ms, updated_ms, generation) VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(name.to_owned())
        .bind(description.to_owned())
        .bind(to_json(tags))
        .bind(change.now)
        .bind(change.generation)
        .execute(&mut *change.tx)
        .await?;
        change.commit("model_created", name, json!({ "description": description, "tags": tags })).await?;
        self.require_model(name).await
    }

    /// Changes a model's description and/or tags (`Some` fields only).
    pub async fn update_model(
        &self,
        name: &str,
        description: Option<&str>,
        tags: Option<&Tags>,
    ) -> Result<Model, RegistryError> {
        let mut change = Change::begin(self).await?;
        let current =
            sqlx::query_as::<_, (String, String)>("SELECT description, tags FROM registered_models WHERE name = $1")
                .bind(name.to_owned())
                .fetch_optional(&mut *change.tx)
                .await?
                .ok_or_else(|| RegistryError::NotFound(format!("registered model '{name}' not found")))?;
        let description = description.map_or(current.0, str::to_owned);
        let tags = tags.map_or(current.1, to_json);
        sqlx::query("UPDATE registered_models SET description = $1, tags = $2, updated_ms = $3, generation = $4 WHERE name = $5")
            .bind(description.clone())
            .bind(tags.clone())
            .bind(change.now)
            .bind(change.generation)
            .bind(name.to_owned())
            .execute(&mut *change.tx)
            .await?;
        change.commit("model_updated", name, json!({ "description": description })).await?;
        self.require_model(name).await
    }

    /// Renames a model (its versions, aliases and history follow).
    pub async fn rename_model(&self, name: &str, new_name: &str) -> Result<Model, RegistryError> {
        let mut change = Change::begin(self).await?;
        change.require_model(name).await?;
        if change.model_exists(new_name).await? {
            return Err(RegistryError::AlreadyExists(format!("registered model '{new_name}' already exists")));
        }
        for sql in [
            "UPDATE registered_models SET name = $1 WHERE name = $2",
            "UPDATE alias_history SET model = $1 WHERE model = $2",
        ] {
            sqlx::query(sql).bind(new_name.to_owned()).bind(name.to_owned()).execute(&mut *change.tx).await?;
        }
        sqlx::query("UPDATE registered_models SET updated_ms = $1, generation = $2 WHERE name = $3")
            .bind(change.now)
            .bind(change.generation)
            .bind(new_name.to_owned())
            .execute(&mut *change.tx)
            .await?;
        change.commit("model_renamed", new_name, json!({ "from": name, "to": new_name })).await?;
        self.require_model(new_name).await
    }

    /// Deletes a model with its versions and aliases (the history and events stay).
    pub async fn delete_model(&self, name: &str) -> Result<(), RegistryError> {
        let mut change = Change::begin(self).await?;
        change.require_model(name).await?;
        sqlx::query("DELETE FROM registered_models WHERE name = $1")
            .bind(name.to_owned())
            .execute(&mut *change.tx)
            .await?;
        change.commit("model_deleted", name, json!({})).await?;
        Ok(())
    }

    /// Sets (`Some`) or deletes (`None`) one tag of a model, or of one of its versions.
    pub async fn set_tag(
        &self,
        model: &str,
        version: Option<i64>,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), RegistryError> {
        let mut change = Change::begin(self).await?;
        change.set_tag(model, version, key, value).await?;
        let kind = if value.is_some() { "tag_set" } else { "tag_deleted" };
        change.commit(kind, model, json!({ "version": version, "key": key, "value": value })).await?;
        Ok(())
    }

    /// Adds a version; READY at once when it comes with a manifest, else PENDING_REGISTRATION.
    pub async fn create_version(&self, model: &str, new: NewVersion) -> Result<Version, RegistryError> {
        self.create_version_numbered(model, None, new).await
    }

    /// Adds a version as [`Store::create_version`] does, numbered `number` when given (the
    /// mirror keeps an upstream registry's numbers). A given number must be above every version
    /// the model has, so numbers still only grow; else [`RegistryError::Conflict`].
    pub async fn create_version_numbered(
        &self,
        model: &str,
        number: Option<i64>,
        new: NewVersion,
    ) -> Result<Version, RegistryError> {
        let mut change = Change::begin(self).await?;
        change.require_model(model).await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM model_versions WHERE model = $1")
            .bind(model.to_owned())
            .fetch_one(&mut *change.tx)
            .await?;
        let last = last.unwrap_or(0);
        let version = match number {
            None => last + 1,
            Some(n) if n > last => n,
            Some(n) => {
                return Err(RegistryError::Conflict(format!(
                    "version {n} of '{model}' cannot be created: the model already has version {last}"
                )));
            }
        };
        let status = if new.manifest.is_some() { Status::Ready } else { Status::PendingRegistration };
        let digest = new.manifest.as_ref().map(|m| m.digest().to_string());
        sqlx::query(
            "INSERT INTO model_versions (model, version, status, status_message, source, format, config_pbtxt, manifest, \
             manifest_digest, lineage, description, tags, creator, archived, created_ms, updated_ms, generation) \
             VALUES ($1, $2, $3, '', $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13, $13, $14)",
        )
        .bind(model.to_owned())
        .bind(version)
        .bind(status.as_str())
        .bind(new.source.clone())
        .bind(new.format.map(Format::as_str))
        .bind(new.config_pbtxt.clone())
        .bind(new.manifest.as_ref().map(|m| to_json(&m.files())))
        .bind(digest.clone())
        .bind(to_json(&new.lineage))
        .bind(new.description.clone())
        .bind(to_json(&new.tags))
        .bind(new.creator.clone())
        .bind(change.now)
        .bind(change.generation)
        .execute(&mut *change.tx)
        .await?;
        sqlx::query("UPDATE registered_models SET updated_ms = $1 WHERE name = $2")
            .bind(change.now)
            .bind(model.to_owned())
            .execute(&mut *change.tx)
            .await?;
        let payload =
            json!({ "version": version, "status": status.as_str(), "manifest_digest": digest, "source": new.source });
        change.commit("version_created", model, payload).await?;
        self.require_version(model, version).await
    }

    /// Ends an import: READY with its manifest, or FAILED_REGISTRATION with the reason.
    pub async fn finish_import(
        &self,
        model: &str,
        version: i64,
        outcome: Result<(Manifest, Option<Format>, Option<String>), String>,
    ) -> Result<(), RegistryError> {
        let mut change = Change::begin(self).await?;
        match change.version_status(model, version).await {
            Ok(Status::PendingRegistration) => {}
            // Deleted or renamed meanwhile: nothing to finish.
            Ok(_) | Err(RegistryError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let (kind, payload) = match &outcome {
            Ok((manifest, format, config)) => {
                let digest = manifest.digest().to_string();
                sqlx::query(
                    "UPDATE model_versions SET status = 'READY', manifest = $1, manifest_digest = $2, format = $3, \
                     config_pbtxt = $4, updated_ms = $5, generation = $6 WHERE model = $7 AND version = $8",
                )
                .bind(to_json(&manifest.files()))
                .bind(digest.clone())
                .bind(format.map(Format::as_str))
                .bind(config.clone())
                .bind(change.now)
                .bind(change.generation)
                .bind(model.to_owned())
                .bind(version)
                .execute(&mut *change.tx)
                .await?;
                ("version_ready", json!({ "version": version, "manifest_digest": digest }))
            }
            Err(reason) => {
                sqlx::query(
                    "UPDATE model_versions SET status = 'FAILED_REGISTRATION', status_message = $1, updated_ms = $2, \
                     generation = $3 WHERE model = $4 AND version = $5",
                )
                .bind(reason.clone())
                .bind(change.now)
                .bind(change.generation)
                .bind(model.to_owned())
                .bind(version)
                .execute(&mut *change.tx)
                .await?;
                ("version_failed", json!({ "version": version, "reason": reason }))
            }
        };
        change.commit(kind, model, payload).await?;
        Ok(())
    }

    /// Changes a version's description and/or tags.
    pub async fn update_version(
        &self,
        model: &str,
        version: i64,
        description: Option<&str>,
        tags: Option<&Tags>,
    ) -> Result<Version, RegistryError> {
        let mut change = Change::begin(self).await?;
        let current = sqlx::query_as::<_, (String, String)>(
            "SELECT description, tags FROM model_versions WHERE model = $1 AND version = $2",
        )
        .bind(model.to_owned())
        .bind(version)
        .fetch_optional(&mut *change.tx)
        .await?
        .ok_or_else(|| RegistryError::NotFound(format!("model '{model}' has no version {version}")))?;
        let description = description.map_or(current.0, str::to_owned);
        let tags = tags.map_or(current.1, to_json);
        sqlx::query(
            "UPDATE model_versions SET description = $1, tags = $2, updated_ms = $3, generation = $4 WHERE model = $5 AND version = $6",
        )
        .bind(description)
        .bind(tags)
        .bind(change.now)
        .bind(change.generation)
        .bind(model.to_owned())
        .bind(version)
        .execute(&mut *change.tx)
        .await?;
        change.commit("version_updated", model, json!({ "version": version })).await?;
        self.require_version(model, version).await
    }

    /// Deletes a version and the aliases on it.
    pub async fn delete_version(&self, model: &str, version: i64) -> Result<(), RegistryError> {
        let mut change = Change::begin(self).await?;
        change.version_status(model, version).await?;
        let aliases: Vec<String> = sqlx::query_scalar("SELECT alias FROM aliases WHERE model = $1 AND version = $2")
            .bind(model.to_owned())
            .bind(version)
            .fetch_all(&mut *change.tx)
            .await?;
        let write =
            AliasWrite { if_match: None, actor: "registry".into(), reason: format!("version {version} deleted") };
        for alias in &aliases {
            change.delete_alias(model, alias, &write).await?;
        }
        sqlx::query("DELETE FROM model_versions WHERE model = $1 AND version = $2")
            .bind(model.to_owned())
            .bind(version)
            .execute(&mut *change.tx)
            .await?;
        change.commit("version_deleted", model, json!({ "version": version, "aliases_removed": aliases })).await?;
        Ok(())
    }

    /// Points `alias` of `model` at `version`; fails with 412 when `If-Match` is stale.
    pub async fn set_alias(
        &self,
        model: &str,
        alias: &str,
        version: i64,
        write: &AliasWrite,
    ) -> Result<Alias, RegistryError> {
        let mut change = Change::begin(self).await?;
        change.require_model(model).await?;
        let from = change.set_alias(model, alias, version, write).await?;
        let payload = json!({ "alias": alias, "from_version": from, "to_version": version, "actor": write.actor, "reason": write.reason });
        change.commit("alias_set", model, payload).await?;
        self.alias(model, alias)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("alias '{alias}' of '{model}' not found")))
    }

    /// Removes `alias` of `model`; fails with 412 when `If-Match` is stale, 404 when absent.
    pub async fn delete_alias(&self, model: &str, alias: &str, write: &AliasWrite) -> Result<(), RegistryError> {
        let mut change = Change::begin(self).await?;
        change.require_model(model).await?;
        let Some(from) = change.delete_alias(model, alias, write).await? else {
            return Err(RegistryError::NotFound(format!("model '{model}' has no alias '{alias}'")));
        };
        let payload = json!({ "alias": alias, "from_version": from, "actor": write.actor, "reason": write.reason });
        change.commit("alias_deleted", model, payload).await?;
        Ok(())
    }

    /// MLflow's stage transition, mapped onto aliases: Production moves `champion` to this
    /// version, Staging `challenger`; a version has one stage, so it also leaves the other of the
    /// two aliases if it held it. None and Archived remove both from it (Archived also flags it).
    /// `archive_existing` flags the version the alias leaves as Archived.
    pub async fn transition_stage(
        &self,
        model: &str,
        version: i64,
        stage: Stage,
        archive_existing: bool,
        actor: &str,
    ) -> Result<Version, RegistryError> {
        let mut change = Change::begin(self).await?;
        change.version_status(model, version).await?;
        let write = AliasWrite { if_match: None, actor: actor.to_owned(), reason: format!("MLflow stage {stage:?}") };
        let mut moved = Vec::new();
        for alias in [crate::types::CHAMPION, crate::types::CHALLENGER] {
            let current = change.current_alias(model, alias).await?;
            let here = current.is_some_and(|c| c.0 == version);
            if stage.alias() == Some(alias) {
                if !here {
                    let from = change.set_alias(model, alias, version, &write).await?;
                    if let (Some(from), true) = (from, archive_existing) {
                        sqlx::query("UPDATE model_versions SET archived = 1 WHERE model = $1 AND version = $2")
                            .bind(model.to_owned())
                            .bind(from)
                            .execute(&mut *change.tx)
                            .await?;
                    }
                    moved.push(alias);
                }
            } else if here {
                change.delete_alias(model, alias, &write).await?;
                moved.push(alias);
            }
        }
        sqlx::query("UPDATE model_versions SET archived = $1, updated_ms = $2, generation = $3 WHERE model = $4 AND version = $5")
            .bind(i64::from(stage == Stage::Archived))
            .bind(change.now)
            .bind(change.generation)
            .bind(model.to_owned())
            .bind(version)
            .execute(&mut *change.tx)
            .await?;
        let payload = json!({ "version": version, "stage": format!("{stage:?}"), "aliases_moved": moved });
        change.commit("stage_transitioned", model, payload).await?;
        self.require_version(model, version).await
    }
}
