//! Online RAG scores, stored next to the request log: a `rag_scores` table in the request log's SQLite
//! file, keyed by request id, so `GET /admin/requests/{id}` shows a request with its scores.
//!
//! Scores arrive after the request's own record (the evaluation runs after the answer), so they are a
//! separate table with their own small connection rather than columns of `requests`. Writes are rare
//! (sampled traffic) and tiny; in WAL mode they wait at most the busy timeout for the request log's
//! writer. Rows beyond `max_rows` are deleted, oldest first.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rag_scores (
    seq          INTEGER PRIMARY KEY,
    request_id   TEXT    NOT NULL,
    evaluated_at INTEGER NOT NULL,
    model        TEXT,
    judge_model  TEXT    NOT NULL,
    result       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS rag_scores_request_id ON rag_scores (request_id);
";

/// The `rag_scores` table.
#[derive(Clone)]
pub struct ScoreStore {
    conn: Arc<Mutex<Connection>>,
    max_rows: i64,
}

impl ScoreStore {
    /// Opens the request log database at `path` and creates the table if needed.
    pub fn open(path: &Path, max_rows: u64) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            max_rows: i64::try_from(max_rows).unwrap_or(i64::MAX),
        })
    }

    /// Stores the result of one request's evaluation (blocking: call on the blocking pool).
    pub fn insert(
        &self,
        request_id: &str,
        model: &str,
        judge_model: &str,
        result: &Value,
    ) -> rusqlite::Result<()> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.execute(
            "INSERT INTO rag_scores (request_id, evaluated_at, model, judge_model, result) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![
                request_id,
                crate::request_log::now_unix_ms(),
                model,
                judge_model,
                result.to_string()
            ],
        )?;
        conn.execute(
            "DELETE FROM rag_scores WHERE seq <= (SELECT max(seq) FROM rag_scores) - ?1",
            [self.max_rows],
        )?;
        Ok(())
    }

    /// The newest evaluation of `request_id` (blocking).
    pub fn get(&self, request_id: &str) -> rusqlite::Result<Option<Value>> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let row: Option<(String, i64, String)> = conn
            .query_row(
                "SELECT result, evaluated_at, judge_model FROM rag_scores WHERE request_id = ?1 \
                 ORDER BY seq DESC LIMIT 1",
                [request_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(row.map(|(result, at, judge)| {
            let mut v = serde_json::from_str(&result).unwrap_or(Value::Null);
            if v.is_object() {
                v["evaluated_at"] = Value::from(at);
                v["judge_model"] = Value::from(judge);
            }
            v
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_rows_and_returns_the_newest_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = ScoreStore::open(&dir.path().join("r.db"), 2).unwrap();
        for i in 0..4 {
            store
                .insert(
                    &format!("r{i}"),
                    "m",
                    "judge",
                    &serde_json::json!({"scores": {"faithfulness": i}}),
                )
                .unwrap();
        }
        store
            .insert(
                "r3",
                "m",
                "judge",
                &serde_json::json!({"scores": {"faithfulness": 9}}),
            )
            .unwrap();
        assert_eq!(store.get("r0").unwrap(), None);
        let r3 = store.get("r3").unwrap().unwrap();
        assert_eq!(r3["scores"]["faithfulness"], 9);
        assert_eq!(r3["judge_model"], "judge");
    }
}
