//! The registry's metadata in SQLite or PostgreSQL, through one code path:
//! sqlx's `Any` driver, runtime queries with `$n` placeholders (both
//! databases accept them), and one migration text (`migrations/`).
//!
//! Every change runs in one transaction that first bumps the single
//! generation row: that row lock (PostgreSQL) or the write lock (SQLite)
//! serializes writers, so checks made inside the transaction (does the
//! version exist, is the alias still at the `If-Match` generation) cannot
//! race, and events commit in generation order.
//!
//! Several replicas may share one PostgreSQL: each change also sends a
//! notification that wakes the other replicas' long polls ([`listen`]).

mod drift;
mod feedback;
mod listen;
mod read;
mod sync;
mod write;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row, SqlSafeStr};

use crate::error::RegistryError;

pub use sync::EncodedState;
pub use write::AliasWrite;

/// How long a request waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The registry database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// Woken after every commit of this process, and on PostgreSQL after every commit of
    /// another replica (the long polls of `/cp/v1/sync`).
    changed: std::sync::Arc<tokio::sync::Notify>,
    /// PostgreSQL: changes notify [`listen::CHANNEL`], and this task listens on it.
    listener: Option<std::sync::Arc<tokio::task::AbortHandle>>,
    /// The last desired state answered to a long poll, as JSON: the many waiters one change
    /// wakes share one read of it (see `sync::desired_state_json`).
    desired: std::sync::Arc<tokio::sync::Mutex<Option<sync::EncodedState>>>,
}

/// The schema's migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "registry", include_str!("../../migrations/0001_registry.sql")),
    (2, "gateways", include_str!("../../migrations/0002_gateways.sql")),
    (3, "follow_rules", include_str!("../../migrations/0003_follow_rules.sql")),
    (4, "drift", include_str!("../../migrations/0004_drift.sql")),
    (5, "feedback_entries", include_str!("../../migrations/0005_feedback_entries.sql")),
];

/// The schema, embedded in the binary.
fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, name, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing) or `postgres://...` and migrates.
    pub async fn connect(url: &str) -> Result<Store, RegistryError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let url = if sqlite && !url.contains('?') && !url.contains(":memory:") {
            format!("{url}?mode=rwc")
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") || sqlite {
            url.to_owned()
        } else {
            return Err(RegistryError::InvalidArgument(format!(
                "database URL '{}': expected sqlite://PATH or postgres://...",
                url.split('@').next_back().unwrap_or("")
            )));
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT).max_connections(8);
        if sqlite {
            // WAL: readers never wait for the writer; the busy timeout queues writers.
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            });
        }
        let pool = options.connect(&url).await?;
        migrator().run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => RegistryError::from_db(e),
            other => RegistryError::Internal(format!("database migration: {other}")),
        })?;
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let listener = (!sqlite).then(|| std::sync::Arc::new(listen::spawn(url, changed.clone()).abort_handle()));
        Ok(Store { pool, changed, listener, desired: Default::default() })
    }

    /// Closes the pool (and stops listening for other replicas' changes).
    pub async fn close(&self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        self.pool.close().await;
    }

    /// Whether other replicas' commits are announced (PostgreSQL).
    pub(crate) fn notifies(&self) -> bool {
        self.listener.is_some()
    }

    /// A notice that completes at the next commit made through this store (in this
    /// process), or on PostgreSQL by any replica. Enable it before reading the generation so
    /// no commit slips between.
    pub fn change_notice(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The current generation.
    pub async fn generation(&self) -> Result<i64, RegistryError> {
        Ok(sqlx::query_scalar("SELECT generation FROM cp_state WHERE id = 1").fetch_one(&self.pool).await?)
    }
}

/// Unix milliseconds now.
#[doc(hidden)]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Reads a JSON text column.
fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T, RegistryError> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| RegistryError::Internal(format!("stored JSON in {col}: {e}")))
}

/// Writes a JSON text column.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}
