//! End-to-end tests of the request log: a real database file, the writer thread, shutdown, restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-request-log-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("requests.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Holds the database write lock from a second connection: the writer stalls until it is released.
struct WriteLock(Connection);

impl WriteLock {
    fn take(path: &Path) -> Self {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        Self(conn)
    }

    fn release(self) {
        self.0.execute_batch("ROLLBACK").unwrap();
    }
}

fn config(dir: &TempDir) -> RequestLogConfig {
    RequestLogConfig {
        path: dir.db(),
        ..RequestLogConfig::default()
    }
}

/// Production batching, but short lock waits and retries so stalled-writer tests run quickly.
fn fast() -> Tuning {
    Tuning {
        linger: Duration::from_millis(10),
        busy_timeout: Duration::from_millis(20),
        retry_backoff: (Duration::from_millis(10), Duration::from_millis(50)),
        ..Tuning::default()
    }
}

fn open(config: &RequestLogConfig) -> (RequestLog, WriterHandle) {
    RequestLog::open_with(config, fast()).unwrap()
}

fn rec(id: &str) -> RequestRecord {
    RequestRecord {
        id: id.to_owned(),
        received_at: now_unix_ms(),
        route: "/v1/chat/completions".to_owned(),
        method: "POST".to_owned(),
        model: Some("gpt-4o-mini".to_owned()),
        status: 200,
        latency_ms: 12.5,
        ..RequestRecord::default()
    }
}

fn full_record(id: &str) -> RequestRecord {
    RequestRecord {
        id: id.to_owned(),
        // A minute ago: older than `rec()`, well within retention.
        received_at: now_unix_ms() - 60_000,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        key_id: Some("key_team_a".to_owned()),
        route: "/v1/chat/completions".to_owned(),
        method: "POST".to_owned(),
        model: Some("claude-sonnet".to_owned()),
        provider: Some("anthropic".to_owned()),
        status: 502,
        stream: true,
        latency_ms: 1_234.567_891,
        ttft_ms: Some(345.25),
        upstream_ms: Some(1_200.000_1),
        input_tokens: Some(1234),
        output_tokens: Some(u64::from(u32::MAX) + 7),
        cost_usd: Some("0.000123450".to_owned()),
        error_kind: Some("upstream_error".to_owned()),
        error_message: Some("upstream closed the stream after 3 chunks".to_owned()),
        cache: Some("miss".to_owned()),
        request_body: Some(
            r#"{"model":"claude-sonnet","messages":[{"role":"user","content":"hi ✓"}],"stream":true}"#
                .to_owned(),
        ),
        response_body: Some("data: {\"choices\":[]}\n\n".to_owned()),
        timeline: vec![
            TimelineEvent::new(0.0, "received"),
            TimelineEvent::with_detail(1.5, "upstream_attempt", "anthropic#1"),
            TimelineEvent::new(345.25, "first_token"),
            // Stored to the microsecond (`timeline.rs`).
            TimelineEvent::with_detail(1_234.568, "done", "upstream_error"),
        ],
    }
}

/// The ids of the default listing, sorted.
fn listed_ids_sorted(log: &RequestLog) -> Vec<String> {
    let mut ids: Vec<_> = log
        .query(&RequestFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    ids.sort();
    ids
}

fn count(path: &Path) -> i64 {
    store::count_rows(&Connection::open(path).unwrap()).unwrap()
}

/// Polls `condition` every 10 ms for up to 5 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const SHUTDOWN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn records_round_trip_with_timelines() {
    let dir = TempDir::new();
    let (log, writer) = open(&RequestLogConfig {
        capture_bodies: true,
        ..config(&dir)
    });
    let full = full_record("req-full");
    log.record(full.clone());
    log.record(rec("req-small"));
    assert_eq!(writer.shutdown(SHUTDOWN).await, 2);

    assert_eq!(log.get("req-full").unwrap().as_ref(), Some(&full));
    assert_eq!(
        log.get_async("req-full".to_owned()).await.unwrap(),
        Some(full)
    );
    let small = log.get("req-small").unwrap().unwrap();
    assert_eq!(small.timeline, []);
    assert_eq!(small.ttft_ms, None);
    assert_eq!(log.get("nope").unwrap(), None);

    let rows = log.query_async(RequestFilter::default()).await.unwrap();
    assert_eq!(rows.len(), 2);
    // Newest first: req-small was received now, req-full a minute ago.
    assert_eq!(rows[0].id, "req-small");
    let summary = &rows[1];
    assert_eq!(summary.id, "req-full");
    assert_eq!(summary.cost_usd.as_deref(), Some("0.000123450"));
    assert_eq!(summary.output_tokens, Some(u64::from(u32::MAX) + 7));
    assert_eq!(summary.status, 502);
    assert!(summary.stream);
    assert_eq!(
        (log.written_count(), log.shed_count(), log.failed_count()),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn bodies_are_dropped_unless_captured() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    assert!(!log.captures_bodies());
    log.record(full_record("r"));
    writer.shutdown(SHUTDOWN).await;
    let stored = log.get("r").unwrap().unwrap();
    assert_eq!((stored.request_body, stored.response_body), (None, None));
    // The error message is kept either way.
    assert!(stored.error_message.is_some());
}

#[tokio::test]
async fn captured_bodies_are_redacted_then_capped() {
    let dir = TempDir::new();
    let (log, writer) = open(&RequestLogConfig {
        capture_bodies: true,
        max_body_bytes: 64,
        ..config(&dir)
    });
    let key = "sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
    let mut r = rec("r");
    // The key starts before the 64-byte cap and ends after it.
    r.request_body = Some(format!(
        r#"{{"model":"m","messages":[{{"content":"key {key} {}"}}]}}"#,
        "x".repeat(5000)
    ));
    let original_len = r.request_body.as_ref().unwrap().len();
    r.response_body = Some(r#"{"api_key":"abc","ok":true}"#.to_owned());
    r.error_message = Some(format!("Incorrect API key provided: {key}"));
    log.record(r);
    writer.shutdown(SHUTDOWN).await;

    let stored = log.get("r").unwrap().unwrap();
    let request_body = stored.request_body.unwrap();
    assert_eq!(
        request_body,
        format!(
            r#"{{"model":"m","messages":[{{"content":"key [REDACTED] xxxxxxxxxxxx…[truncated: {original_len} bytes total]"#
        )
    );
    assert_eq!(
        stored.response_body.as_deref(),
        Some(r#"{"api_key":"[REDACTED]","ok":true}"#)
    );
    assert_eq!(
        stored.error_message.as_deref(),
        Some("Incorrect API key provided: [REDACTED]")
    );
    let raw = std::fs::read(dir.db()).unwrap();
    let wal = std::fs::read(dir.db().with_extension("db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(!bytes.windows(20).any(|w| w == &key.as_bytes()[8..28]));
    }
}

#[tokio::test]
async fn a_stalled_writer_sheds_instead_of_queueing() {
    let dir = TempDir::new();
    let capacity = 8;
    let (log, writer) = open(&RequestLogConfig {
        queue_capacity: capacity,
        ..config(&dir)
    });
    let lock = WriteLock::take(&dir.db());
    let total = 1000;
    for i in 0..total {
        log.record(rec(&format!("r{i}")));
    }
    // While stalled the writer holds at most one batch and the queue at most `capacity`: the rest is
    // shed, nothing grows.
    let shed = log.shed_count();
    let batch_max = u64::try_from(Tuning::default().batch_max).unwrap();
    assert!(
        shed >= total - batch_max - capacity as u64,
        "shed only {shed} of {total}"
    );
    assert_eq!(log.written_count(), 0);
    lock.release();
    let flushed = writer.shutdown(SHUTDOWN).await;
    // Everything accepted was written: nothing lost, nothing counted twice.
    assert_eq!(flushed as u64, total - shed);
    assert_eq!(count(&dir.db()), i64::try_from(total - shed).unwrap());
    assert_eq!(log.failed_count(), 0);
}

#[tokio::test]
async fn graceful_shutdown_flushes_every_queued_record() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    // Stall the writer so that everything is still queued when shutdown starts.
    let lock = WriteLock::take(&dir.db());
    for i in 0..500 {
        log.record(rec(&format!("r{i}")));
    }
    assert_eq!(log.written_count(), 0);
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        lock.release();
    });
    assert_eq!(writer.shutdown(SHUTDOWN).await, 500);
    release.join().unwrap();
    assert_eq!(count(&dir.db()), 500);
    assert_eq!(log.shed_count(), 0);
    // After shutdown records are shed, not queued forever.
    log.record(rec("late"));
    assert_eq!(log.shed_count(), 1);
}

#[tokio::test]
async fn shutdown_right_after_a_burst_writes_it_all() {
    let dir = TempDir::new();
    let (log, writer) = RequestLog::open(&config(&dir)).unwrap();
    for i in 0..5000 {
        log.record(rec(&format!("r{i}")));
    }
    let flushed = writer.shutdown(SHUTDOWN).await;
    assert!(flushed <= 5000);
    assert_eq!(log.written_count(), 5000);
    assert_eq!(count(&dir.db()), 5000);
}

#[tokio::test]
async fn a_refused_record_costs_only_itself() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    // A trigger the real table does not have refuses one record: its batch fails, and the writer
    // stores the rest one at a time (each under a free key of its millisecond).
    Connection::open(dir.db())
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON requests WHEN NEW.id = 'bad' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
    for id in ["a", "bad", "b", "c"] {
        log.record(rec(id));
    }
    writer.shutdown(SHUTDOWN).await;
    assert_eq!((log.written_count(), log.failed_count()), (3, 1));
    assert_eq!(listed_ids_sorted(&log), ["a", "b", "c"]);
    assert_eq!(count(&dir.db()), 3);
}

#[tokio::test]
async fn shutdown_that_times_out_drops_and_counts() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    let lock = WriteLock::take(&dir.db());
    for i in 0..10 {
        log.record(rec(&format!("r{i}")));
    }
    let started = Instant::now();
    assert_eq!(writer.shutdown(Duration::from_millis(100)).await, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The writer gives up on its batch and anything still queued.
    eventually("the writer to give up", || log.failed_count() == 10).await;
    lock.release();
    assert_eq!(count(&dir.db()), 0);
}

#[tokio::test]
async fn dropping_every_handle_still_drains_the_queue() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    for i in 0..100 {
        log.record(rec(&format!("r{i}")));
    }
    drop(writer);
    drop(log);
    let path = dir.db();
    eventually("the drain", || count(&path) == 100).await;
}

#[tokio::test]
async fn the_log_survives_a_restart() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    log.record(full_record("before"));
    assert_eq!(writer.shutdown(SHUTDOWN).await, 1);
    drop(log);

    let (log, writer) = open(&config(&dir));
    let before = log.get("before").unwrap().unwrap();
    assert_eq!(before.timeline, full_record("before").timeline);
    log.record(rec("after"));
    assert_eq!(writer.shutdown(SHUTDOWN).await, 1);
    let ids: Vec<_> = log
        .query(&RequestFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, ["after", "before"]);
}

/// Records in the database file alone (a copy without its WAL); 0 while even the schema is only in
/// the WAL.
fn count_in_main_file(dir: &TempDir) -> i64 {
    let copy = dir.0.join("copy.db");
    std::fs::copy(dir.db(), &copy).unwrap();
    let n = Connection::open(&copy)
        .and_then(|conn| store::count_rows(&conn))
        .unwrap_or(0);
    std::fs::remove_file(&copy).unwrap();
    n
}

#[tokio::test]
async fn each_batch_is_checkpointed_into_the_database_file() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    // SQLite's own checkpoint would wait for 1000 pages of WAL; the writer copies every batch.
    for round in 1..=3 {
        log.record(rec(&format!("r{round}")));
        eventually("the batch in the database file", || {
            count_in_main_file(&dir) == round
        })
        .await;
    }
    assert_eq!(
        writer.shutdown(SHUTDOWN).await,
        0,
        "nothing was left to write"
    );
    assert_eq!(log.written_count(), 3);
}

#[tokio::test]
async fn a_writer_whose_checkpoint_thread_lags_checkpoints_itself() {
    let dir = TempDir::new();
    let (log, writer) = RequestLog::open_with(
        &config(&dir),
        Tuning {
            stalled_checkpointer: true,
            ..fast()
        },
    )
    .unwrap();
    let lag = super::checkpointer::MAX_LAG;
    // One batch per record: the first MAX_LAG wait for the stalled thread, in the WAL only.
    for round in 1..=lag {
        log.record(rec(&format!("r{round}")));
        eventually("the batch committed", || log.written_count() == round).await;
        assert_eq!(count_in_main_file(&dir), 0, "batch {round} checkpointed");
    }
    // The next finds the thread MAX_LAG behind: the writer copies everything itself.
    log.record(rec("last"));
    let all = i64::try_from(lag + 1).unwrap();
    eventually("every batch in the database file", || {
        count_in_main_file(&dir) == all
    })
    .await;
    assert_eq!(writer.shutdown(SHUTDOWN).await, 0);
}

#[tokio::test]
async fn the_writer_applies_retention_by_age_and_by_rows() {
    let dir = TempDir::new();
    let (log, writer) = RequestLog::open_with(
        &RequestLogConfig {
            retention_age: Duration::from_hours(1),
            retention_max_rows: 10,
            ..config(&dir)
        },
        Tuning {
            retention_interval: Duration::from_millis(20),
            ..fast()
        },
    )
    .unwrap();
    let two_hours_ago = now_unix_ms() - 2 * 3600 * 1000;
    for i in 0..3 {
        log.record(RequestRecord {
            received_at: two_hours_ago,
            ..rec(&format!("old{i}"))
        });
    }
    // Only the old ones so far: age alone must remove them.
    let path = dir.db();
    eventually("the old rows to be written", || log.written_count() == 3).await;
    eventually("age retention", || count(&path) == 0).await;
    for i in 0..25 {
        log.record(rec(&format!("new{i:02}")));
    }
    eventually("row retention", || {
        log.written_count() == 28 && count(&path) == 10
    })
    .await;
    writer.shutdown(SHUTDOWN).await;
    let expected: Vec<_> = (15..25).map(|i| format!("new{i:02}")).collect();
    assert_eq!(listed_ids_sorted(&log), expected);
}

#[tokio::test]
async fn retention_follows_every_batch_so_a_full_log_stays_at_its_limit() {
    let dir = TempDir::new();
    let (log, writer) = RequestLog::open_with(
        &RequestLogConfig {
            retention_max_rows: 10,
            ..config(&dir)
        },
        // No timed passes during the test: only the steps that follow the batches.
        Tuning {
            retention_interval: Duration::from_hours(1),
            ..fast()
        },
    )
    .unwrap();
    let path = dir.db();
    for round in 1..=3_u64 {
        for i in 0..25 {
            log.record(rec(&format!("b{round}-{i:02}")));
        }
        eventually("the batch to be written", || {
            log.written_count() == 25 * round
        })
        .await;
        eventually("the surplus to be deleted", || count(&path) == 10).await;
    }
    writer.shutdown(SHUTDOWN).await;
    let newest: Vec<_> = log
        .query(&RequestFilter::default())
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(newest.len(), 10);
    assert!(newest.iter().all(|id| id.starts_with("b3-")), "{newest:?}");
}

#[tokio::test]
async fn filters_order_and_limits() {
    let dir = TempDir::new();
    let (log, writer) = open(&config(&dir));
    // An hour ago: inside the default retention age (retention runs after every batch).
    let t0 = now_unix_ms() - 3_600_000;
    for i in 0..1100_i64 {
        log.record(RequestRecord {
            received_at: t0 + i,
            model: Some(if i % 2 == 0 { "even" } else { "odd" }.to_owned()),
            status: if i % 10 == 0 { 500 } else { 200 },
            ..rec(&format!("r{i:04}"))
        });
    }
    writer.shutdown(SHUTDOWN).await;
    let ids = |filter: RequestFilter| -> Vec<String> {
        log.query(&filter)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect()
    };

    let page = ids(RequestFilter::default());
    assert_eq!(page.len(), 50);
    assert_eq!(page[0], "r1099");
    assert_eq!(page[49], "r1050");
    assert_eq!(
        ids(RequestFilter {
            limit: 5000,
            ..RequestFilter::default()
        })
        .len(),
        1000
    );
    assert_eq!(
        ids(RequestFilter {
            model: Some("even".to_owned()),
            limit: 3,
            ..RequestFilter::default()
        }),
        ["r1098", "r1096", "r1094"]
    );
    assert_eq!(
        ids(RequestFilter {
            status: Some(500),
            limit: 3,
            ..RequestFilter::default()
        }),
        ["r1090", "r1080", "r1070"]
    );
    assert_eq!(
        ids(RequestFilter {
            model: Some("odd".to_owned()),
            status: Some(500),
            ..RequestFilter::default()
        }),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(RequestFilter {
            model: Some("even".to_owned()),
            status: Some(500),
            since_ms: Some(t0 + 1050),
            ..RequestFilter::default()
        }),
        ["r1090", "r1080", "r1070", "r1060", "r1050"]
    );
    assert_eq!(
        ids(RequestFilter {
            since_ms: Some(t0 + 1097),
            ..RequestFilter::default()
        }),
        ["r1099", "r1098", "r1097"]
    );
    assert_eq!(
        ids(RequestFilter {
            model: Some("none".to_owned()),
            ..RequestFilter::default()
        }),
        Vec::<String>::new()
    );
    // From a query string.
    let filter: RequestFilter = serde_json::from_str(r#"{"status":500,"limit":2}"#).unwrap();
    assert_eq!(ids(filter), ["r1090", "r1080"]);
}

#[tokio::test]
async fn many_producers_at_once() {
    const THREADS: usize = 8;
    const EACH: usize = 2000;
    let total = (THREADS * EACH) as u64;
    for capacity in [100_000, 16] {
        let dir = TempDir::new();
        let (log, writer) = open(&RequestLogConfig {
            queue_capacity: capacity,
            ..config(&dir)
        });
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        log.record(rec(&format!("t{t}-{i}")));
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        writer.shutdown(SHUTDOWN).await;
        let (written, shed) = (log.written_count(), log.shed_count());
        assert_eq!(written + shed, total, "capacity {capacity}");
        assert_eq!(log.failed_count(), 0);
        assert_eq!(count(&dir.db()), i64::try_from(written).unwrap());
        if capacity >= THREADS * EACH {
            assert_eq!(shed, 0);
        }
        let conn = Connection::open(dir.db()).unwrap();
        let distinct: i64 = conn
            .query_row("SELECT count(DISTINCT id) FROM requests", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(distinct, i64::try_from(written).unwrap());
    }
}

#[tokio::test]
async fn a_disabled_log_drops_everything() {
    let dir = TempDir::new();
    let (log, writer) = RequestLog::open(&RequestLogConfig {
        enabled: false,
        ..config(&dir)
    })
    .unwrap();
    assert!(!log.is_enabled());
    log.record(rec("r"));
    assert_eq!(log.shed_count(), 0);
    assert!(matches!(
        log.query(&RequestFilter::default()),
        Err(RequestLogError::Disabled)
    ));
    assert!(matches!(log.get("r"), Err(RequestLogError::Disabled)));
    assert_eq!(writer.shutdown(SHUTDOWN).await, 0);
    assert!(!dir.db().exists());
}

#[test]
fn open_errors_are_reported() {
    let dir = TempDir::new();
    let missing_dir = RequestLogConfig {
        path: dir.0.join("no/such/dir/requests.db"),
        ..config(&dir)
    };
    let err = RequestLog::open(&missing_dir).unwrap_err();
    assert!(matches!(err, RequestLogError::Open { .. }), "{err}");
    assert!(err.to_string().contains("no/such/dir"), "{err}");

    let invalid = RequestLogConfig {
        queue_capacity: 0,
        ..config(&dir)
    };
    assert!(matches!(
        RequestLog::open(&invalid),
        Err(RequestLogError::InvalidConfig(_))
    ));

    let conn = Connection::open(dir.db()).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = RequestLog::open(&config(&dir)).unwrap_err();
    assert!(
        matches!(err, RequestLogError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

/// Information, not an assertion: what `record()` costs on this machine. Run with
/// `cargo test --release record_cost -- --nocapture`. Each iteration builds a record (as a handler
/// does, so its memory is hot); `record()` costs the difference to building and dropping one. The
/// writer is stalled so it does not compete for the CPU. Best of 5 rounds: timings are noisy on a
/// shared machine.
#[tokio::test]
async fn record_cost() {
    // Debug-build timings mean nothing; keep the test quick there.
    const N: u32 = if cfg!(debug_assertions) { 500 } else { 10_000 };
    const ROUNDS: u32 = 5;
    let dir = TempDir::new();
    // No bodies: with `capture_bodies` off `record()` would drop them, which the baselines do not.
    let template = RequestRecord {
        request_body: None,
        response_body: None,
        ..full_record("template")
    };
    let best = |f: &mut dyn FnMut(RequestRecord)| {
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..N {
                    f(std::hint::black_box(template.clone()));
                }
                started.elapsed() / N
            })
            .min()
            .unwrap()
    };
    let baseline = best(&mut |r| drop(std::hint::black_box(r)));
    // Warm the heap as a running server's is: otherwise the accepted path (records stay alive in the
    // queue) pays first-touch page faults that a steady state does not.
    drop(std::hint::black_box(
        (0..N * ROUNDS)
            .map(|_| template.clone())
            .collect::<Vec<_>>(),
    ));

    let (log, writer) = open(&RequestLogConfig {
        queue_capacity: (N * ROUNDS) as usize + 1000,
        ..config(&dir)
    });
    let lock = WriteLock::take(&dir.db());
    let accepted = best(&mut |r| log.record(r));
    let shed_before = log.shed_count();
    // Now fill the rest of the queue, then measure the shed path.
    for _ in 0..2000 {
        log.record(template.clone());
    }
    let shed = best(&mut |r| log.record(r));
    lock.release();
    println!(
        "build+record(): accepted {accepted:?}/op, shed {shed:?}/op; build+drop {baseline:?}/op \
         (shed while measuring accepted: {shed_before})"
    );
    // The writer's cost per captured body: redacting 16 KiB of chat JSON with non-ASCII text.
    let message =
        r#"{"role":"user","content":"Résumé the attached notes, keep max_tokens low ✓"},"#;
    let body = format!(
        r#"{{"model":"gpt-4o","messages":[{}{{"role":"user","content":"key sk-abcdefghijklmnopqrstuvwx"}}]}}"#,
        message.repeat(16 * 1024 / message.len())
    );
    redact(&body); // compiles the rules
    let started = Instant::now();
    for _ in 0..20 {
        std::hint::black_box(redact(std::hint::black_box(&body)));
    }
    println!(
        "redact(): {:?} per {} byte body",
        started.elapsed() / 20,
        body.len()
    );
    writer.shutdown(SHUTDOWN).await;
}
