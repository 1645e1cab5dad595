//! SQLite storage: schema and pragmas, batched inserts, listings and lookups, retention. Plain functions
//! over a `rusqlite::Connection`; which thread calls them is decided in `mod.rs` and `writer.rs`.
//!
//! The records are in one table, `requests`, with three indexes; `requests_count` holds how many
//! there are (for retention's row limit). The table's key `seq` (the rowid) is the arrival time: the
//! millisecond a request was received above [`SEQ_LOW_BITS`] bits that tell apart the requests of one
//! millisecond ([`SeqSource`]). So the table itself is in arrival order, and what needed an index of
//! its own before is a range of keys: "newest first" and `since=` listings, "older than the
//! retention age", "the oldest surplus rows". The `model` and `requests_errors` indexes hold the key
//! as well, so a filtered listing reads them newest first. `requests_errors` holds only the records
//! whose status is an error ([`ERROR_STATUS`] or above): those are what a status filter is for, and
//! most records are not errors, so most inserts skip that B-tree (a listing of a non-error status
//! reads the table newest first until it has its `limit` rows, quick while such rows are common).
//! Lookups by id: Sluice's own request ids are UUIDv7, whose timestamp is the arrival millisecond
//! (give or take [`ID_TIME_SLACK_MS`]), so such a record is found by scanning the keys of those few
//! milliseconds; only records whose id says nothing about their arrival (chosen by the client) go
//! into `requests_id`, a partial index (`id_indexed`). Each index is an insert into another B-tree
//! per record on the writer thread (measured: docs/BENCHMARKS.md, sessions 19 and 22), which is why
//! there are no more of them.
//!
//! Bodies and the timeline (JSON, in the form `timeline.rs` describes) are the last columns, so
//! listings do not read their overflow pages.
//!
//! Schema versions (`PRAGMA user_version`): 1, timelines as JSON objects; 2, the same table with
//! timelines as compact arrays; 3, keyed by arrival, three indexes; 4, the status index holds
//! only errors. A version-1 or -2 file is rebuilt as version 4 when it is opened (one transaction:
//! its rows copied in arrival order, every one into the id index; the reader understands both
//! timeline forms); a version-3 file has its status index replaced. A build that knows only older
//! versions then refuses the file instead of misreading it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::{ToSqlOutput, Type, Value, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior};

use super::RequestLogError;
use super::record::{RequestFilter, RequestRecord, RequestSummary};
use super::timeline;

/// The schema this build writes; stored in `PRAGMA user_version`.
pub(crate) const SCHEMA_VERSION: i64 = 4;

/// The lowest status `requests_errors` holds.
const ERROR_STATUS: u16 = 400;

/// `requests_errors`' condition, written as a literal into [`INDEXES`] and into a listing's
/// statement whose status filter is an error: SQLite uses a partial index only for a query whose
/// terms include the index's own (a `?` it cannot see through).
const ERROR_STATUS_TERM: &str = "status >= 400";

/// The table of schemas 3 and 4, under the name `{table}`.
const TABLE: &str = "CREATE TABLE IF NOT EXISTS {table} (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL,
    id_indexed     INTEGER NOT NULL,
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
);";

/// The indexes of schema 4. Each holds the key after its column, so `model = ?` and `status = ?`
/// read newest first (and `since=` is a key range) without sorting. `requests_errors` replaced
/// schema 3's `requests_status` (every record): sparing most records that insert saves ~3,600
/// instructions each on the writer (`bench/reqlog_index_cost.py`, docs/BENCHMARKS.md session 22).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS requests_model ON requests (model);
CREATE INDEX IF NOT EXISTS requests_errors ON requests (status) WHERE status >= 400;
CREATE INDEX IF NOT EXISTS requests_id ON requests (id) WHERE id_indexed;
";

/// How many rows `requests` holds, for the row limit of retention (`count(*)` reads a whole index):
/// one row, changed in the transaction that inserts or deletes, and counted afresh when the writer
/// opens the file.
const COUNT_TABLE: &str = "
CREATE TABLE IF NOT EXISTS requests_count (n INTEGER NOT NULL);
INSERT INTO requests_count (n) SELECT count(*) FROM requests
    WHERE NOT EXISTS (SELECT 1 FROM requests_count);
";

/// The columns of schema 1 and 2 that schemas 3 and 4 keep, in both tables' order.
const KEPT_COLUMNS: &str = "id, received_at, trace_id, key_id, route, method, model, provider, \
    status, stream, latency_ms, ttft_ms, upstream_ms, input_tokens, output_tokens, cost_usd, \
    error_kind, cache, error_message, request_body, response_body, timeline";

/// Bits of `seq` below the arrival millisecond: a counter, so up to 2^20 requests of one millisecond
/// get keys of their own.
const SEQ_LOW_BITS: u32 = 20;

/// The mask of those bits.
const SEQ_LOW_MASK: i64 = (1 << SEQ_LOW_BITS) - 1;

/// The latest arrival millisecond a key can hold (the year 2248); later ones, and earlier than 1970,
/// are clamped.
const MAX_SEQ_MS: i64 = (1 << (63 - SEQ_LOW_BITS)) - 1;

/// The smallest key of arrival millisecond `ms` (clamped to what a key can hold).
fn seq_floor(ms: i64) -> i64 {
    ms.clamp(0, MAX_SEQ_MS) << SEQ_LOW_BITS
}

/// The largest key of arrival millisecond `ms`.
fn seq_ceil(ms: i64) -> i64 {
    seq_floor(ms) | SEQ_LOW_MASK
}

/// Hands out keys: a record's arrival millisecond and, below it, the next value of a counter (modulo
/// 2^20). Two records of one millisecond get the same key only if 2^20 keys were handed out between
/// them, or if the table already holds a key from an earlier process whose clock was ahead; an insert
/// that meets a taken key fails, and the writer then stores its batch one record at a time with
/// [`insert_one`], which takes a free key of that millisecond.
#[derive(Debug)]
pub(crate) struct SeqSource {
    next: u32,
}

impl SeqSource {
    /// A source whose counter starts at `next`.
    pub(crate) fn starting_at(next: u32) -> Self {
        Self { next }
    }

    /// A source whose counter starts at an arbitrary point (the clock's nanoseconds), so a process that
    /// starts again in a millisecond an earlier one used, after a clock step back, seldom meets its
    /// keys.
    pub(crate) fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self::starting_at(nanos)
    }

    fn key(&mut self, received_at: i64) -> i64 {
        let low = i64::from(self.next) & SEQ_LOW_MASK;
        self.next = self.next.wrapping_add(1);
        seq_floor(received_at) | low
    }
}

/// How far a UUIDv7 request id's timestamp may be from its record's arrival time for a lookup to find
/// the record by scanning arrival times instead of `requests_id`. Sluice makes the id (`app.rs`) and
/// reads the clock for the arrival time (`middleware::observe`) in the same synchronous call, so they
/// differ by less than a millisecond unless the thread is descheduled in between; a record outside the
/// window, or whose id is not a UUIDv7 at all, goes into the index. A lookup scans the records of
/// twice this span, ~400 at 2,000 requests/s.
const ID_TIME_SLACK_MS: i64 = 100;

/// The unix milliseconds of a UUIDv7 id's timestamp; `None` for any other id.
fn uuid_v7_ms(id: &str) -> Option<i64> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version() != Some(uuid::Version::SortRand) {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    let secs = i64::try_from(secs).ok()?;
    secs.checked_mul(1000)?
        .checked_add(i64::from(nanos / 1_000_000))
}

/// Whether a record needs `requests_id` to be found by its id.
fn needs_id_index(id: &str, received_at: i64) -> bool {
    uuid_v7_ms(id).is_none_or(|ms| received_at.abs_diff(ms) > ID_TIME_SLACK_MS.unsigned_abs())
}

const INSERT: &str = "INSERT OR ROLLBACK INTO requests (seq, id, id_indexed, received_at, trace_id,
    key_id, route, method, model, provider, status, stream, latency_ms, ttft_ms, upstream_ms,
    input_tokens, output_tokens, cost_usd, error_kind, cache, error_message, request_body,
    response_body, timeline)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20,
    ?21, ?22, ?23, ?24)";

/// [`INSERT`] one record under a free key of its millisecond: one past the largest key of `?1`'s
/// millisecond (`?1` being the first key of that millisecond), or the first. Used after a batch met a
/// taken key (a rare case, see [`SeqSource`]); it costs a key lookup per record.
static INSERT_FREE_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    INSERT.replacen(
        "VALUES (?1,",
        &format!(
            "VALUES ((SELECT coalesce(max(seq) + 1, ?1) FROM requests \
             WHERE seq BETWEEN ?1 AND ?1 + {SEQ_LOW_MASK}),"
        ),
        1,
    )
});

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
    // Counted afresh: whatever was done to the file while no writer had it open.
    conn.execute(
        "UPDATE requests_count SET n = (SELECT count(*) FROM requests)",
        [],
    )
    .map_err(open_error)?;
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

/// Opens a connection for the checkpoint thread (`checkpointer.rs`): read-write, since a checkpoint
/// writes the database file; the writer has already set the file up. No busy timeout: a PASSIVE
/// checkpoint never waits for a lock, it copies what it can.
pub(crate) fn open_checkpoint_connection(path: &Path) -> Result<Connection, RequestLogError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).map_err(|source| RequestLogError::Open {
        path: path.to_owned(),
        source,
    })
}

fn migrate(conn: &Connection) -> Result<(), RequestLogError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let sql = match version {
        0 => format!(
            "{}\n{INDEXES}\n{COUNT_TABLE}",
            TABLE.replace("{table}", "requests")
        ),
        // Schemas 1 and 2 share a table: rebuilt keyed by arrival. Rows of one millisecond keep their
        // order; each goes into the id index, whatever its id, as nothing says it arrived when its id
        // says.
        1 | 2 => format!(
            "{table}
            INSERT INTO requests_v3 (seq, id_indexed, {KEPT_COLUMNS})
                SELECT (min(max(received_at, 0), {MAX_SEQ_MS}) << {SEQ_LOW_BITS})
                       + row_number() OVER
                           (PARTITION BY min(max(received_at, 0), {MAX_SEQ_MS}) ORDER BY seq)
                       - 1,
                       1, {KEPT_COLUMNS}
                FROM requests;
            DROP TABLE requests;
            ALTER TABLE requests_v3 RENAME TO requests;
            {INDEXES}
            {COUNT_TABLE}",
            table = TABLE.replace("{table}", "requests_v3"),
        ),
        // Schema 3's table as it is; its status index (every record) gives way to the errors' one.
        3 => format!("DROP INDEX IF EXISTS requests_status;\n{INDEXES}"),
        SCHEMA_VERSION => return Ok(()),
        found => {
            return Err(RequestLogError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            });
        }
    };
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&sql)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    if version > 0 {
        tracing::info!(
            from = version,
            to = SCHEMA_VERSION,
            "request log: schema upgraded"
        );
    }
    Ok(())
}

/// Records per INSERT statement, and so between yields of the core (~25 µs of work): a batch is up
/// to 256 records, a few ms of CPU, which would otherwise hold the core for a whole scheduler slice
/// while a request thread waits (`telemetry::background`'s docs).
///
/// Several rows per statement, not one: each execution of a statement opens a cursor on the table
/// and on each of its indexes, seeks every index from its root and closes them again; in one
/// statement of several rows SQLite keeps them open, and a B-tree whose keys only grow (the table's
/// arrival keys, mostly) takes the next row on the page it is already on. Measured with callgrind on
/// the writer (`bench/instructions.sh`, docs/BENCHMARKS.md session 17). Four keeps the pieces
/// between yields as they were with one row per statement and a yield every four records.
const ROWS_PER_INSERT: usize = 4;

/// Parameters per row of [`INSERT`].
const COLUMNS_PER_ROW: usize = 24;

/// [`INSERT`] with [`ROWS_PER_INSERT`] rows: `?` after `?24` numbers on from 25.
static INSERT_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let row = format!("({})", ["?"; COLUMNS_PER_ROW].join(", "));
    let mut sql = INSERT.to_owned();
    for _ in 1..ROWS_PER_INSERT {
        sql.push_str(", ");
        sql.push_str(&row);
    }
    sql
});

/// Inserts `records` in one transaction, in their order, under keys from `seqs`: all or none.
/// Statements of [`ROWS_PER_INSERT`] rows (the last few records one at a time), with the core
/// yielded after each (readers are not blocked meanwhile: WAL). A key already taken fails the whole
/// batch with a constraint error (`SQLITE_CONSTRAINT_PRIMARYKEY`); see [`insert_one`].
pub(crate) fn insert_batch(
    conn: &mut Connection,
    seqs: &mut SeqSource,
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
                    let seq = seqs.key(r.received_at);
                    bind_record(&mut rows, i * COLUMNS_PER_ROW, seq, r, &mut json)?;
                }
                rows.raw_execute()?;
                pacer.tick();
            }
        }
        if !chunks.remainder().is_empty() {
            let mut one = tx.prepare_cached(INSERT)?;
            for r in chunks.remainder() {
                bind_record(&mut one, 0, seqs.key(r.received_at), r, &mut json)?;
                one.raw_execute()?;
            }
        }
        add_to_count(&tx, i64::try_from(records.len()).unwrap_or(i64::MAX))?;
    }
    tx.commit()
}

/// Inserts one record in a transaction of its own, under a free key of its arrival millisecond
/// ([`INSERT_FREE_KEY`]): how the writer stores a batch that [`insert_batch`] refused, record by
/// record, so that one record the database refuses (or a taken key) costs only that record.
pub(crate) fn insert_one(conn: &mut Connection, record: &RequestRecord) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(&INSERT_FREE_KEY)?;
        bind_record(
            &mut stmt,
            0,
            seq_floor(record.received_at),
            record,
            &mut Vec::new(),
        )?;
        stmt.raw_execute()?;
        add_to_count(&tx, 1)?;
    }
    tx.commit()
}

/// Binds `r`, under key `seq`, to the 24 parameters of one row of [`INSERT`] that follow the first
/// `before` parameters. `json` is scratch space for the timeline (SQLite copies bound text, so it is
/// reused).
fn bind_record(
    stmt: &mut rusqlite::Statement<'_>,
    before: usize,
    seq: i64,
    r: &RequestRecord,
    json: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    json.clear();
    serde_json::to_writer(&mut *json, &timeline::Stored(&r.timeline))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    // serde_json writes UTF-8: bound as text straight from the buffer, no String or UTF-8 check.
    let timeline = ToSqlOutput::Borrowed(ValueRef::Text(json));
    let values: [&dyn rusqlite::ToSql; COLUMNS_PER_ROW] = [
        &seq,
        &r.id,
        &needs_id_index(&r.id, r.received_at),
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
    let (sql, params) = listing(filter);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), summary_from_row)?;
    rows.collect()
}

/// The statement and parameters of a listing.
fn listing(filter: &RequestFilter) -> (String, Vec<Value>) {
    let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM requests");
    let mut params: Vec<Value> = Vec::with_capacity(4);
    // Only the conditions given, so SQLite can pick the matching index (`model = ?1 OR ?1 IS NULL`
    // would defeat it). At most twelve distinct statements, each cached.
    let mut conditions = Vec::with_capacity(3);
    if let Some(model) = &filter.model {
        conditions.push("model = ?");
        params.push(Value::Text(model.clone()));
    }
    if let Some(status) = filter.status {
        conditions.push("status = ?");
        params.push(Value::Integer(i64::from(status)));
        if status >= ERROR_STATUS {
            conditions.push(ERROR_STATUS_TERM);
        }
    }
    if let Some(since) = filter.since_ms {
        // Received at `since` or later: a range of keys.
        conditions.push("seq >= ?");
        params.push(Value::Integer(seq_floor(since)));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY seq DESC LIMIT ?");
    params.push(Value::Integer(i64::from(filter.effective_limit())));
    (sql, params)
}

/// The newest record with this id, with bodies and timeline: the newer of the newest one in the id
/// index and, for a UUIDv7 id, the newest one received within [`ID_TIME_SLACK_MS`] of its timestamp.
pub(crate) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<RequestRecord>> {
    let with_key = |row: &Row<'_>| Ok((row.get::<_, i64>(22)?, record_from_row(row)?));
    let indexed = format!(
        "SELECT {SUMMARY_COLUMNS}, {DETAIL_COLUMNS}, seq FROM requests \
         WHERE id = ?1 AND id_indexed ORDER BY seq DESC LIMIT 1"
    );
    let found = conn
        .prepare_cached(&indexed)?
        .query_row([id], with_key)
        .optional()?;
    let Some(ms) = uuid_v7_ms(id) else {
        return Ok(found.map(|(_, record)| record));
    };
    let by_time = format!(
        "SELECT {SUMMARY_COLUMNS}, {DETAIL_COLUMNS}, seq FROM requests \
         WHERE seq BETWEEN ?2 AND ?3 AND id = ?1 ORDER BY seq DESC LIMIT 1"
    );
    let near = conn
        .prepare_cached(&by_time)?
        .query_row(
            rusqlite::params![
                id,
                seq_floor(ms.saturating_sub(ID_TIME_SLACK_MS)),
                seq_ceil(ms.saturating_add(ID_TIME_SLACK_MS)),
            ],
            with_key,
        )
        .optional()?;
    Ok(match (found, near) {
        (Some(a), Some(b)) => Some(if a.0 >= b.0 { a.1 } else { b.1 }),
        (a, b) => a.or(b).map(|(_, record)| record),
    })
}

/// How many records the table holds, as `requests_count` says.
pub(crate) fn count(conn: &Connection) -> rusqlite::Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT n FROM requests_count")?
        .query_row([], |row| row.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How many records the table holds, counted.
#[cfg(test)]
pub(crate) fn count_rows(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM requests", [], |row| row.get(0))
}

/// Adds `n` (which may be negative) to the count of records, in the caller's transaction.
fn add_to_count(conn: &Connection, n: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE requests_count SET n = n + ?1")?
        .execute([n])
        .map(drop)
}

/// What retention keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Delete records received longer ago than this.
    pub max_age: Duration,
    /// Keep at most this many, the most recently received.
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

/// The oldest rows up to key `?1`, at most `?2` of them: by age, the keys before a millisecond; by
/// count, the oldest rows whatever their key. A range of the table's own keys, no index.
const DELETE_OLDEST: &str = "DELETE FROM requests WHERE seq IN \
    (SELECT seq FROM requests WHERE seq <= ?1 ORDER BY seq LIMIT ?2)";

/// Deletes at most `chunk` expired and at most `chunk` surplus rows in one transaction, with
/// statements of [`ROWS_PER_DELETE`] rows and the core yielded between them. The writer runs a step
/// after every batch, so `chunk` bounds how long inserts wait and how large the commit is; a step that
/// hit a limit says so (`more`). A step with nothing to delete costs a key lookup and a read of
/// `requests_count`, and no transaction.
pub(crate) fn apply_retention(
    conn: &mut Connection,
    retention: &Retention,
    now_ms: i64,
    chunk: u32,
) -> rusqlite::Result<RetentionStep> {
    let max_age_ms = i64::try_from(retention.max_age.as_millis()).unwrap_or(i64::MAX);
    // Keys below this one were received before the cutoff.
    let cutoff = seq_floor(now_ms.saturating_sub(max_age_ms));
    let oldest: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM requests")?
        .query_row([], |row| row.get(0))?;
    let expired = oldest.is_some_and(|oldest| oldest < cutoff);
    if !expired && count(conn)? <= retention.max_rows {
        return Ok(RetentionStep {
            deleted: 0,
            more: false,
        });
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let by_age = if expired {
        delete_in_pieces(&tx, cutoff - 1, chunk)?
    } else {
        0
    };
    // After the age rule: what it deleted counts towards the row limit.
    let surplus = count(&tx)?
        .saturating_sub(u64::from(by_age))
        .saturating_sub(retention.max_rows);
    let by_rows = if surplus > 0 {
        let limit = u32::try_from(surplus).unwrap_or(u32::MAX).min(chunk);
        delete_in_pieces(&tx, i64::MAX, limit)?
    } else {
        0
    };
    add_to_count(&tx, -(i64::from(by_age) + i64::from(by_rows)))?;
    tx.commit()?;
    Ok(RetentionStep {
        deleted: usize::try_from(u64::from(by_age) + u64::from(by_rows)).unwrap_or(usize::MAX),
        more: by_age >= chunk || surplus > u64::from(by_rows),
    })
}

/// Runs [`DELETE_OLDEST`] with key bound `bound` until it has deleted `chunk` rows or finds fewer
/// than it asked for; returns how many it deleted.
///
/// The parameters are bound once per step, not per statement: bound anew each time, the delete was
/// compiled again before every execution (callgrind: one `sqlite3Reprepare` per execution, ~80,000
/// instructions, more than deleting the rows; SQLite as `libsqlite3-sys` builds it has
/// `SQLITE_ENABLE_STAT4`, which lets bound values of range conditions change the plan). Bindings
/// outlive a reset, so the same statement runs again as it is; only a last, shorter piece binds its
/// limit anew.
fn delete_in_pieces(conn: &Connection, bound: i64, chunk: u32) -> rusqlite::Result<u32> {
    let mut stmt = conn.prepare_cached(DELETE_OLDEST)?;
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

    /// [`insert_batch`] with keys from one source per test thread, as the writer has one.
    fn insert(conn: &mut Connection, batch: &[RequestRecord]) -> rusqlite::Result<()> {
        thread_local!(static SEQS: std::cell::RefCell<SeqSource> =
            std::cell::RefCell::new(SeqSource::starting_at(0)));
        SEQS.with_borrow_mut(|seqs| insert_batch(conn, seqs, batch))
    }

    /// The first column of every row `sql` returns.
    fn column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The indexes of a file at schema 4, by name.
    const SCHEMA_4_INDEXES: [&str; 3] = ["requests_errors", "requests_id", "requests_model"];

    /// The names of the file's indexes, sorted.
    fn index_names(conn: &Connection) -> Vec<String> {
        column(
            conn,
            "SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name",
        )
    }

    /// The ids in key (arrival) order; checks that `requests_count` agrees with the table.
    fn ids(conn: &Connection) -> Vec<String> {
        let ids: Vec<String> = column(conn, "SELECT id FROM requests ORDER BY seq");
        assert_eq!(count(conn).unwrap(), u64::try_from(ids.len()).unwrap());
        ids
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
        insert(&mut conn, &batch).unwrap();
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
        insert(&mut conn, &batch).unwrap();
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
        insert(&mut conn, &[rec("r20", now), rec("r21", now)]).unwrap();
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
        insert(&mut conn, &old).unwrap();
        insert(&mut conn, &new).unwrap();
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
        insert(&mut conn, &old).unwrap();
        let retention = Retention {
            max_age: Duration::from_hours(24),
            max_rows: 1000,
        };
        // Four pieces of 16.
        let step = apply_retention(&mut conn, &retention, now, 64).unwrap();
        assert_eq!(step.deleted, 64);
        let reprepared = conn
            .prepare_cached(DELETE_OLDEST)
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
            insert(&mut conn, &batch).unwrap();
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
            insert(&mut conn, &[rec("before", 1)]).unwrap();
            conn.execute_batch(&format!(
                "CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.id = 'bad' \
                 BEGIN SELECT RAISE({resolution}, 'refused'); END;"
            ))
            .unwrap();
            let mut batch: Vec<_> = (0..u32::try_from(ROWS_PER_INSERT + 2).unwrap())
                .map(distinct)
                .collect();
            batch[1].id = "bad".to_owned();
            assert!(insert(&mut conn, &batch).is_err(), "{resolution}");
            assert_eq!(ids(&conn), ["before"], "{resolution}");
            // The connection is usable again, outside any transaction.
            assert!(conn.is_autocommit(), "{resolution}");
            insert(&mut conn, &[rec("after", 2)]).unwrap();
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
        insert(&mut conn, &[r]).unwrap();
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
        insert(&mut conn, &[rec("dup", 1), second]).unwrap();
        assert_eq!(get(&conn, "dup").unwrap().unwrap().status, 500);
        assert_eq!(get(&conn, "missing").unwrap(), None);
    }

    #[test]
    fn schema_from_the_future_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
        assert!(matches!(
            migrate(&conn),
            Err(RequestLogError::SchemaTooNew {
                found: 5,
                supported: 4
            })
        ));
    }

    #[test]
    fn error_status_term_is_the_error_index_condition() {
        assert_eq!(ERROR_STATUS_TERM, format!("status >= {ERROR_STATUS}"));
        assert!(
            INDEXES.contains(&format!("ON requests (status) WHERE {ERROR_STATUS_TERM};")),
            "{INDEXES}"
        );
    }

    #[test]
    fn schema_3_file_gets_the_error_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!(
            "{}
            CREATE INDEX requests_model ON requests (model);
            CREATE INDEX requests_status ON requests (status);
            CREATE INDEX requests_id ON requests (id) WHERE id_indexed;
            {COUNT_TABLE}
            PRAGMA user_version = 3;",
            TABLE.replace("{table}", "requests")
        ))
        .unwrap();
        // Written by a schema-3 build: the row format is the same.
        let mut failed = rec("failed", 2_000);
        failed.status = 502;
        insert(&mut conn, &[rec("ok", 1_000), failed]).unwrap();
        migrate(&conn).unwrap();
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        assert_eq!(index_names(&conn), SCHEMA_4_INDEXES);
        // The index holds the error rows only, and both kinds of status filter find their rows.
        let in_index: Vec<String> = column(
            &conn,
            "SELECT id FROM requests INDEXED BY requests_errors WHERE status >= 400",
        );
        assert_eq!(in_index, ["failed"]);
        let by_status = |status| {
            query(
                &conn,
                &RequestFilter {
                    status: Some(status),
                    ..RequestFilter::default()
                },
            )
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>()
        };
        assert_eq!(by_status(502), ["failed"]);
        assert_eq!(by_status(200), ["ok"]);
        assert_eq!(count(&conn).unwrap(), 2);
    }

    /// The schema of versions 1 and 2 (one table, four indexes, keys in the order rows were logged).
    const SCHEMA_2: &str = "
        CREATE TABLE requests (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL, received_at INTEGER NOT NULL, trace_id TEXT,
            key_id TEXT, route TEXT NOT NULL, method TEXT NOT NULL, model TEXT, provider TEXT,
            status INTEGER NOT NULL, stream INTEGER NOT NULL, latency_ms REAL, ttft_ms REAL,
            upstream_ms REAL, input_tokens INTEGER, output_tokens INTEGER, cost_usd TEXT,
            error_kind TEXT, cache TEXT, error_message TEXT, request_body TEXT, response_body TEXT,
            timeline TEXT NOT NULL);
        CREATE INDEX requests_received_at ON requests (received_at);
        CREATE INDEX requests_model ON requests (model, received_at);
        CREATE INDEX requests_status ON requests (status, received_at);
        CREATE INDEX requests_id ON requests (id);";

    fn user_version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap()
    }

    #[test]
    fn schema_1_and_2_files_are_rebuilt_keyed_by_arrival() {
        let object_timeline = r#"[{"at_ms":0.0,"name":"received","detail":null},{"at_ms":2.5,"name":"done","detail":"timeout"}]"#;
        for version in [1, 2] {
            let mut conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(SCHEMA_2).unwrap();
            conn.pragma_update(None, "user_version", version).unwrap();
            // Logged in this order; "b" arrived first. "c" and "d" share a millisecond; "e" was
            // received before 1970 (a clock far off). Version 1 wrote timelines as objects.
            let timeline = if version == 1 {
                object_timeline
            } else {
                r#"[[0,"received"],[2500,"done","timeout"]]"#
            };
            for (id, received_at, model) in [
                ("a", 5_000, "m1"),
                ("b", 1_000, "m2"),
                ("c", 7_000, "m1"),
                ("d", 7_000, "m1"),
                ("e", -5, "m2"),
            ] {
                conn.execute(
                    "INSERT INTO requests (id, received_at, route, method, model, status, stream, \
                     timeline) VALUES (?1, ?2, '/v1/chat/completions', 'POST', ?3, 200, 0, ?4)",
                    rusqlite::params![id, received_at, model, timeline],
                )
                .unwrap();
            }
            migrate(&conn).unwrap();
            assert_eq!(user_version(&conn), SCHEMA_VERSION);
            assert_eq!(ids(&conn), ["e", "b", "a", "c", "d"], "schema {version}");
            let keys: Vec<i64> = column(&conn, "SELECT seq FROM requests ORDER BY seq");
            assert_eq!(
                keys,
                [
                    0,
                    seq_floor(1_000),
                    seq_floor(5_000),
                    seq_floor(7_000),
                    seq_floor(7_000) + 1
                ]
            );
            // Every old row is found by id (through the index: nothing says when it arrived), with
            // its timeline in either form; the old indexes are gone.
            for id in ["a", "b", "c", "d", "e"] {
                let record = get(&conn, id).unwrap().unwrap();
                assert_eq!(
                    record.timeline[1],
                    TimelineEvent::with_detail(2.5, "done", "timeout")
                );
            }
            assert_eq!(index_names(&conn), SCHEMA_4_INDEXES);
            let by_model = query(
                &conn,
                &RequestFilter {
                    model: Some("m1".to_owned()),
                    ..RequestFilter::default()
                },
            )
            .unwrap();
            let by_model: Vec<_> = by_model.into_iter().map(|s| s.id).collect();
            assert_eq!(by_model, ["d", "c", "a"]);
            // New rows go on as schema 4 rows; upgrading twice is a no-op.
            insert(&mut conn, &[rec("new", 9_000)]).unwrap();
            migrate(&conn).unwrap();
            assert_eq!(ids(&conn), ["e", "b", "a", "c", "d", "new"]);
        }
    }

    /// A UUIDv7 id with the timestamp `ms`, as `app.rs` makes them.
    fn uuid_at(ms: i64) -> String {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(ms / 1000).unwrap(),
            u32::try_from(ms % 1000).unwrap() * 1_000_000,
        );
        uuid::Uuid::new_v7(ts).to_string()
    }

    fn indexed_ids(conn: &Connection) -> Vec<String> {
        column(
            conn,
            "SELECT id FROM requests WHERE id_indexed ORDER BY seq",
        )
    }

    #[test]
    fn only_ids_that_do_not_tell_the_arrival_time_are_indexed_and_all_are_found() {
        let mut conn = memory();
        let t = 1_764_400_000_000;
        let own = uuid_at(t);
        let slow = uuid_at(t + 1_000);
        let late = uuid_at(t + 2_000);
        let other_time = uuid_at(t - 60_000);
        let batch = [
            // Sluice's own id, the arrival read in the same millisecond or just after.
            rec(&own, t),
            // The thread was descheduled for the slack between the two clock reads: still near.
            rec(&slow, t + 1_000 + ID_TIME_SLACK_MS),
            // Further than the slack: indexed.
            rec(&late, t + 2_000 + ID_TIME_SLACK_MS + 1),
            // A client's id, and a client's UUIDv7 from another time.
            rec("client-chosen", t),
            rec(&other_time, t + 3_000),
            // A UUID of another version.
            rec("67e55044-10b1-426f-9247-bb680e5fe0c8", t),
        ];
        insert(&mut conn, &batch).unwrap();
        assert_eq!(
            indexed_ids(&conn),
            [
                "client-chosen",
                "67e55044-10b1-426f-9247-bb680e5fe0c8",
                late.as_str(),
                other_time.as_str()
            ]
        );
        for r in &batch {
            assert_eq!(get(&conn, &r.id).unwrap().as_ref(), Some(r), "{}", r.id);
        }
        // Near a UUIDv7's timestamp there is no record with that id: not found.
        assert_eq!(get(&conn, &uuid_at(t + 1)).unwrap(), None);
    }

    #[test]
    fn a_reused_id_returns_the_latest_arrival_whichever_way_each_was_found() {
        let t = 1_764_400_000_000;
        let id = uuid_at(t);
        // Received at the id's time (found by time), and a minute later (found in the index), logged
        // in either order.
        for later_first in [false, true] {
            let mut conn = memory();
            let first = rec(&id, t);
            let mut second = rec(&id, t + 60_000);
            second.status = 500;
            let batch = if later_first {
                [second.clone(), first]
            } else {
                [first, second.clone()]
            };
            insert(&mut conn, &batch).unwrap();
            assert_eq!(indexed_ids(&conn), [id.as_str()]);
            assert_eq!(get(&conn, &id).unwrap(), Some(second.clone()));
        }
        // Both in the index: the later arrival too.
        let mut conn = memory();
        let mut later = rec("reused", 2_000);
        later.status = 500;
        insert(&mut conn, &[later.clone(), rec("reused", 1_000)]).unwrap();
        assert_eq!(get(&conn, "reused").unwrap(), Some(later));
    }

    #[test]
    fn listings_are_in_arrival_order_whatever_the_order_logged() {
        let mut conn = memory();
        // A long stream received first is logged after the short calls that came in meanwhile.
        let mut stream = rec("stream", 1_000);
        stream.model = Some("m".to_owned());
        let mut short = rec("short", 2_000);
        short.model = Some("m".to_owned());
        let mut other = rec("other", 3_000);
        other.status = 500;
        insert(&mut conn, &[short, other]).unwrap();
        insert(&mut conn, &[stream]).unwrap();
        let list = |filter: RequestFilter| -> Vec<String> {
            query(&conn, &filter)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(list(RequestFilter::default()), ["other", "short", "stream"]);
        assert_eq!(
            list(RequestFilter {
                since_ms: Some(2_000),
                ..RequestFilter::default()
            }),
            ["other", "short"]
        );
        assert_eq!(
            list(RequestFilter {
                model: Some("m".to_owned()),
                since_ms: Some(1_001),
                ..RequestFilter::default()
            }),
            ["short"]
        );
        assert_eq!(
            list(RequestFilter {
                model: Some("m".to_owned()),
                ..RequestFilter::default()
            }),
            ["short", "stream"]
        );
        assert_eq!(
            list(RequestFilter {
                status: Some(500),
                since_ms: Some(-1),
                ..RequestFilter::default()
            }),
            ["other"]
        );
        assert_eq!(
            list(RequestFilter {
                limit: 1,
                ..RequestFilter::default()
            }),
            ["other"]
        );
    }

    #[test]
    fn keys_clamp_arrival_times_they_cannot_hold() {
        assert_eq!(seq_floor(-1), 0);
        assert_eq!(seq_floor(i64::MIN), 0);
        assert_eq!(seq_floor(1), 1 << SEQ_LOW_BITS);
        assert_eq!(seq_floor(i64::MAX), MAX_SEQ_MS << SEQ_LOW_BITS);
        assert_eq!(seq_ceil(i64::MAX), i64::MAX);
        // The counter wraps within the millisecond's bits.
        let mut seqs = SeqSource::starting_at(u32::MAX);
        assert_eq!(seqs.key(7), seq_floor(7) | SEQ_LOW_MASK);
        assert_eq!(seqs.key(7), seq_floor(7));
        // Extreme arrival times are stored and found.
        let mut conn = memory();
        insert(&mut conn, &[rec("past", i64::MIN), rec("future", i64::MAX)]).unwrap();
        assert_eq!(ids(&conn), ["past", "future"]);
        assert_eq!(get(&conn, "future").unwrap().unwrap().received_at, i64::MAX);
    }

    #[test]
    fn a_taken_key_fails_the_batch_and_each_record_then_finds_a_free_one() {
        let mut conn = memory();
        // Another process (or this one before a clock step back) used the keys a source starting at
        // 5 hands out for millisecond 1,000.
        insert_batch(
            &mut conn,
            &mut SeqSource::starting_at(5),
            &[rec("earlier-1", 1_000), rec("earlier-2", 1_000)],
        )
        .unwrap();
        let batch = [rec("a", 1_000), rec("b", 2_000), rec("c", 1_000)];
        let error = insert_batch(&mut conn, &mut SeqSource::starting_at(5), &batch).unwrap_err();
        assert_eq!(
            error.sqlite_error_code(),
            Some(ErrorCode::ConstraintViolation)
        );
        assert!(!is_transient(&error));
        assert_eq!(ids(&conn), ["earlier-1", "earlier-2"]);
        // What the writer does next: one record at a time.
        for r in &batch {
            insert_one(&mut conn, r).unwrap();
        }
        assert_eq!(ids(&conn), ["earlier-1", "earlier-2", "a", "c", "b"]);
        for r in &batch {
            assert_eq!(get(&conn, &r.id).unwrap().as_ref(), Some(r));
        }
    }

    #[test]
    fn the_count_follows_inserts_and_deletes_and_is_counted_again_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.db");
        let mut conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        let now = 100 * DAY_MS;
        let batch: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"), now)).collect();
        insert(&mut conn, &batch).unwrap();
        insert_one(&mut conn, &rec("one", now)).unwrap();
        assert_eq!(count(&conn).unwrap(), 11);
        let retention = Retention {
            max_age: Duration::from_hours(1),
            max_rows: 4,
        };
        apply_retention(&mut conn, &retention, now, 100).unwrap();
        assert_eq!(ids(&conn), ["r7", "r8", "r9", "one"]);
        // Rows deleted behind the writer's back (by hand, say) are counted when it opens the file.
        conn.execute("DELETE FROM requests WHERE id = 'r7'", [])
            .unwrap();
        assert_eq!(count(&conn).unwrap(), 4);
        drop(conn);
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(count(&conn).unwrap(), 3);
        assert_eq!(ids(&conn), ["r8", "r9", "one"]);
    }

    #[test]
    fn listings_use_the_table_order_or_an_index_and_never_sort() {
        let conn = memory();
        let plan = |filter: RequestFilter| {
            let (sql, params) = listing(&filter);
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(params), |row| row.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = rows.join("; ");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            plan
        };
        let model = || Some("m".to_owned());
        let all = plan(RequestFilter::default());
        assert_eq!(all, "SCAN requests", "{all}");
        let since = plan(RequestFilter {
            since_ms: Some(1_000),
            ..RequestFilter::default()
        });
        assert!(since.contains("INTEGER PRIMARY KEY (rowid>?)"), "{since}");
        let by_model = plan(RequestFilter {
            model: model(),
            ..RequestFilter::default()
        });
        assert!(by_model.contains("requests_model (model=?)"), "{by_model}");
        let by_model_since = plan(RequestFilter {
            model: model(),
            since_ms: Some(1_000),
            ..RequestFilter::default()
        });
        assert!(
            by_model_since.contains("requests_model (model=? AND rowid>?)"),
            "{by_model_since}"
        );
        for error in [500, ERROR_STATUS] {
            let by_status = plan(RequestFilter {
                status: Some(error),
                ..RequestFilter::default()
            });
            assert!(
                by_status.contains("requests_errors (status=?)"),
                "{error}: {by_status}"
            );
        }
        // Not an error: the table newest first, the status checked on each row.
        let by_ok = plan(RequestFilter {
            status: Some(200),
            ..RequestFilter::default()
        });
        assert_eq!(by_ok, "SCAN requests", "{by_ok}");
        // A lookup by id: the partial index, and a range of keys.
        let indexed = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT id FROM requests WHERE id = 'x' AND id_indexed \
                 ORDER BY seq DESC LIMIT 1",
            )
            .unwrap()
            .query_row([], |row| row.get::<_, String>(3))
            .unwrap();
        assert!(indexed.contains("requests_id (id=?)"), "{indexed}");
    }
}
