//! What every [`SessionStore`] must do, written once and run against each store by
//! [`conformance_tests!`] in the store's own test module.
//!
//! Time is driven through the `now_ms` arguments, starting from the real clock (Redis expires keys on
//! its own clock, so "now" must be near it); only the lock lease, a duration, needs real time to pass.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;

use super::model::{SentWindow, Session, Totals, Turn};
use super::store::{SessionStore, StoreError};
use crate::protocol::openai::{ChatMessage, Usage};

/// A store under test.
pub(crate) trait Backend: Sized {
    /// The store type.
    type Store: SessionStore;
    /// A fresh, empty backend; `None` when it cannot run here (the test skips itself).
    async fn start() -> Option<Self>;
    /// A new store instance on this backend's data: another connection, as another replica has.
    async fn store(&self) -> Self::Store;
}

/// One `#[tokio::test]` per conformance case, for the backend type given.
macro_rules! conformance_tests {
    ($backend:ty) => {
        conformance_tests!(
            $backend;
            create_and_get_keep_every_field,
            append_takes_turns_in_order_only,
            totals_sum_tokens_messages_bytes_and_exact_cost,
            list_pages_newest_first_per_owner,
            count_counts_live_sessions_of_one_owner,
            update_replaces_metadata_and_expiry_only,
            delete_removes_the_session_its_turns_and_its_lock,
            expired_sessions_are_invisible_and_purged,
            append_moves_the_expiry_by_the_ttl,
            lock_is_exclusive_and_unlock_needs_the_token,
            expired_lock_can_be_retaken,
            concurrent_appends_with_one_index_let_exactly_one_win,
            instances_share_sessions,
        );
    };
    ($backend:ty; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(backend) =
                    <$backend as $crate::sessions::conformance::Backend>::start().await
                {
                    $crate::sessions::conformance::$case(&backend).await;
                }
            }
        )+
    };
}
pub(crate) use conformance_tests;

const HOUR: i64 = 3_600_000;

fn now() -> i64 {
    crate::control::unix_ms()
}

fn session(id: &str, owner: &str, created_at: i64) -> Session {
    Session {
        id: id.to_owned(),
        object: "session".to_owned(),
        owner: owner.to_owned(),
        model: None,
        system: None,
        metadata: BTreeMap::new(),
        created_at,
        updated_at: created_at,
        expires_at: None,
        ttl_ms: None,
        turns: Vec::new(),
        totals: Totals::default(),
    }
}

fn turn(index: u64, cost: Option<&str>) -> Turn {
    Turn {
        index,
        request_id: format!("req_{index}"),
        model: "gpt-4o-mini".to_owned(),
        created_at: now(),
        input: vec![ChatMessage::text("user", format!("question {index}"))],
        output: Some(ChatMessage::text("assistant", format!("answer {index} ✓"))),
        usage: Some(Usage::new(100 + index, 10 + index)),
        cost_usd: cost.map(str::to_owned),
        cut: false,
        sent: SentWindow::default(),
        tokens: None,
    }
}

fn ids(sessions: &[Session]) -> Vec<&str> {
    sessions.iter().map(|s| s.id.as_str()).collect()
}

pub(crate) async fn create_and_get_keep_every_field(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    let mut output = ChatMessage::text("assistant", "calling");
    output.tool_calls = Some(vec![
        serde_json::from_value(json!({
            "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}
        }))
        .unwrap(),
    ]);
    output.extra.insert("refusal".to_owned(), json!(null));
    let first = Turn {
        index: 0,
        request_id: "req_full".to_owned(),
        model: "claude-sonnet".to_owned(),
        created_at: t - 5,
        input: vec![
            ChatMessage::text("user", "hello"),
            ChatMessage {
                role: "tool".to_owned(),
                tool_call_id: Some("call_0".to_owned()),
                ..ChatMessage::text("tool", "42")
            },
        ],
        output: Some(output),
        usage: Some(Usage::new(1234, 56)),
        cost_usd: Some("0.0000000375".to_owned()),
        cut: true,
        sent: SentWindow {
            first_turn: 0,
            dropped_turns: 2,
            summarized: true,
            input_tokens: 999,
        },
        tokens: None,
    };
    let full = Session {
        model: Some("gpt-4o-mini".to_owned()),
        system: Some("Be brief.".to_owned()),
        metadata: BTreeMap::from([
            ("team".to_owned(), json!("search")),
            ("n".to_owned(), json!(12_345_678_901_i64)),
            ("f".to_owned(), json!(0.1)),
            ("empty".to_owned(), json!([])),
            ("nested".to_owned(), json!({"a": [1, {"b": null}], "c": {}})),
        ]),
        updated_at: t - 1,
        expires_at: Some(t + HOUR),
        ttl_ms: Some(HOUR),
        turns: vec![first],
        totals: Totals {
            turns: 1,
            messages: 3,
            bytes: 321,
            input_tokens: 1234,
            output_tokens: 56,
            cost_usd: "0.0000000375".to_owned(),
        },
        ..session("sess_full", "key_a", t - 10)
    };
    store.create(&full).await.unwrap();
    assert_eq!(store.get("sess_full", t).await.unwrap(), Some(full.clone()));
    // Another instance (another replica's connection) reads the same.
    let other = backend.store().await;
    assert_eq!(other.get("sess_full", t).await.unwrap(), Some(full.clone()));

    let bare = session("sess_bare", "key_a", t);
    store.create(&bare).await.unwrap();
    assert_eq!(store.get("sess_bare", t).await.unwrap(), Some(bare));

    assert_eq!(store.get("sess_missing", t).await.unwrap(), None);
    let again = store.create(&session("sess_full", "key_b", t)).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    assert_eq!(
        store.get("sess_full", t).await.unwrap(),
        Some(full),
        "a refused create changes nothing"
    );
    // Turns not numbered from 0 are refused.
    let mut gap = session("sess_gap", "key_a", t);
    gap.turns = vec![turn(1, None)];
    assert!(matches!(
        store.create(&gap).await,
        Err(StoreError::Backend(_))
    ));
    assert_eq!(store.get("sess_gap", t).await.unwrap(), None);
}

pub(crate) async fn append_takes_turns_in_order_only(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    store.create(&session("sess_a", "key_a", t)).await.unwrap();
    let conflict = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Conflict));

    assert!(conflict(store.append("sess_a", &turn(1, None), t).await));
    store.append("sess_a", &turn(0, None), t + 1).await.unwrap();
    assert!(conflict(
        store.append("sess_a", &turn(0, None), t + 2).await
    ));
    assert!(conflict(
        store.append("sess_a", &turn(2, None), t + 2).await
    ));
    store.append("sess_a", &turn(1, None), t + 3).await.unwrap();
    assert!(conflict(
        store.append("sess_missing", &turn(0, None), t).await
    ));
    assert_eq!(store.get("sess_missing", t).await.unwrap(), None);

    let got = store.get("sess_a", t + 3).await.unwrap().unwrap();
    assert_eq!(got.turns, vec![turn_at(0, &got), turn_at(1, &got)]);
    assert_eq!(
        got.turns.iter().map(|t| t.index).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(got.updated_at, t + 3);
    assert_eq!(got.totals.turns, 2);
    assert_eq!(got.expires_at, None, "no ttl: no expiry");
}

/// The turn as appended (its `created_at` comes from the clock, so take it from what was stored).
fn turn_at(index: u64, stored: &Session) -> Turn {
    let position = usize::try_from(index).unwrap();
    Turn {
        created_at: stored.turns[position].created_at,
        ..turn(index, None)
    }
}

pub(crate) async fn totals_sum_tokens_messages_bytes_and_exact_cost(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    store.create(&session("sess_t", "key_a", t)).await.unwrap();
    let mut turns = vec![
        turn(0, Some("0.1")),
        turn(1, Some("0.2")),
        turn(2, Some("0.0000000375")),
        turn(3, Some("0.0000000375")),
        turn(4, Some("123456789.123456789")),
        turn(5, None),
    ];
    // A failed call: input only, no usage, no cost.
    turns[5].output = None;
    turns[5].usage = None;
    let mut expected_cost = Vec::new();
    for turn in &turns {
        store.append("sess_t", turn, t).await.unwrap();
        let got = store.get("sess_t", t).await.unwrap().unwrap();
        expected_cost.push(got.totals.cost_usd);
    }
    // Exact decimal sums, normalised: never 0.30000000000000004, never rounded to nano-USD.
    assert_eq!(
        expected_cost,
        [
            "0.1",
            "0.3",
            "0.3000000375",
            "0.300000075",
            "123456789.423456864",
            "123456789.423456864"
        ]
    );
    let bytes: usize = turns
        .iter()
        .flat_map(Turn::messages)
        .map(|m| serde_json::to_vec(m).unwrap().len())
        .sum();
    let expected = Totals {
        turns: 6,
        messages: 11,
        bytes: u64::try_from(bytes).unwrap(),
        input_tokens: 100 + 101 + 102 + 103 + 104,
        output_tokens: 10 + 11 + 12 + 13 + 14,
        cost_usd: "123456789.423456864".to_owned(),
    };
    let got = store.get("sess_t", t).await.unwrap().unwrap();
    assert_eq!(got.totals, expected);
    // Listings carry the totals too (and no turns).
    let page = store.list("key_a", None, 10, t).await.unwrap();
    assert_eq!(page.sessions.len(), 1);
    assert_eq!(page.sessions[0].totals, expected);
    assert!(page.sessions[0].turns.is_empty());

    // A cost that is not a plain decimal is refused and nothing is stored.
    let bad = store.append("sess_t", &turn(6, Some("-1")), t).await;
    assert!(matches!(bad, Err(StoreError::Backend(_))), "{bad:?}");
    let got = store.get("sess_t", t).await.unwrap().unwrap();
    assert_eq!((got.turns.len(), got.totals), (6, expected));
}

pub(crate) async fn list_pages_newest_first_per_owner(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    // a3 and a4 share a created_at: the larger id comes first.
    let created = [0, 1, 2, 3, 3, 5, 6];
    for (i, offset) in created.iter().enumerate() {
        store
            .create(&session(&format!("sess_a{i}"), "alice", t + offset))
            .await
            .unwrap();
    }
    store.create(&session("sess_b0", "bob", t)).await.unwrap();
    store
        .create(&session("sess_b1", "bob", t + 9))
        .await
        .unwrap();
    // Alice's session expired a moment ago: never listed.
    let mut gone = session("sess_a_gone", "alice", t + 4);
    gone.expires_at = Some(t - 1);
    store.create(&gone).await.unwrap();

    let first = store.list("alice", None, 3, t).await.unwrap();
    assert_eq!(ids(&first.sessions), ["sess_a6", "sess_a5", "sess_a4"]);
    assert!(first.has_more);
    let second = store.list("alice", Some("sess_a4"), 3, t).await.unwrap();
    assert_eq!(ids(&second.sessions), ["sess_a3", "sess_a2", "sess_a1"]);
    assert!(second.has_more);
    let third = store.list("alice", Some("sess_a1"), 3, t).await.unwrap();
    assert_eq!(ids(&third.sessions), ["sess_a0"]);
    assert!(!third.has_more);
    // Exactly a page's worth left: no more after it.
    let exact = store.list("alice", Some("sess_a3"), 3, t).await.unwrap();
    assert_eq!(ids(&exact.sessions), ["sess_a2", "sess_a1", "sess_a0"]);
    assert!(!exact.has_more);
    let all = store.list("alice", None, 100, t).await.unwrap();
    assert_eq!(all.sessions.len(), 7);
    assert!(!all.has_more);
    assert_eq!(
        store.list("alice", None, 0, t).await.unwrap(),
        super::store::Page {
            sessions: Vec::new(),
            has_more: true
        }
    );

    let bob = store.list("bob", None, 10, t).await.unwrap();
    assert_eq!(ids(&bob.sessions), ["sess_b1", "sess_b0"]);
    assert!(
        store
            .list("carol", None, 10, t)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
    // Another owner's session, or an unknown one, is no cursor.
    let foreign = store.list("alice", Some("sess_b1"), 10, t).await.unwrap();
    assert!(foreign.sessions.is_empty() && !foreign.has_more);
    let unknown = store.list("alice", Some("sess_zz"), 10, t).await.unwrap();
    assert!(unknown.sessions.is_empty() && !unknown.has_more);
}

pub(crate) async fn count_counts_live_sessions_of_one_owner(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    store.create(&session("sess_1", "alice", t)).await.unwrap();
    let mut later = session("sess_2", "alice", t);
    later.expires_at = Some(t + HOUR);
    store.create(&later).await.unwrap();
    let mut gone = session("sess_3", "alice", t);
    gone.expires_at = Some(t - 1);
    store.create(&gone).await.unwrap();
    store.create(&session("sess_4", "bob", t)).await.unwrap();

    assert_eq!(store.count("alice", t).await.unwrap(), 2);
    assert_eq!(store.count("bob", t).await.unwrap(), 1);
    assert_eq!(store.count("carol", t).await.unwrap(), 0);
    assert_eq!(store.count("alice", t + 2 * HOUR).await.unwrap(), 1);
    assert!(store.delete("sess_1").await.unwrap());
    assert_eq!(store.count("alice", t).await.unwrap(), 1);
}

pub(crate) async fn update_replaces_metadata_and_expiry_only(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    let mut original = session("sess_u", "alice", t);
    original.model = Some("m1".to_owned());
    original.system = Some("s1".to_owned());
    original.metadata = BTreeMap::from([("a".to_owned(), json!(1))]);
    original.expires_at = Some(t + HOUR);
    store.create(&original).await.unwrap();
    store
        .append("sess_u", &turn(0, Some("0.5")), t)
        .await
        .unwrap();
    let before = store.get("sess_u", t).await.unwrap().unwrap();

    let mut change = before.clone();
    change.metadata = BTreeMap::from([("b".to_owned(), json!({"x": [true]}))]);
    change.expires_at = Some(t + 3 * HOUR);
    change.ttl_ms = Some(2 * HOUR);
    change.updated_at = t + 10;
    // Not part of an update: ignored.
    change.model = Some("m2".to_owned());
    change.system = None;
    change.owner = "mallory".to_owned();
    change.created_at = 0;
    change.turns.clear();
    change.totals = Totals::default();
    assert!(store.update(&change).await.unwrap());

    let after = store.get("sess_u", t + 10).await.unwrap().unwrap();
    let expected = Session {
        metadata: change.metadata.clone(),
        expires_at: Some(t + 3 * HOUR),
        ttl_ms: Some(2 * HOUR),
        updated_at: t + 10,
        ..before.clone()
    };
    assert_eq!(after, expected);
    assert_eq!(store.count("alice", t).await.unwrap(), 1);
    assert_eq!(store.count("mallory", t).await.unwrap(), 0);
    // Live past the old expiry now.
    assert!(store.get("sess_u", t + 2 * HOUR).await.unwrap().is_some());

    // Expiry removed: never expires.
    let forever = Session {
        expires_at: None,
        ttl_ms: None,
        updated_at: t + 20,
        ..expected.clone()
    };
    assert!(store.update(&forever).await.unwrap());
    assert_eq!(
        store.get("sess_u", t + 100 * HOUR).await.unwrap(),
        Some(forever.clone())
    );
    assert_eq!(store.active(t + 100 * HOUR).await.unwrap(), 1);

    assert!(
        !store
            .update(&session("sess_missing", "alice", t))
            .await
            .unwrap()
    );
    // An update stamped after the expiry finds the session gone (and does not revive it).
    let mut short = session("sess_short", "alice", t);
    short.expires_at = Some(t + HOUR);
    store.create(&short).await.unwrap();
    let mut late = short.clone();
    late.updated_at = t + 2 * HOUR;
    late.expires_at = Some(t + 5 * HOUR);
    assert!(!store.update(&late).await.unwrap());
    assert_eq!(store.get("sess_short", t).await.unwrap(), Some(short));
}

pub(crate) async fn delete_removes_the_session_its_turns_and_its_lock(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    store.create(&session("sess_d", "alice", t)).await.unwrap();
    store
        .create(&session("sess_keep", "alice", t))
        .await
        .unwrap();
    store.append("sess_d", &turn(0, None), t).await.unwrap();
    assert!(store.lock("sess_d", 60_000).await.unwrap().is_some());

    assert!(store.delete("sess_d").await.unwrap());
    assert_eq!(store.get("sess_d", t).await.unwrap(), None);
    assert_eq!(
        ids(&store.list("alice", None, 10, t).await.unwrap().sessions),
        ["sess_keep"]
    );
    assert_eq!(store.count("alice", t).await.unwrap(), 1);
    assert_eq!(store.active(t).await.unwrap(), 1);
    assert!(!store.delete("sess_d").await.unwrap());
    assert!(matches!(
        store.append("sess_d", &turn(1, None), t).await,
        Err(StoreError::Conflict)
    ));

    // The id can be used again, from scratch: no turns, no lock left over.
    let fresh = session("sess_d", "alice", t + 1);
    store.create(&fresh).await.unwrap();
    assert_eq!(store.get("sess_d", t).await.unwrap(), Some(fresh));
    assert!(store.lock("sess_d", 60_000).await.unwrap().is_some());
    store.append("sess_d", &turn(0, None), t).await.unwrap();
}

pub(crate) async fn expired_sessions_are_invisible_and_purged(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    let later = t + 2 * HOUR;
    let mut within_hour = session("sess_hour", "alice", t);
    within_hour.expires_at = Some(t + HOUR);
    store.create(&within_hour).await.unwrap();
    store
        .create(&session("sess_forever", "alice", t))
        .await
        .unwrap();
    let mut past = session("sess_past", "alice", t);
    past.expires_at = Some(t - 1);
    store.create(&past).await.unwrap();
    store.append("sess_hour", &turn(0, None), t).await.unwrap();

    assert_eq!(store.get("sess_past", t).await.unwrap(), None);
    assert!(store.get("sess_hour", t).await.unwrap().is_some());
    assert_eq!(store.active(t).await.unwrap(), 2);

    // Two hours on, the hour's session is gone for every read and write.
    assert_eq!(store.get("sess_hour", later).await.unwrap(), None);
    assert_eq!(
        ids(&store.list("alice", None, 10, later).await.unwrap().sessions),
        ["sess_forever"]
    );
    assert_eq!(store.count("alice", later).await.unwrap(), 1);
    assert_eq!(store.active(later).await.unwrap(), 1);
    assert!(matches!(
        store.append("sess_hour", &turn(1, None), later).await,
        Err(StoreError::Conflict)
    ));
    let mut touch = within_hour.clone();
    touch.updated_at = later;
    assert!(!store.update(&touch).await.unwrap());

    // Purging at `t` takes the one already past; at `later`, the hour's one too; then nothing.
    assert_eq!(store.purge_expired(t).await.unwrap(), 1);
    assert!(store.get("sess_hour", t).await.unwrap().is_some());
    assert_eq!(store.purge_expired(later).await.unwrap(), 1);
    assert_eq!(store.purge_expired(later).await.unwrap(), 0);
    // Really deleted: invisible even at a time it was live, turns and all.
    assert_eq!(store.get("sess_hour", t).await.unwrap(), None);
    assert_eq!(store.active(t).await.unwrap(), 1);
    assert_eq!(store.count("alice", t).await.unwrap(), 1);
    assert!(store.get("sess_forever", later).await.unwrap().is_some());
    // Nothing of it is left over for a session of the same id.
    let reborn = session("sess_hour", "alice", later);
    store.create(&reborn).await.unwrap();
    assert_eq!(store.get("sess_hour", later).await.unwrap(), Some(reborn));
    store
        .append("sess_hour", &turn(0, None), later)
        .await
        .unwrap();
    assert!(!store.delete("sess_past").await.unwrap());
}

pub(crate) async fn append_moves_the_expiry_by_the_ttl(backend: &impl Backend) {
    let store = backend.store().await;
    let t = now();
    let mut s = session("sess_ttl", "alice", t);
    s.ttl_ms = Some(HOUR);
    s.expires_at = Some(t + HOUR);
    store.create(&s).await.unwrap();

    let half = t + HOUR / 2;
    store
        .append("sess_ttl", &turn(0, None), half)
        .await
        .unwrap();
    let got = store.get("sess_ttl", half).await.unwrap().unwrap();
    assert_eq!(got.expires_at, Some(half + HOUR));
    assert_eq!(got.updated_at, half);

    // Past the first expiry, still live, and not purged.
    let past_first = t + HOUR + 1;
    assert!(store.get("sess_ttl", past_first).await.unwrap().is_some());
    assert_eq!(store.active(past_first).await.unwrap(), 1);
    assert_eq!(store.purge_expired(past_first).await.unwrap(), 0);
    assert_eq!(store.get("sess_ttl", half + HOUR).await.unwrap(), None);
    assert_eq!(store.purge_expired(half + HOUR).await.unwrap(), 1);
}

pub(crate) async fn lock_is_exclusive_and_unlock_needs_the_token(backend: &impl Backend) {
    let store = backend.store().await;
    let other = backend.store().await;
    let t = now();
    store.create(&session("sess_l", "alice", t)).await.unwrap();

    let first = store.lock("sess_l", 60_000).await.unwrap().unwrap();
    assert_eq!(store.lock("sess_l", 60_000).await.unwrap(), None);
    assert_eq!(other.lock("sess_l", 60_000).await.unwrap(), None);
    // A lock is per session.
    assert!(store.lock("sess_other", 60_000).await.unwrap().is_some());

    other.unlock("sess_l", "not-the-token").await.unwrap();
    assert_eq!(store.lock("sess_l", 60_000).await.unwrap(), None);

    other.unlock("sess_l", &first).await.unwrap();
    let second = other.lock("sess_l", 60_000).await.unwrap().unwrap();
    assert_ne!(first, second);
    // The first holder's stale token no longer releases anything.
    store.unlock("sess_l", &first).await.unwrap();
    assert_eq!(store.lock("sess_l", 60_000).await.unwrap(), None);
    other.unlock("sess_l", &second).await.unwrap();
    assert!(store.lock("sess_l", 60_000).await.unwrap().is_some());
}

pub(crate) async fn expired_lock_can_be_retaken(backend: &impl Backend) {
    let store = backend.store().await;
    let crashed = store.lock("sess_x", 50).await.unwrap().unwrap();
    // The holder never unlocks; its lease runs out. Poll until then, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let retaken = loop {
        if let Some(token) = store.lock("sess_x", 60_000).await.unwrap() {
            break token;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a 50 ms lease still held after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(retaken, crashed);
    // The new holder's lease is long: held.
    assert_eq!(store.lock("sess_x", 60_000).await.unwrap(), None);
    store.unlock("sess_x", &crashed).await.unwrap();
    assert_eq!(store.lock("sess_x", 60_000).await.unwrap(), None);
}

pub(crate) async fn concurrent_appends_with_one_index_let_exactly_one_win(backend: &impl Backend) {
    let stores = [backend.store().await, backend.store().await];
    let t = now();
    stores[0]
        .create(&session("sess_race", "alice", t))
        .await
        .unwrap();
    let contenders: Vec<Turn> = (0..20)
        .map(|i| Turn {
            request_id: format!("req_racer_{i}"),
            ..turn(0, Some("0.01"))
        })
        .collect();
    let results = join_all(
        contenders
            .iter()
            .enumerate()
            .map(|(i, turn)| stores[i % 2].append("sess_race", turn, t)),
    )
    .await;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.is_ok().then_some(i))
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict))),
        "{results:?}"
    );
    let got = stores[1].get("sess_race", t).await.unwrap().unwrap();
    assert_eq!(got.turns.len(), 1);
    assert_eq!(got.turns[0].request_id, contenders[winners[0]].request_id);
    assert_eq!(
        (got.totals.turns, got.totals.cost_usd.as_str()),
        (1, "0.01")
    );
}

pub(crate) async fn instances_share_sessions(backend: &impl Backend) {
    let a = backend.store().await;
    let b = backend.store().await;
    let t = now();
    a.create(&session("sess_shared", "alice", t)).await.unwrap();
    assert!(b.get("sess_shared", t).await.unwrap().is_some());
    b.append("sess_shared", &turn(0, None), t).await.unwrap();
    assert!(matches!(
        a.append("sess_shared", &turn(0, None), t).await,
        Err(StoreError::Conflict)
    ));
    a.append("sess_shared", &turn(1, None), t).await.unwrap();
    assert_eq!(
        b.get("sess_shared", t).await.unwrap().unwrap().turns.len(),
        2
    );
    assert_eq!(b.count("alice", t).await.unwrap(), 1);
    assert_eq!(
        ids(&b.list("alice", None, 10, t).await.unwrap().sessions),
        ["sess_shared"]
    );
    assert!(b.delete("sess_shared").await.unwrap());
    assert_eq!(a.get("sess_shared", t).await.unwrap(), None);
}
