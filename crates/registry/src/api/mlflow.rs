//! The subset of MLflow's Model Registry REST API that unchanged MLflow
//! clients use, at `/api/2.0/mlflow/`. Requests follow MLflow's wire rules
//! (GET takes its fields from the query string, the other methods from a
//! JSON body; versions are strings) and errors are MLflow's
//! `{"error_code": ..., "message": ...}`. Unknown fields are ignored here, as
//! MLflow's own server does, so newer clients keep working.
//!
//! Differences from MLflow: stages are aliases (`Production` = `champion`,
//! `Staging` = `challenger`); a version's source must be
//! `mlflow-artifacts:/<path>` uploaded through this server's artifact proxy
//! (no run needed) or an operator-allowed `file://` path, and is hashed into
//! a manifest in the background (`PENDING_REGISTRATION` → `READY`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::artifacts::version_uri;
use crate::Registry;
use crate::error::RegistryError;
use crate::name::Name;
use crate::store::AliasWrite;
use crate::types::{Model, NewVersion, Stage, Status, Tags, Version};

type Shared = State<Arc<Registry>>;
type Answer = Result<Response, MlflowError>;

/// How long `model-versions/create` waits for the import before answering PENDING_REGISTRATION.
const INLINE_IMPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A registry error in MLflow's error shape.
#[derive(Debug)]
pub struct MlflowError(pub RegistryError);

impl<E: Into<RegistryError>> From<E> for MlflowError {
    fn from(error: E) -> MlflowError {
        MlflowError(error.into())
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        let body = json!({ "error_code": self.0.mlflow_code(), "message": self.0.to_string() });
        (self.0.status(), axum::Json(body)).into_response()
    }
}

/// A request's fields: the query string for GET, the JSON body otherwise.
struct Args(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Args {
    type Rejection = MlflowError;

    async fn from_request(request: Request, state: &S) -> Result<Args, MlflowError> {
        if request.method() == Method::GET {
            let mut map = Map::new();
            for (key, value) in form_pairs(request.uri().query().unwrap_or("")) {
                match map.get_mut(&key) {
                    Some(Value::Array(list)) => list.push(Value::String(value)),
                    Some(first) => *first = Value::Array(vec![first.take(), Value::String(value)]),
                    None => {
                        map.insert(key, Value::String(value));
                    }
                }
            }
            return Ok(Args(map));
        }
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|e| RegistryError::TooLarge(format!("request body refused: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Args(Map::new()));
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(Args(map)),
            Ok(_) => Err(RegistryError::InvalidArgument("the request body must be a JSON object".into()).into()),
            Err(e) => Err(RegistryError::InvalidArgument(format!("invalid JSON body: {e}")).into()),
        }
    }
}

/// Decoded `key=value` pairs of a query string.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

impl Args {
    fn opt_str(&self, key: &str) -> Option<String> {
        match self.0.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Array(list) => list.first().and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    }

    fn str(&self, key: &str) -> Result<String, RegistryError> {
        self.opt_str(key)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| RegistryError::InvalidArgument(format!("missing value for required parameter '{key}'")))
    }

    fn name(&self, key: &str, what: &'static str) -> Result<Name, RegistryError> {
        Name::parse(what, &self.str(key)?)
    }

    fn version(&self) -> Result<i64, RegistryError> {
        super::native::parse_version(&self.str("version")?)
    }

    fn list(&self, key: &str) -> Vec<String> {
        match self.0.get(key) {
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    /// MLflow tags: `[{"key": .., "value": ..}]`.
    fn tags(&self) -> Tags {
        let mut tags = Tags::new();
        if let Some(Value::Array(list)) = self.0.get("tags") {
            for tag in list {
                if let Some(key) = tag.get("key").and_then(Value::as_str) {
                    let value = tag.get("value").and_then(Value::as_str).unwrap_or("");
                    tags.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        tags
    }

    fn bool(&self, key: &str) -> bool {
        matches!(self.0.get(key), Some(Value::Bool(true))) || self.opt_str(key).is_some_and(|s| s == "true")
    }
}

fn ok(value: Value) -> Answer {
    Ok((StatusCode::OK, axum::Json(value)).into_response())
}

fn tags_json(tags: &Tags) -> Value {
    tags.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect()
}

/// A version in MLflow's shape.
fn version_json(v: &Version) -> Value {
    json!({
        "name": v.model,
        "version": v.version.to_string(),
        "creation_timestamp": v.created_ms,
        "last_updated_timestamp": v.updated_ms,
        "current_stage": v.current_stage,
        "description": v.description,
        "source": v.source,
        "run_id": v.lineage.run_id.clone().unwrap_or_default(),
        "status": v.status.as_str(),
        "status_message": v.status_message,
        "tags": tags_json(&v.tags),
        "aliases": v.aliases,
    })
}

/// The newest version per stage, as MLflow's `latest_versions`.
fn latest_per_stage(versions: &[Version], stages: &[String]) -> Vec<Value> {
    let mut out: Vec<&Version> = Vec::new();
    for v in versions {
        let wanted = stages.is_empty() || stages.iter().any(|s| s.eq_ignore_ascii_case(v.current_stage));
        if wanted && !out.iter().any(|o| o.current_stage == v.current_stage) {
            out.push(v);
        }
    }
    out.sort_by_key(|v| v.version);
    out.into_iter().map(version_json).collect()
}

/// A model in MLflow's shape.
fn model_json(m: &Model, versions: &[Version]) -> Value {
    let aliases: Vec<Value> = m.aliases.iter().map(|(a, v)| json!({ "alias": a, "version": v.to_string() })).collect();
    json!({
        "name": m.name,
        "creation_timestamp": m.created_ms,
        "last_updated_timestamp": m.updated_ms,
        "description": m.description,
        "tags": tags_json(&m.tags),
        "aliases": aliases,
        "latest_versions": latest_per_stage(versions, &[]),
    })
}

async fn model_answer(registry: &Registry, name: &str) -> Answer {
    let model = registry.store.require_model(name).await?;
    let versions = registry.store.versions(Some(name)).await?;
    ok(json!({ "registered_model": model_json(&model, &versions) }))
}

/// The MLflow routes.
pub fn routes() -> Router<Arc<Registry>> {
    const P: &str = "/api/2.0/mlflow";
    Router::new()
        .route(&format!("{P}/registered-models/create"), post(create_model))
        .route(&format!("{P}/registered-models/get"), get(get_model))
        .route(&format!("{P}/registered-models/rename"), post(rename_model))
        .route(&format!("{P}/registered-models/update"), axum::routing::patch(update_model))
        .route(&format!("{P}/registered-models/delete"), axum::routing::delete(delete_model))
        .route(&format!("{P}/registered-models/search"), get(search_models))
        .route(&format!("{P}/registered-models/set-tag"), post(set_model_tag))
        .route(&format!("{P}/registered-models/delete-tag"), axum::routing::delete(delete_model_tag))
        .route(&format!("{P}/registered-models/get-latest-versions"), post(latest_versions).get(latest_versions))
        .route(&format!("{P}/registered-models/alias"), post(set_alias).delete(delete_alias).get(get_by_alias))
        .route(&format!("{P}/model-versions/create"), post(create_version))
        .route(&format!("{P}/model-versions/get"), get(get_version))
        .route(&format!("{P}/model-versions/update"), axum::routing::patch(update_version))
        .route(&format!("{P}/model-versions/delete"), axum::routing::delete(delete_version))
        .route(&format!("{P}/model-versions/search"), get(search_versions))
        .route(&format!("{P}/model-versions/get-download-uri"), get(download_uri))
        .route(&format!("{P}/model-versions/transition-stage"), post(transition_stage))
        .route(&format!("{P}/model-versions/set-tag"), post(set_version_tag))
        .route(&format!("{P}/model-versions/delete-tag"), axum::routing::delete(delete_version_tag))
}

// === registered models ===

async fn create_model(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let description = args.opt_str("description").unwrap_or_default();
    registry.store.create_model(name.as_str(), &description, &args.tags()).await?;
    model_answer(&registry, name.as_str()).await
}

async fn get_model(State(registry): Shared, args: Args) -> Answer {
    model_answer(&registry, args.name("name", "model")?.as_str()).await
}

async fn rename_model(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let new_name = args.name("new_name", "model")?;
    registry.store.rename_model(name.as_str(), new_name.as_str()).await?;
    model_answer(&registry, new_name.as_str()).await
}

async fn update_model(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    registry.store.update_model(name.as_str(), args.opt_str("description").as_deref(), None).await?;
    model_answer(&registry, name.as_str()).await
}

async fn delete_model(State(registry): Shared, args: Args) -> Answer {
    registry.store.delete_model(args.name("name", "model")?.as_str()).await?;
    ok(json!({}))
}

async fn search_models(State(registry): Shared, args: Args) -> Answer {
    let filter = Filter::parse(&args.opt_str("filter").unwrap_or_default())?;
    let models = registry.store.models().await?;
    let versions = registry.store.versions(None).await?;
    let matching: Vec<Value> = models
        .iter()
        .filter(|m| filter.matches_model(m))
        .map(|m| {
            let own: Vec<Version> = versions.iter().filter(|v| v.model == m.name).cloned().collect();
            model_json(m, &own)
        })
        .collect();
    ok(page(matching, &args, "registered_models")?)
}

async fn set_model_tag(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    registry
        .store
        .set_tag(name.as_str(), None, &args.str("key")?, Some(&args.opt_str("value").unwrap_or_default()))
        .await?;
    ok(json!({}))
}

async fn delete_model_tag(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    registry.store.set_tag(name.as_str(), None, &args.str("key")?, None).await?;
    ok(json!({}))
}

async fn latest_versions(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    registry.store.require_model(name.as_str()).await?;
    let versions = registry.store.versions(Some(name.as_str())).await?;
    ok(json!({ "model_versions": latest_per_stage(&versions, &args.list("stages")) }))
}

// === aliases ===

async fn set_alias(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let alias = args.name("alias", "alias")?;
    let write =
        AliasWrite { if_match: None, actor: "mlflow".into(), reason: "MLflow set_registered_model_alias".into() };
    registry.store.set_alias(name.as_str(), alias.as_str(), args.version()?, &write).await?;
    ok(json!({}))
}

async fn delete_alias(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let alias = args.name("alias", "alias")?;
    let write =
        AliasWrite { if_match: None, actor: "mlflow".into(), reason: "MLflow delete_registered_model_alias".into() };
    registry.store.delete_alias(name.as_str(), alias.as_str(), &write).await?;
    ok(json!({}))
}

async fn get_by_alias(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let alias = args.name("alias", "alias")?;
    let found =
        registry.store.alias(name.as_str(), alias.as_str()).await?.ok_or_else(|| {
            RegistryError::NotFound(format!("registered model alias '{alias}' of '{name}' not found"))
        })?;
    let version = registry.store.require_version(name.as_str(), found.version).await?;
    ok(json!({ "model_version": version_json(&version) }))
}

// === model versions ===

async fn create_version(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let source = args.str("source")?;
    // Refuse unusable sources now, not later in the background.
    crate::import::resolve_source(&registry, &source)?;
    let mut new = NewVersion {
        source: source.clone(),
        description: args.opt_str("description").unwrap_or_default(),
        tags: args.tags(),
        creator: "mlflow".into(),
        ..NewVersion::default()
    };
    new.lineage.run_id = args.opt_str("run_id").filter(|r| !r.is_empty());
    let mut version = registry.store.create_version(name.as_str(), new).await?;
    let import = crate::import::spawn(registry.clone(), version.model.clone(), version.version, source);
    // A small model imports in milliseconds: answering READY then spares the MLflow client its
    // first 3 s poll sleep. A large one answers PENDING_REGISTRATION and the client polls.
    if tokio::time::timeout(INLINE_IMPORT_WAIT, import).await.is_ok() {
        version = registry.store.require_version(&version.model, version.version).await?;
    }
    ok(json!({ "model_version": version_json(&version) }))
}

async fn get_version(State(registry): Shared, args: Args) -> Answer {
    let version = registry.store.require_version(args.name("name", "model")?.as_str(), args.version()?).await?;
    ok(json!({ "model_version": version_json(&version) }))
}

async fn update_version(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let version = registry
        .store
        .update_version(name.as_str(), args.version()?, args.opt_str("description").as_deref(), None)
        .await?;
    ok(json!({ "model_version": version_json(&version) }))
}

async fn delete_version(State(registry): Shared, args: Args) -> Answer {
    registry.store.delete_version(args.name("name", "model")?.as_str(), args.version()?).await?;
    ok(json!({}))
}

async fn search_versions(State(registry): Shared, args: Args) -> Answer {
    let filter = Filter::parse(&args.opt_str("filter").unwrap_or_default())?;
    let versions = registry.store.versions(None).await?;
    let matching: Vec<Value> = versions.iter().filter(|v| filter.matches_version(v)).map(version_json).collect();
    ok(page(matching, &args, "model_versions")?)
}

async fn download_uri(State(registry): Shared, args: Args) -> Answer {
    let version = registry.store.require_version(args.name("name", "model")?.as_str(), args.version()?).await?;
    let uri =
        if version.status == Status::Ready { version_uri(&version.model, version.version) } else { version.source };
    ok(json!({ "artifact_uri": uri }))
}

async fn transition_stage(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let stage = Stage::parse(&args.str("stage")?)?;
    let archive = args.bool("archive_existing_versions");
    let version = registry.store.transition_stage(name.as_str(), args.version()?, stage, archive, "mlflow").await?;
    ok(json!({ "model_version": version_json(&version) }))
}

async fn set_version_tag(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    let value = args.opt_str("value").unwrap_or_default();
    registry.store.set_tag(name.as_str(), Some(args.version()?), &args.str("key")?, Some(&value)).await?;
    ok(json!({}))
}

async fn delete_version_tag(State(registry): Shared, args: Args) -> Answer {
    let name = args.name("name", "model")?;
    registry.store.set_tag(name.as_str(), Some(args.version()?), &args.str("key")?, None).await?;
    ok(json!({}))
}

/// `max_results` and `page_token` (an offset) over a result list.
fn page(items: Vec<Value>, args: &Args, key: &str) -> Result<Value, RegistryError> {
    let max = args.opt_str("max_results").map_or(Ok(1000), |m| {
        m.parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| RegistryError::InvalidArgument(format!("max_results '{m}': expected a positive integer")))
    })?;
    let start = args.opt_str("page_token").filter(|t| !t.is_empty()).map_or(Ok(0), |t| {
        t.parse::<usize>().map_err(|_| RegistryError::InvalidArgument(format!("page_token '{t}' is not one of ours")))
    })?;
    let total = items.len();
    let slice: Vec<Value> = items.into_iter().skip(start).take(max).collect();
    let mut out = Map::new();
    out.insert(key.to_owned(), Value::Array(slice));
    if start + max < total {
        out.insert("next_page_token".into(), Value::String((start + max).to_string()));
    }
    Ok(Value::Object(out))
}

// === search filters ===

/// A search filter: clauses joined by `AND`, each `<field> <op> '<value>'` with field `name`,
/// `run_id`, `source_path` or `tags.<key>` and op `=`, `!=`, `LIKE` or `ILIKE`.
struct Filter(Vec<(String, String, String)>);

impl Filter {
    fn parse(text: &str) -> Result<Filter, RegistryError> {
        let bad = |why: &str| RegistryError::InvalidArgument(format!("search filter '{text}': {why}"));
        let mut clauses = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let field_end = rest
                .find(|c: char| c.is_whitespace() || c == '=' || c == '!')
                .ok_or_else(|| bad("expected <field> <op> '<value>'"))?;
            let raw = rest[..field_end].replace(['`', '"'], "");
            // MLflow clients write `tag.<key>` and `tags.<key>` (key in backquotes when dotted).
            let field = match raw.strip_prefix("tag.") {
                Some(key) => format!("tags.{key}"),
                None => raw,
            };
            rest = rest[field_end..].trim_start();
            let op_end = rest.find(['\'', '"']).ok_or_else(|| bad("values must be quoted"))?;
            let op = rest[..op_end].trim().to_ascii_uppercase();
            if !matches!(op.as_str(), "=" | "!=" | "LIKE" | "ILIKE") {
                return Err(bad(&format!("operator '{op}' is not supported (=, !=, LIKE, ILIKE)")));
            }
            let quote = rest[op_end..].chars().next().unwrap_or('\'');
            let value_start = op_end + 1;
            let value_len = rest[value_start..].find(quote).ok_or_else(|| bad("unterminated quote"))?;
            let value = rest[value_start..value_start + value_len].to_owned();
            rest = rest[value_start + value_len + 1..].trim_start();
            if !(field == "name" || field == "run_id" || field == "source_path" || field.starts_with("tags.")) {
                return Err(bad(&format!("field '{field}' is not supported (name, run_id, source_path, tags.<key>)")));
            }
            clauses.push((field, op, value));
            if !rest.is_empty() {
                let (and, after) = rest.split_at(rest.find(char::is_whitespace).unwrap_or(rest.len()));
                if !and.eq_ignore_ascii_case("and") {
                    return Err(bad("clauses must be joined by AND"));
                }
                rest = after.trim_start();
            }
        }
        Ok(Filter(clauses))
    }

    fn test(&self, field_value: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|(field, op, wanted)| {
            let Some(have) = field_value(field) else { return op == "!=" };
            match op.as_str() {
                "=" => have == *wanted,
                "!=" => have != *wanted,
                "LIKE" => like(&have, wanted),
                _ => like(&have.to_lowercase(), &wanted.to_lowercase()),
            }
        })
    }

    fn matches_model(&self, m: &Model) -> bool {
        self.test(|field| match field {
            "name" => Some(m.name.clone()),
            _ => field.strip_prefix("tags.").and_then(|k| m.tags.get(k).cloned()),
        })
    }

    fn matches_version(&self, v: &Version) -> bool {
        self.test(|field| match field {
            "name" => Some(v.model.clone()),
            "run_id" => v.lineage.run_id.clone(),
            "source_path" => Some(v.source.clone()),
            _ => field.strip_prefix("tags.").and_then(|k| v.tags.get(k).cloned()),
        })
    }
}

/// SQL LIKE: `%` any run, `_` any one character.
fn like(text: &str, pattern: &str) -> bool {
    let text: Vec<char> = text.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    // Classic two-pointer match with backtracking to the last `%`.
    let (mut t, mut p, mut star, mut mark) = (0, 0, None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '_' || pattern[p] == text[t]) {
            t += 1;
            p += 1;
        } else if p < pattern.len() && pattern[p] == '%' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '%')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn like_and_filters_follow_sql() {
        assert!(like("fraud-v2", "fraud%"));
        assert!(like("fraud", "fr_ud"));
        assert!(!like("fraud", "fr_d"));
        assert!(like("abc", "%"));
        let f = Filter::parse("name='fraud' and tags.team = \"risk\"").unwrap();
        assert_eq!(f.0.len(), 2);
        let f = Filter::parse("name LIKE 'fr%' AND tag.`mlflow.prompt.is_prompt` != 'true'").unwrap();
        assert_eq!(f.0[1], ("tags.mlflow.prompt.is_prompt".into(), "!=".into(), "true".into()));
        assert!(Filter::parse("name ~ 'x'").is_err());
        assert!(Filter::parse("name = 'x").is_err());
        assert!(Filter::parse("secret = 'x'").is_err());
        assert!(Filter::parse("").unwrap().0.is_empty());
    }
}
