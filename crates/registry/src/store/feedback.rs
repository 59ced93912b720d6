//! The predictions gateways share for ground truth (see [`crate::feedback`]).
//!
//! Not changes of the desired state: nothing here bumps the generation or logs
//! an event. A claim is one conditional `UPDATE ... WHERE judged_by IS NULL`,
//! so two gateways claiming one entry at once cannot both win. Every
//! transaction starts with a write, so SQLite takes its write lock at once
//! (a read first could not be upgraded while another writer commits).

use std::collections::HashMap;

use sqlx::Row;

use super::{Store, json_col, to_json};
use crate::error::RegistryError;
use crate::feedback::{Claim, Entry, Found, Prediction, State};

/// Rows one statement writes or reads (7 placeholders each; far under both databases' limits).
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// Stores shipped entries (a later one of an id replaces the prediction of
    /// an earlier one; whether it was judged stays). Returns how many were stored.
    pub async fn put_feedback_entries(&self, entries: &[Entry]) -> Result<usize, RegistryError> {
        // One id twice in one statement is an error in PostgreSQL: the last one stands.
        let mut last: HashMap<(&str, &str), &Entry> = HashMap::with_capacity(entries.len());
        for entry in entries {
            last.insert((entry.model.as_str(), entry.id.as_str()), entry);
        }
        let unique: Vec<&Entry> = last.into_values().collect();
        let mut tx = self.pool.begin().await?;
        for chunk in unique.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO feedback_entries (model, request_id, version, at_ms, expires_ms, prediction) VALUES ",
            );
            for i in 0..chunk.len() {
                let n = i * 6;
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${}, ${}, ${}, ${}, ${}, ${})", n + 1, n + 2, n + 3, n + 4, n + 5, n + 6));
            }
            sql.push_str(
                " ON CONFLICT (model, request_id) DO UPDATE SET version = excluded.version, \
                 at_ms = excluded.at_ms, expires_ms = excluded.expires_ms, prediction = excluded.prediction",
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for entry in chunk {
                query = query
                    .bind(entry.model.clone())
                    .bind(entry.id.clone())
                    .bind(entry.version as i64)
                    .bind(entry.at_ms)
                    .bind(entry.at_ms.saturating_add(entry.ttl_ms))
                    .bind(to_json(&entry.prediction));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(unique.len())
    }

    /// Where each of `ids` of `model` stands at `now_ms`, unchanged.
    pub async fn lookup_feedback(&self, model: &str, ids: &[String], now_ms: i64) -> Result<Vec<Found>, RegistryError> {
        let mut rows: HashMap<String, Found> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT request_id, version, expires_ms, prediction, judged_by FROM feedback_entries \
                 WHERE model = $1 AND request_id IN ({})",
                placeholders.join(",")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(model.to_owned());
            for id in chunk {
                query = query.bind(id.clone());
            }
            for row in query.fetch_all(&self.pool).await? {
                let found = found(&row, now_ms)?;
                rows.insert(found.id.clone(), found);
            }
        }
        Ok(ids.iter().map(|id| rows.get(id).cloned().unwrap_or_else(|| unknown(id))).collect())
    }

    /// Marks each open entry of `claims` judged by `gateway`: `Claimed` for those this
    /// call marked, else where they stand. A claim that brings its entry stores it
    /// judged when the control plane does not hold it yet.
    pub async fn claim_feedback(
        &self,
        model: &str,
        gateway: &str,
        claims: &[Claim],
        now_ms: i64,
    ) -> Result<Vec<Found>, RegistryError> {
        let mut results = Vec::with_capacity(claims.len());
        let mut tx = self.pool.begin().await?;
        for claim in claims {
            let marked = match &claim.entry {
                Some(entry) => sqlx::query(
                    "INSERT INTO feedback_entries \
                     (model, request_id, version, at_ms, expires_ms, prediction, judged_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (model, request_id) \
                     DO UPDATE SET judged_by = $7 WHERE feedback_entries.judged_by IS NULL",
                )
                .bind(model.to_owned())
                .bind(claim.id.clone())
                .bind(entry.version as i64)
                .bind(entry.at_ms)
                .bind(entry.at_ms.saturating_add(entry.ttl_ms))
                .bind(to_json(&entry.prediction))
                .bind(gateway.to_owned()),
                None => sqlx::query(
                    "UPDATE feedback_entries SET judged_by = $3 \
                     WHERE model = $1 AND request_id = $2 AND judged_by IS NULL AND expires_ms >= $4",
                )
                .bind(model.to_owned())
                .bind(claim.id.clone())
                .bind(gateway.to_owned())
                .bind(now_ms),
            }
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let row = sqlx::query(
                "SELECT request_id, version, expires_ms, prediction, judged_by FROM feedback_entries \
                 WHERE model = $1 AND request_id = $2",
            )
            .bind(model.to_owned())
            .bind(claim.id.clone())
            .fetch_optional(&mut *tx)
            .await?;
            let mut result = match row {
                Some(row) => found(&row, now_ms)?,
                None => unknown(&claim.id),
            };
            if marked == 1 {
                result.state = State::Claimed;
            }
            results.push(result);
        }
        tx.commit().await?;
        Ok(results)
    }

    /// Deletes the entries expired at `now_ms`, then the oldest past `max_rows`.
    /// Returns (expired, surplus) rows deleted.
    pub async fn purge_feedback(&self, now_ms: i64, max_rows: u64) -> Result<(u64, u64), RegistryError> {
        let expired = sqlx::query("DELETE FROM feedback_entries WHERE expires_ms < $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM feedback_entries").fetch_one(&self.pool).await?;
        let excess = u64::try_from(held).unwrap_or(0).saturating_sub(max_rows);
        if excess == 0 {
            return Ok((expired, 0));
        }
        // The `excess`-th oldest time: rows at or before it go (ties may take a few more).
        let surplus = sqlx::query(
            "DELETE FROM feedback_entries WHERE at_ms <= \
             (SELECT at_ms FROM feedback_entries ORDER BY at_ms LIMIT 1 OFFSET $1)",
        )
        .bind(i64::try_from(excess - 1).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((expired, surplus))
    }

    /// Rows held now.
    pub async fn feedback_rows(&self) -> Result<u64, RegistryError> {
        let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM feedback_entries").fetch_one(&self.pool).await?;
        Ok(u64::try_from(held).unwrap_or(0))
    }
}

fn unknown(id: &str) -> Found {
    Found { id: id.to_owned(), state: State::Unknown, version: None, prediction: None }
}

fn found(row: &sqlx::any::AnyRow, now_ms: i64) -> Result<Found, RegistryError> {
    let judged: Option<String> = row.try_get("judged_by")?;
    let expires_ms: i64 = row.try_get("expires_ms")?;
    let version: i64 = row.try_get("version")?;
    let prediction: Prediction = json_col(row, "prediction")?;
    let state = if judged.is_some() {
        State::Judged
    } else if expires_ms < now_ms {
        State::Expired
    } else {
        State::Open
    };
    Ok(Found {
        id: row.try_get("request_id")?,
        state,
        version: u64::try_from(version).ok(),
        prediction: Some(prediction),
    })
}
