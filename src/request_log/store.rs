//! SQLite storage: schema and pragmas, batched inserts, listings and lookups, retention. Plain functions
//! over a `rusqlite::Connection`; which thread calls them is decided in `mod.rs` and `writer.rs`.
//!
//! One table, `requests`. `seq` (the rowid) is the order records were logged in; it makes "keep the
//! newest N" a cheap range delete. Bodies and the timeline (JSON, in the form `timeline.rs` describes)
//! are the last columns, so listings do not read their overflow pages.
//!
//! Schema versions (`PRAGMA user_version`): 1, timelines as JSON objects; 2, the same table with
//! timelines as compact arrays. A version-1 file is taken over as it is (the reader understands both
//! forms) and marked 2; a build that only knows 1 then refuses it instead of misreading it.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Type, Value, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use super::RequestLogError;
use super::record::{RequestFilter, RequestRecord, RequestSummary};
use super::timeline;

/// The schema this build writes; stored in `PRAGMA user_version`.
pub(crate) const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
BEGIN;
CREATE TABLE IF NOT EXISTS requests (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL,
    received_at    INTEGER NOT NULL,
    trace_id       TEXT,
    key_id         TEXT,
    route          TEXT    NOT NULL,
    method         TEXT    NOT NULL,
    model          TEXT,
    provider       TEXT,
    status         INTEGER NOT NULL,
    stream         INTEGER NOT NULL,
    latency_ms     REAL,
    ttft_ms        REAL,
    upstream_ms    REAL,
    input_tokens   INTEGER,
    output_tokens  INTEGER,
    cost_usd       TEXT,
    error_kind     TEXT,
    cache          TEXT,
    error_message  TEXT,
    request_body   TEXT,
    response_body  TEXT,
    timeline       TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_received_at ON requests (received_at);
CREATE INDEX IF NOT EXISTS requests_model ON requests (model, received_at);
CREATE INDEX IF NOT EXISTS requests_status ON requests (status, received_at);
CREATE INDEX IF NOT EXISTS requests_id ON requests (id);
PRAGMA user_version = 2;
COMMIT;
";

const INSERT: &str = "INSERT OR ROLLBACK INTO requests (id, received_at, trace_id, key_id, route, method,
    model, provider, status, stream, latency_ms, ttft_ms, upstream_ms, input_tokens, output_tokens, cost_usd,
    error_kind, cache, error_message, request_body, response_body, timeline)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
    ?21, ?22)";

/// The summary columns, in `summary_from_row` order; a full record adds the four after them.
const SUMMARY_COLUMNS: &str = "id, received_at, trace_id, key_id, route, method, model, provider, \
    status, stream, latency_ms, ttft_ms, upstream_ms, input_tokens, output_tokens, cost_usd, \
    error_kind, cache";
const DETAIL_COLUMNS: &str = "error_message, request_body, response_body, timeline";

/// Opens (creating if needed) the database for writing: WAL, `synchronous=NORMAL`, schema.
pub(crate) fn open_writer(
    path: &Path,
    busy_timeout: Duration,
) -> Result<Connection, RequestLogError> {
    let open_error = |source| RequestLogError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(open_error)?;
    conn.busy_timeout(busy_timeout).map_err(open_error)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // E.g. a file system without shared memory: it still works, readers just wait for the writer.
        tracing::warn!(path = %path.display(), %mode, "request log: WAL mode unavailable");
    }
    // With WAL, NORMAL loses at most the last transactions on power loss (never on a process crash)
    // and saves an fsync per commit.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_error)?;
    // No automatic checkpoints: SQLite would run one inside the commit that grows the WAL past 1000
    // pages, copying ~4 MB and syncing it in one run of ~5 ms on the core the request threads share
    // (`perf sched`, session 8). The writer checkpoints after every batch instead ([`checkpoint`]).
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(open_error)?;
    migrate(&conn).map_err(|e| match e {
        RequestLogError::Sqlite(source) => open_error(source),
        other => other,
    })?;
    Ok(conn)
}

/// Opens a second connection for listings and lookups; it may not write.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, RequestLogError> {
    let open_error = |source| RequestLogError::Open {
        path: path.to_owned(),
        source,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(open_error)?;
    conn.pragma_update(None, "query_only", true)
        .map_err(open_error)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), RequestLogError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => conn.execute_batch(SCHEMA)?,
        // Same table; only new timelines are written in the compact form.
        1 => conn.pragma_update(None, "user_version", SCHEMA_VERSION)?,
        SCHEMA_VERSION => {}
        found => {
            return Err(RequestLogError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
    }
    Ok(())
}

/// Records per INSERT statement, and so between yields of the core (~25 µs of work): a batch is up
/// to 256 records, a few ms of CPU, which would otherwise hold the core for a whole scheduler slice
/// while a request thread waits (`telemetry::background`'s docs).
///
/// Several rows per statement, not one: each execution of a statement opens a cursor on the table
/// and on each of its four indexes, seeks every index from its root and closes them again; in one
/// statement of several rows SQLite keeps them open, and an index whose keys only grow (`seq`,
/// `received_at`, and `id` for Sluice's UUIDv7 ids) takes the next row on the page it is already on.
/// Measured with callgrind on the writer (`bench/instructions.sh`, docs/BENCHMARKS.md session 17).
/// Four keeps the pieces between yields as they were with one row per statement and a yield every
/// four records.
const ROWS_PER_INSERT: usize = 4;

/// Parameters per row of [`INSERT`].
const COLUMNS_PER_ROW: usize = 22;

/// [`INSERT`] with [`ROWS_PER_INSERT`] rows: `?` after `?22` numbers on from 23.
static INSERT_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let row = format!("({})", ["?"; COLUMNS_PER_ROW].join(", "));
    let mut sql = INSERT.to_owned();
    for _ in 1..ROWS_PER_INSERT {
        sql.push_str(", ");
        sql.push_str(&row);
    }
    sql
});

/// Inserts `records` in one transaction, in their order: all or none. Statements of
/// [`ROWS_PER_INSERT`] rows (the last few records one at a time), with the core yielded after each
/// (readers are not blocked meanwhile: WAL).
pub(crate) fn insert_batch(
    conn: &mut Connection,
    records: &[RequestRecord],
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut pacer = crate::telemetry::background::Pacer::new(1);
        let mut json = Vec::with_capacity(256);
        let mut chunks = records.chunks_exact(ROWS_PER_INSERT);
        if chunks.len() > 0 {
            let mut rows = tx.prepare_cached(&INSERT_ROWS)?;
            for chunk in &mut chunks {
                for (i, r) in chunk.iter().enumerate() {
                    bind_record(&mut rows, i * COLUMNS_PER_ROW, r, &mut json)?;
                }
                rows.raw_execute()?;
                pacer.tick();
            }
        }
        if !chunks.remainder().is_empty() {
            let mut one = tx.prepare_cached(INSERT)?;
            for r in chunks.remainder() {
                bind_record(&mut one, 0, r, &mut json)?;
                one.raw_execute()?;
            }
        }
    }
    tx.commit()
}

/// Binds `r` to the 22 parameters of one row of [`INSERT`] that follow the first `before`
/// parameters. `json` is scratch space for the timeline (SQLite copies bound text, so it is reused).
fn bind_record(
    stmt: &mut rusqlite::Statement<'_>,
    before: usize,
    r: &RequestRecord,
    json: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    json.clear();
    serde_json::to_writer(&mut *json, &timeline::Stored(&r.timeline))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    // serde_json writes UTF-8: bound as text straight from the buffer, no String or UTF-8 check.
    let timeline = ToSqlOutput::Borrowed(ValueRef::Text(json));
    let values: [&dyn rusqlite::ToSql; COLUMNS_PER_ROW] = [
        &r.id,
        &r.received_at,
        &r.trace_id,
        &r.key_id,
        &r.route,
        &r.method,
        &r.model,
        &r.provider,
        &r.status,
        &r.stream,
        &finite(Some(r.latency_ms)),
        &finite(r.ttft_ms),
        &finite(r.upstream_ms),
        &saturating_i64(r.input_tokens),
        &saturating_i64(r.output_tokens),
        &r.cost_usd,
        &r.error_kind,
        &r.cache,
        &r.error_message,
        &r.request_body,
        &r.response_body,
        &timeline,
    ];
    for (i, value) in values.into_iter().enumerate() {
        stmt.raw_bind_parameter(before + i + 1, value)?;
    }
    Ok(())
}

/// Copies what the WAL holds into the database file (PASSIVE: it neither waits for nor blocks a
/// reader) so the WAL is reused from its start by the next batch: after every batch, each checkpoint
/// copies only that batch's pages.
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// Errors worth retrying the same batch for: another connection holds the lock, or the disk is
/// (perhaps briefly) full or failing. Anything else is about the data.
pub(crate) fn is_transient(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
        )
    )
}

/// Records matching `filter`, newest first.
pub(crate) fn query(
    conn: &Connection,
    filter: &RequestFilter,
) -> rusqlite::Result<Vec<RequestSummary>> {
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM requests");
    let mut params: Vec<Value> = Vec::with_capacity(4);
    // Only the conditions given, so SQLite can pick the matching index (`model = ?1 OR ?1 IS NULL`
    // would defeat it). At most eight distinct statements, each cached.
    let mut conditions = Vec::with_capacity(3);
    if let Some(model) = &filter.model {
        conditions.push("model = ?");
        params.push(Value::Text(model.clone()));
    }
    if let Some(status) = filter.status {
        conditions.push("status = ?");
        params.push(Value::Integer(i64::from(status)));
    }
    if let Some(since) = filter.since_ms {
        conditions.push("received_at >= ?");
        params.push(Value::Integer(since));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY received_at DESC, seq DESC LIMIT ?");
    params.push(Value::Integer(i64::from(filter.effective_limit())));
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), summary_from_row)?;
    rows.collect()
}

/// The newest record with this id, with bodies and timeline.
pub(crate) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<RequestRecord>> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS}, {DETAIL_COLUMNS} FROM requests WHERE id = ?1 \
         ORDER BY seq DESC LIMIT 1"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    stmt.query_row([id], record_from_row).optional()
}

/// How many records the table holds.
#[cfg(test)]
pub(crate) fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM requests", [], |row| row.get(0))
}

/// What retention keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Delete records received longer ago than this.
    pub max_age: Duration,
    /// Keep at most this many, the most recently logged.
    pub max_rows: u64,
}

/// The result of one retention step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetentionStep {
    /// Rows deleted.
    pub deleted: usize,
    /// True if a limit was hit and another step should follow soon.
    pub more: bool,
}

/// Rows one retention statement deletes; the core is yielded between statements. Offline
/// (`bench/reqlog_bursts.py`) a step's slowest statement of 16 rows was 0.1–0.15 ms; pieces of 4
/// made it about a third shorter for about a third more CPU per row, and either is far below the
/// step's commit and checkpoint (~0.5 and ~0.8 ms), the longest runs the writer has anyway.
const ROWS_PER_DELETE: u32 = 16;

const DELETE_EXPIRED: &str = "DELETE FROM requests WHERE seq IN \
    (SELECT seq FROM requests WHERE received_at < ?1 LIMIT ?2)";

/// `seq` grows by one per insert, so the newest `max_rows` records have `seq > max - max_rows`
/// (fewer if some of them were deleted by age): an indexed range delete, no count(*).
const DELETE_SURPLUS: &str = "DELETE FROM requests WHERE seq IN \
    (SELECT seq FROM requests WHERE seq <= ?1 ORDER BY seq LIMIT ?2)";

/// Deletes at most `chunk` expired and at most `chunk` surplus rows in one transaction, with
/// statements of [`ROWS_PER_DELETE`] rows and the core yielded between them. The writer runs a step
/// after every batch, so `chunk` bounds how long inserts wait and how large the commit is; a step that
/// hit a limit says so (`more`). A step with nothing to delete costs two index lookups and no
/// transaction.
pub(crate) fn apply_retention(
    conn: &mut Connection,
    retention: &Retention,
    now_ms: i64,
    chunk: u32,
) -> rusqlite::Result<RetentionStep> {
    let max_age_ms = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(max_age_ms);
    let max_rows = i64::try_from(retention.max_rows).unwrap_or(i64::MAX);
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT min(received_at) FROM requests")?
        .query_row([], |row| row.get(0))?;
    let expired = oldest.is_some_and(|oldest| oldest < cutoff);
    if !expired && max_seq(conn)?.is_none_or(|max_seq| max_seq <= max_rows) {
        return Ok(RetentionStep {
            deleted: 0,
            more: false,
        });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let by_age = if expired {
        delete_in_pieces(&tx, DELETE_EXPIRED, cutoff, chunk)?
    } else {
        0
    };
    // After the age rule: what it deleted counts towards the row limit.
    let by_rows = match max_seq(&tx)? {
        Some(max_seq) if max_seq > max_rows => {
            delete_in_pieces(&tx, DELETE_SURPLUS, max_seq - max_rows, chunk)?
        }
        _ => 0,
    };
    tx.commit()?;
    Ok(RetentionStep {
        deleted: usize::try_from(u64::from(by_age) + u64::from(by_rows)).unwrap_or(usize::MAX),
        more: by_age >= chunk || by_rows >= chunk,
    })
}

fn max_seq(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT max(seq) FROM requests")?
        .query_row([], |row| row.get(0))
}

/// Runs `sql` (a delete taking a bound and a row limit) until it has deleted `chunk` rows or finds
/// fewer than it asked for; returns how many it deleted.
///
/// The parameters are bound once per step, not per statement: bound anew each time, the delete was
/// compiled again before every execution (callgrind: one `sqlite3Reprepare` per execution, ~80,000
/// instructions, more than deleting the rows; SQLite as `libsqlite3-sys` builds it has
/// `SQLITE_ENABLE_STAT4`, which lets bound values of range conditions change the plan). Bindings
/// outlive a reset, so the same statement runs again as it is; only a last, shorter piece binds its
/// limit anew.
fn delete_in_pieces(conn: &Connection, sql: &str, bound: i64, chunk: u32) -> rusqlite::Result<u32> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut pacer = crate::telemetry::background::Pacer::new(1);
    let mut limit = ROWS_PER_DELETE.min(chunk);
    stmt.raw_bind_parameter(1, bound)?;
    stmt.raw_bind_parameter(2, limit)?;
    let mut deleted: u32 = 0;
    while deleted < chunk {
        if chunk - deleted < limit {
            limit = chunk - deleted;
            stmt.raw_bind_parameter(2, limit)?;
        }
        let n = u32::try_from(stmt.raw_execute()?).unwrap_or(limit);
        deleted += n;
        if n < limit {
            break;
        }
        pacer.tick();
    }
    Ok(deleted)
}

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<RequestSummary> {
    Ok(RequestSummary {
        id: row.get(0)?,
        received_at: row.get(1)?,
        trace_id: row.get(2)?,
        key_id: row.get(3)?,
        route: row.get(4)?,
        method: row.get(5)?,
        model: row.get(6)?,
        provider: row.get(7)?,
        status: row.get(8)?,
        stream: row.get(9)?,
        latency_ms: row.get::<_, Option<f64>>(10)?.unwrap_or(f64::NAN),
        ttft_ms: row.get(11)?,
        upstream_ms: row.get(12)?,
        input_tokens: unsigned(row.get(13)?),
        output_tokens: unsigned(row.get(14)?),
        cost_usd: row.get(15)?,
        error_kind: row.get(16)?,
        cache: row.get(17)?,
    })
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<RequestRecord> {
    let s = summary_from_row(row)?;
    let timeline: String = row.get(21)?;
    let timeline = timeline::parse(&timeline)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(21, Type::Text, Box::new(e)))?;
    Ok(RequestRecord {
        id: s.id,
        received_at: s.received_at,
        trace_id: s.trace_id,
        key_id: s.key_id,
        route: s.route,
        method: s.method,
        model: s.model,
        provider: s.provider,
        status: s.status,
        stream: s.stream,
        latency_ms: s.latency_ms,
        ttft_ms: s.ttft_ms,
        upstream_ms: s.upstream_ms,
        input_tokens: s.input_tokens,
        output_tokens: s.output_tokens,
        cost_usd: s.cost_usd,
        error_kind: s.error_kind,
        error_message: row.get(18)?,
        cache: s.cache,
        request_body: row.get(19)?,
        response_body: row.get(20)?,
        timeline,
    })
}

/// SQLite stores NaN as NULL; say so explicitly for every non-finite value.
fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// SQLite integers are signed; token counts beyond `i64::MAX` do not occur, so saturate.
fn saturating_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn unsigned(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request_log::TimelineEvent;

    fn memory() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn
    }

    fn rec(id: &str, received_at: i64) -> RequestRecord {
        RequestRecord {
            id: id.to_owned(),
            received_at,
            route: "/v1/chat/completions".to_owned(),
            method: "POST".to_owned(),
            status: 200,
            ..RequestRecord::default()
        }
    }

    fn ids(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT id FROM requests ORDER BY seq")
            .unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    const DAY_MS: i64 = 24 * 3600 * 1000;

    #[test]
    fn retention_by_age() {
        let mut conn = memory();
        let now = 100 * DAY_MS;
        let batch: Vec<_> = [(9, "9d"), (8, "8d"), (6, "6d"), (0, "now")]
            .iter()
            .map(|(days, id)| rec(id, now - days * DAY_MS))
            .collect();
        insert_batch(&mut conn, &batch).unwrap();
        let retention = Retention {
            max_age: Duration::from_hours(7 * 24),
            max_rows: 1000,
        };
        let step = apply_retention(&mut conn, &retention, now, 100).unwrap();
        assert_eq!(
            step,
            RetentionStep {
                deleted: 2,
                more: false
            }
        );
        assert_eq!(ids(&conn), ["6d", "now"]);
    }

    #[test]
    fn retention_by_row_count_keeps_the_newest_in_chunks() {
        let mut conn = memory();
        let now = 100 * DAY_MS;
        let batch: Vec<_> = (0..20).map(|i| rec(&format!("r{i:02}"), now)).collect();
        insert_batch(&mut conn, &batch).unwrap();
        let retention = Retention {
            max_age: Duration::from_hours(1),
            max_rows: 5,
        };
        // 15 surplus rows in chunks of 4: four steps, the last one short.
        let mut steps = Vec::new();
        loop {
            let step = apply_retention(&mut conn, &retention, now, 4).unwrap();
            steps.push(step.deleted);
            if !step.more {
                break;
            }
        }
        assert_eq!(steps, [4, 4, 4, 3]);
        assert_eq!(ids(&conn), ["r15", "r16", "r17", "r18", "r19"]);
        // Nothing more to do.
        assert_eq!(
            apply_retention(&mut conn, &retention, now, 4)
                .unwrap()
                .deleted,
            0
        );
        // New rows keep the window moving.
        insert_batch(&mut conn, &[rec("r20", now), rec("r21", now)]).unwrap();
        apply_retention(&mut conn, &retention, now, 4).unwrap();
        assert_eq!(ids(&conn), ["r17", "r18", "r19", "r20", "r21"]);
    }

    #[test]
    fn a_retention_step_deletes_in_pieces_up_to_its_chunk() {
        let mut conn = memory();
        let now = 100 * DAY_MS;
        // 20 expired rows, then 60 current ones of which 50 are surplus (max_rows 10).
        let old: Vec<_> = (0..20)
            .map(|i| rec(&format!("old{i:02}"), now - 2 * DAY_MS))
            .collect();
        let new: Vec<_> = (0..60).map(|i| rec(&format!("new{i:02}"), now)).collect();
        insert_batch(&mut conn, &old).unwrap();
        insert_batch(&mut conn, &new).unwrap();
        let retention = Retention {
            max_age: Duration::from_hours(24),
            max_rows: 10,
        };
        // Chunks of 40: the 20 expired rows (a piece of 16, then one that finds only 4), then
        // 40 of the 50 surplus rows left (pieces of 16, 16 and 8), which hits the chunk: more to do.
        let first = apply_retention(&mut conn, &retention, now, 40).unwrap();
        assert_eq!(
            first,
            RetentionStep {
                deleted: 60,
                more: true
            }
        );
        assert_eq!(count(&conn).unwrap(), 20);
        let second = apply_retention(&mut conn, &retention, now, 40).unwrap();
        assert_eq!(
            second,
            RetentionStep {
                deleted: 10,
                more: false
            }
        );
        let kept = ids(&conn);
        assert_eq!(kept.len(), 10);
        assert_eq!(kept.first().map(String::as_str), Some("new50"));
    }

    #[test]
    fn a_retention_step_compiles_its_delete_once_not_per_piece() {
        let mut conn = memory();
        let now = 100 * DAY_MS;
        let old: Vec<_> = (0..100)
            .map(|i| rec(&format!("old{i:03}"), now - 2 * DAY_MS))
            .collect();
        insert_batch(&mut conn, &old).unwrap();
        let retention = Retention {
            max_age: Duration::from_hours(24),
            max_rows: 1000,
        };
        // Four pieces of 16.
        let step = apply_retention(&mut conn, &retention, now, 64).unwrap();
        assert_eq!(step.deleted, 64);
        let reprepared = conn
            .prepare_cached(DELETE_EXPIRED)
            .unwrap()
            .get_status(rusqlite::StatementStatus::RePrepare);
        // Binding the bound once per step costs at most one recompilation, not one per piece.
        assert!(reprepared <= 1, "{reprepared} recompilations for one step");
    }

    /// A record whose every column differs from record `i - 1`'s and `i + 1`'s, so a value bound to
    /// the wrong row or the wrong parameter shows.
    fn distinct(i: u32) -> RequestRecord {
        let n = f64::from(i);
        RequestRecord {
            id: format!("r{i}"),
            received_at: 1000 + i64::from(i),
            trace_id: Some(format!("{i:032x}")),
            key_id: i.is_multiple_of(2).then(|| format!("key-{i}")),
            route: format!("/v1/route-{i}"),
            method: ["POST", "GET"][i as usize % 2].to_owned(),
            model: Some(format!("model-{i}")),
            provider: Some(format!("provider-{i}")),
            status: 200 + u16::try_from(i).unwrap(),
            stream: i % 2 == 1,
            latency_ms: 1.5 + n,
            ttft_ms: Some(0.25 + n),
            upstream_ms: (!i.is_multiple_of(3)).then_some(0.5 + n),
            input_tokens: Some(u64::from(i) * 10),
            output_tokens: Some(u64::from(i) * 10 + 1),
            cost_usd: Some(format!("0.{i:06}")),
            error_kind: (i % 2 == 1).then(|| format!("kind-{i}")),
            error_message: Some(format!("message {i}")),
            cache: Some(format!("cache-{i}")),
            request_body: Some(format!("{{\"request\":{i}}}")),
            response_body: (i % 3 == 1).then(|| format!("{{\"response\":{i}}}")),
            timeline: vec![
                TimelineEvent::new(0.0, "received"),
                TimelineEvent::with_detail(n, "done", "ok"),
            ],
        }
    }

    #[test]
    fn batches_of_every_size_store_each_record_whole_and_in_order() {
        // Sizes around the rows per statement: remainders only, whole statements, and both.
        for size in 0..=(2 * ROWS_PER_INSERT + 1) {
            let mut conn = memory();
            let batch: Vec<_> = (0..u32::try_from(size).unwrap()).map(distinct).collect();
            insert_batch(&mut conn, &batch).unwrap();
            let expected: Vec<_> = batch.iter().map(|r| r.id.clone()).collect();
            assert_eq!(ids(&conn), expected, "batch of {size}");
            for r in &batch {
                assert_eq!(
                    get(&conn, &r.id).unwrap().as_ref(),
                    Some(r),
                    "batch of {size}"
                );
            }
        }
    }

    #[test]
    fn a_failing_record_stores_none_of_its_batch() {
        // A failure inside a statement that ends the statement (ABORT) or the whole transaction
        // (ROLLBACK, as `INSERT OR ROLLBACK` does on a constraint), from a trigger the real table
        // does not have.
        for resolution in ["ABORT", "ROLLBACK"] {
            let mut conn = memory();
            insert_batch(&mut conn, &[rec("before", 1)]).unwrap();
            conn.execute_batch(&format!(
                "CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.id = 'bad' \
                 BEGIN SELECT RAISE({resolution}, 'refused'); END;"
            ))
            .unwrap();
            let mut batch: Vec<_> = (0..u32::try_from(ROWS_PER_INSERT + 2).unwrap())
                .map(distinct)
                .collect();
            batch[1].id = "bad".to_owned();
            assert!(insert_batch(&mut conn, &batch).is_err(), "{resolution}");
            assert_eq!(ids(&conn), ["before"], "{resolution}");
            // The connection is usable again, outside any transaction.
            assert!(conn.is_autocommit(), "{resolution}");
            insert_batch(&mut conn, &[rec("after", 2)]).unwrap();
            assert_eq!(ids(&conn), ["before", "after"], "{resolution}");
        }
    }

    #[test]
    fn non_finite_and_huge_numbers_are_stored() {
        let mut conn = memory();
        let mut r = rec("x", 1);
        r.latency_ms = f64::NAN;
        r.ttft_ms = Some(f64::INFINITY);
        r.input_tokens = Some(u64::MAX);
        r.timeline = vec![TimelineEvent::new(f64::NAN, "received")];
        insert_batch(&mut conn, &[r]).unwrap();
        let back = get(&conn, "x").unwrap().unwrap();
        assert!(back.latency_ms.is_nan());
        assert_eq!(back.ttft_ms, None);
        assert_eq!(back.input_tokens, Some(i64::MAX as u64));
        assert!(back.timeline[0].at_ms.is_nan());
    }

    #[test]
    fn duplicate_ids_return_the_newest() {
        let mut conn = memory();
        let mut second = rec("dup", 2);
        second.status = 500;
        insert_batch(&mut conn, &[rec("dup", 1), second]).unwrap();
        assert_eq!(get(&conn, "dup").unwrap().unwrap().status, 500);
        assert_eq!(get(&conn, "missing").unwrap(), None);
    }

    #[test]
    fn schema_from_the_future_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 3).unwrap();
        assert!(matches!(
            migrate(&conn),
            Err(RequestLogError::SchemaTooNew {
                found: 3,
                supported: 2
            })
        ));
    }

    #[test]
    fn a_schema_1_file_is_taken_over_and_both_timeline_forms_are_read() {
        let mut conn = Connection::open_in_memory().unwrap();
        // A file as schema 1 left it: the same table, timelines as objects.
        conn.execute_batch(&SCHEMA.replace("user_version = 2", "user_version = 1"))
            .unwrap();
        let user_version = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "user_version", |row| row.get(0))
                .unwrap()
        };
        assert_eq!(user_version(&conn), 1);
        conn.execute(
            "INSERT INTO requests (id, received_at, route, method, status, stream, timeline) \
             VALUES ('old', 1, '/v1/chat/completions', 'POST', 200, 0, ?1)",
            [r#"[{"at_ms":0.0,"name":"received","detail":null},{"at_ms":2.5,"name":"done","detail":"timeout"}]"#],
        )
        .unwrap();
        migrate(&conn).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        let mut new = rec("new", 2);
        new.timeline = vec![
            TimelineEvent::new(0.0, "received"),
            TimelineEvent::with_detail(2.5, "done", "timeout"),
        ];
        insert_batch(&mut conn, &[new]).unwrap();
        let stored: String = conn
            .query_row(
                "SELECT timeline FROM requests WHERE id = 'new'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(stored, r#"[[0,"received"],[2500,"done","timeout"]]"#);
        let old = get(&conn, "old").unwrap().unwrap().timeline;
        assert_eq!(old, get(&conn, "new").unwrap().unwrap().timeline);
        assert_eq!(old[1], TimelineEvent::with_detail(2.5, "done", "timeout"));
        // Taking it over twice is a no-op.
        migrate(&conn).unwrap();
    }

    #[test]
    fn listings_use_the_indexes() {
        let conn = memory();
        let plan = |filter: &RequestFilter| {
            let mut sql = format!("EXPLAIN QUERY PLAN SELECT {SUMMARY_COLUMNS} FROM requests");
            if filter.model.is_some() {
                sql.push_str(" WHERE model = 'm'");
            } else if filter.status.is_some() {
                sql.push_str(" WHERE status = 500");
            }
            sql.push_str(" ORDER BY received_at DESC, seq DESC LIMIT 50");
            let mut stmt = conn.prepare(&sql).unwrap();
            let rows: Vec<String> = stmt
                .query_map([], |row| row.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            rows.join("; ")
        };
        let all = plan(&RequestFilter::default());
        assert!(all.contains("requests_received_at"), "{all}");
        assert!(!all.contains("TEMP B-TREE"), "{all}");
        let by_model = plan(&RequestFilter {
            model: Some("m".to_owned()),
            ..RequestFilter::default()
        });
        assert!(by_model.contains("requests_model"), "{by_model}");
        assert!(!by_model.contains("TEMP B-TREE"), "{by_model}");
        let by_status = plan(&RequestFilter {
            status: Some(500),
            ..RequestFilter::default()
        });
        assert!(by_status.contains("requests_status"), "{by_status}");
    }
}
