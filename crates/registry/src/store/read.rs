//! Queries that change nothing.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, json_col};
use crate::error::RegistryError;
use crate::types::{Alias, AliasChange, CHALLENGER, CHAMPION, Event, Model, Status, Version};

const VERSION_COLUMNS: &str = "SELECT model, version, status, status_message, source, format, config_pbtxt, manifest, \
     manifest_digest, lineage, description, tags, creator, archived, created_ms, updated_ms, generation \
     FROM model_versions";

impl Store {
    /// A model, or `None`.
    pub async fn model(&self, name: &str) -> Result<Option<Model>, RegistryError> {
        let row = sqlx::query(
            "SELECT name, description, tags, created_ms, updated_ms, generation FROM registered_models WHERE name = $1",
        )
        .bind(name.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let aliases = self.aliases(name).await?.into_iter().map(|a| (a.alias, a.version)).collect();
        Ok(Some(model_from_row(&row, aliases)?))
    }

    /// A model, or a not-found error naming it.
    pub async fn require_model(&self, name: &str) -> Result<Model, RegistryError> {
        self.model(name).await?.ok_or_else(|| RegistryError::NotFound(format!("registered model '{name}' not found")))
    }

    /// Every model, by name.
    pub async fn models(&self) -> Result<Vec<Model>, RegistryError> {
        let rows = sqlx::query(
            "SELECT name, description, tags, created_ms, updated_ms, generation FROM registered_models ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut all_aliases: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
        for row in sqlx::query("SELECT model, alias, version FROM aliases").fetch_all(&self.pool).await? {
            all_aliases
                .entry(row.try_get("model")?)
                .or_default()
                .insert(row.try_get("alias")?, row.try_get("version")?);
        }
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                model_from_row(row, all_aliases.remove(&name).unwrap_or_default())
            })
            .collect()
    }

    /// One version, or `None`.
    pub async fn version(&self, model: &str, version: i64) -> Result<Option<Version>, RegistryError> {
        let sql = with_tail(VERSION_COLUMNS, " WHERE model = $1 AND version = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model.to_owned())
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let aliases = self.aliases(model).await?;
        Ok(Some(version_from_row(&row, &aliases)?))
    }

    /// One version, or a not-found error naming it.
    pub async fn require_version(&self, model: &str, version: i64) -> Result<Version, RegistryError> {
        self.version(model, version)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("model '{model}' has no version {version}")))
    }

    /// The versions of `model` (all models when `None`), newest first.
    pub async fn versions(&self, model: Option<&str>) -> Result<Vec<Version>, RegistryError> {
        let (rows, aliases) = match model {
            Some(m) => {
                let sql = with_tail(VERSION_COLUMNS, " WHERE model = $1 ORDER BY version DESC");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(m.to_owned()).fetch_all(&self.pool).await?;
                (rows, self.aliases(m).await?)
            }
            None => {
                let sql = with_tail(VERSION_COLUMNS, " ORDER BY model, version DESC");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
                (rows, self.all_aliases().await?)
            }
        };
        rows.iter().map(|row| version_from_row(row, &aliases)).collect()
    }

    /// The aliases of `model`.
    pub async fn aliases(&self, model: &str) -> Result<Vec<Alias>, RegistryError> {
        let rows = sqlx::query(
            "SELECT model, alias, version, generation, updated_ms, updated_by FROM aliases WHERE model = $1 ORDER BY alias",
        )
        .bind(model.to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(alias_from_row).collect()
    }

    async fn all_aliases(&self) -> Result<Vec<Alias>, RegistryError> {
        let rows = sqlx::query("SELECT model, alias, version, generation, updated_ms, updated_by FROM aliases")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(alias_from_row).collect()
    }

    /// One alias, or `None`.
    pub async fn alias(&self, model: &str, alias: &str) -> Result<Option<Alias>, RegistryError> {
        let row = sqlx::query(
            "SELECT model, alias, version, generation, updated_ms, updated_by FROM aliases WHERE model = $1 AND alias = $2",
        )
        .bind(model.to_owned())
        .bind(alias.to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(alias_from_row).transpose()
    }

    /// The moves of `model`'s aliases (one alias when given), oldest first.
    pub async fn alias_history(&self, model: &str, alias: Option<&str>) -> Result<Vec<AliasChange>, RegistryError> {
        let rows = sqlx::query(
            "SELECT generation, model, alias, from_version, to_version, actor, reason, at_ms FROM alias_history \
             WHERE model = $1 AND ($2 = '' OR alias = $2) ORDER BY generation, alias",
        )
        .bind(model.to_owned())
        .bind(alias.unwrap_or("").to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AliasChange {
                    generation: row.try_get("generation")?,
                    model: row.try_get("model")?,
                    alias: row.try_get("alias")?,
                    from_version: row.try_get("from_version")?,
                    to_version: row.try_get("to_version")?,
                    actor: row.try_get("actor")?,
                    reason: row.try_get("reason")?,
                    at_ms: row.try_get("at_ms")?,
                })
            })
            .collect()
    }

    /// Events after generation `since`, at most `limit`, oldest first.
    pub async fn events(&self, since: i64, limit: i64) -> Result<Vec<Event>, RegistryError> {
        let rows = sqlx::query(
            "SELECT generation, at_ms, kind, model, payload FROM events WHERE generation > $1 ORDER BY generation LIMIT $2",
        )
        .bind(since)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Event {
                    generation: row.try_get("generation")?,
                    at_ms: row.try_get("at_ms")?,
                    kind: row.try_get("kind")?,
                    model: row.try_get("model")?,
                    payload: json_col(row, "payload")?,
                })
            })
            .collect()
    }
}

/// `SELECT <version columns> FROM model_versions` followed by `tail`.
fn with_tail(head: &str, tail: &str) -> String {
    format!("{head}{tail}")
}

fn model_from_row(row: &AnyRow, aliases: BTreeMap<String, i64>) -> Result<Model, RegistryError> {
    Ok(Model {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        tags: json_col(row, "tags")?,
        aliases,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        generation: row.try_get("generation")?,
    })
}

fn alias_from_row(row: &AnyRow) -> Result<Alias, RegistryError> {
    Ok(Alias {
        model: row.try_get("model")?,
        alias: row.try_get("alias")?,
        version: row.try_get("version")?,
        generation: row.try_get("generation")?,
        updated_ms: row.try_get("updated_ms")?,
        updated_by: row.try_get("updated_by")?,
    })
}

fn version_from_row(row: &AnyRow, aliases: &[Alias]) -> Result<Version, RegistryError> {
    let model: String = row.try_get("model")?;
    let version: i64 = row.try_get("version")?;
    let status: String = row.try_get("status")?;
    let format: Option<String> = row.try_get("format")?;
    let manifest: Option<String> = row.try_get("manifest")?;
    let manifest = manifest
        .map(|m| serde_json::from_str(&m))
        .transpose()
        .map_err(|e| RegistryError::Internal(format!("stored manifest: {e}")))?;
    let archived: i64 = row.try_get("archived")?;
    let names: Vec<String> =
        aliases.iter().filter(|a| a.model == model && a.version == version).map(|a| a.alias.clone()).collect();
    let current_stage = if names.iter().any(|a| a == CHAMPION) {
        "Production"
    } else if names.iter().any(|a| a == CHALLENGER) {
        "Staging"
    } else if archived != 0 {
        "Archived"
    } else {
        "None"
    };
    Ok(Version {
        model,
        version,
        status: status.parse::<Status>()?,
        status_message: row.try_get("status_message")?,
        source: row.try_get("source")?,
        format: format.map(|f| f.parse()).transpose()?,
        config_pbtxt: row.try_get("config_pbtxt")?,
        manifest,
        manifest_digest: row.try_get("manifest_digest")?,
        lineage: json_col(row, "lineage")?,
        description: row.try_get("description")?,
        tags: json_col(row, "tags")?,
        creator: row.try_get("creator")?,
        aliases: names,
        current_stage,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        generation: row.try_get("generation")?,
    })
}
