//! Online RAG scores, stored next to the request log: a `rag_scores` table in the request log's SQLite
//! file, keyed by request id, so `GET /admin/requests/{id}` shows a request with its scores.
//!
//! Scores arrive after the request's own record (the evaluation runs after the answer), so they are a
//! separate table with their own small connection rather than columns of `requests`. Writes are rare
//! (sampled traffic) and tiny; in WAL mode they wait at most the busy timeout for the request log's
//! writer. Rows beyond `max_rows` are deleted, oldest first, and rows older than the request log's
//! `retention_age` too.
//!
//! What is stored follows the request log's `capture_bodies`: off (the default), only scores, per-metric
//! errors (redacted, capped) and the judge tally — no answer, question or context text; on, the
//! intermediates (`details`: statements, reasons, generated questions) as well, redacted like bodies and
//! dropped with a marker when longer than `max_body_bytes` ([`stored_result`]).

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
CREATE INDEX IF NOT EXISTS rag_scores_evaluated_at ON rag_scores (evaluated_at);
";

/// The `rag_scores` table.
#[derive(Clone)]
pub struct ScoreStore {
    conn: Arc<Mutex<Connection>>,
    max_rows: i64,
    max_age_ms: i64,
}

/// What of an evaluation is stored: see the module doc.
#[derive(Debug, Clone, Copy)]
pub struct Capture {
    /// The request log's `capture_bodies`: store the (redacted) intermediates too.
    pub details: bool,
    /// The request log's `max_body_bytes`: longer `details` are dropped, with a marker.
    pub max_details_bytes: usize,
}

/// The stored form of an online evaluation (`{scores, errors, details}` from
/// [`super::rag::Evaluation::to_json`], plus `judge`): errors are always redacted and capped; `details`
/// is kept only when capturing, redacted, and replaced by `{"truncated": true, "bytes": n}` when too long.
pub fn stored_result(mut result: Value, capture: Capture) -> Value {
    if let Some(Value::Object(errors)) = result.get_mut("errors") {
        for message in errors.values_mut() {
            if let Value::String(text) = message {
                let mut redacted = crate::request_log::redact(text);
                truncate(&mut redacted, crate::request_log::MAX_ERROR_MESSAGE_BYTES);
                *text = redacted;
            }
        }
    }
    let Some(obj) = result.as_object_mut() else {
        return result;
    };
    let details = obj.remove("details");
    if capture.details
        && let Some(details) = details
    {
        let text = crate::request_log::redact(&details.to_string());
        let kept = if text.len() > capture.max_details_bytes {
            serde_json::json!({"truncated": true, "bytes": text.len()})
        } else {
            // Redaction keeps JSON string syntax; should it ever not, store nothing rather than raw text.
            serde_json::from_str(&text)
                .unwrap_or_else(|_| serde_json::json!({"redacted": crate::request_log::REDACTED}))
        };
        obj.insert("details".to_owned(), kept);
    }
    result
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl ScoreStore {
    /// Opens the request log database at `path` and creates the table if needed; keeps at most
    /// `max_rows` rows, none older than `max_age`.
    pub fn open(path: &Path, max_rows: u64, max_age: Duration) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            max_rows: i64::try_from(max_rows).unwrap_or(i64::MAX),
            max_age_ms: i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
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
        let now = crate::request_log::now_unix_ms();
        conn.execute(
            "INSERT INTO rag_scores (request_id, evaluated_at, model, judge_model, result) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![request_id, now, model, judge_model, result.to_string()],
        )?;
        conn.execute(
            "DELETE FROM rag_scores WHERE seq <= (SELECT max(seq) FROM rag_scores) - ?1",
            [self.max_rows],
        )?;
        conn.execute(
            "DELETE FROM rag_scores WHERE evaluated_at < ?1",
            [now.saturating_sub(self.max_age_ms)],
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
        let store = ScoreStore::open(&dir.path().join("r.db"), 2, Duration::from_hours(1)).unwrap();
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

    #[test]
    fn rows_older_than_the_retention_age_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            ScoreStore::open(&dir.path().join("r.db"), 100, Duration::from_hours(1)).unwrap();
        store
            .insert("old", "m", "judge", &serde_json::json!({}))
            .unwrap();
        store
            .conn
            .lock()
            .unwrap()
            .execute(
                "UPDATE rag_scores SET evaluated_at = evaluated_at - 7200000 WHERE request_id = 'old'",
                [],
            )
            .unwrap();
        store
            .insert("new", "m", "judge", &serde_json::json!({}))
            .unwrap();
        assert_eq!(store.get("old").unwrap(), None);
        assert!(store.get("new").unwrap().is_some());
    }

    fn evaluation() -> Value {
        serde_json::json!({
            "scores": {"faithfulness": 0.5},
            "errors": {"groundedness": format!("judge call failed: key sk-abcdefghijklmnopqrstuvwxyz0123456789 {}", "x".repeat(10_000))},
            "details": {"faithfulness": {"statements": [{"text": "the password is hunter2, api_key=sk-abcdefghijklmnopqrstuvwxyz0123456789", "verdict": 1}]}},
            "judge": {"calls": 2, "cached": 0, "cost_usd": null},
        })
    }

    #[test]
    fn without_capture_only_scores_and_redacted_errors_are_stored() {
        let stored = stored_result(
            evaluation(),
            Capture {
                details: false,
                max_details_bytes: 16_384,
            },
        );
        assert_eq!(stored["scores"]["faithfulness"], 0.5);
        assert_eq!(stored["judge"]["calls"], 2);
        assert!(stored.get("details").is_none(), "{stored}");
        let error = stored["errors"]["groundedness"].as_str().unwrap();
        assert!(!error.contains("sk-abcdefghijklmnopqrstuvwxyz"), "{error}");
        assert!(error.len() <= crate::request_log::MAX_ERROR_MESSAGE_BYTES);
        assert!(!stored.to_string().contains("hunter2"));
    }

    #[test]
    fn with_capture_details_are_redacted_and_capped() {
        let capture = |max| Capture {
            details: true,
            max_details_bytes: max,
        };
        let stored = stored_result(evaluation(), capture(16_384));
        let text = stored["details"]["faithfulness"]["statements"][0]["text"]
            .as_str()
            .unwrap();
        assert!(text.starts_with("the password is"), "{stored}");
        assert!(!text.contains("sk-abcdefghijklmnopqrstuvwxyz"), "{stored}");
        let small = stored_result(evaluation(), capture(10));
        assert_eq!(small["details"]["truncated"], true, "{small}");
        assert!(!small.to_string().contains("password"), "{small}");
    }
}
