//! Conversation sessions end to end: multi-turn over stream and non-stream calls and `/v1/messages`,
//! what the upstream receives, truncation, ownership, TTL, concurrent turns, cut streams, restart.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::testkit::upstream::{Behavior, MockUpstream};

use crate::common::{TestApp, read_sse, standard_config};

const KEY_A: &str = "sk-sessions-key-a-0123456789";
const KEY_B: &str = "sk-sessions-key-b-0123456789";

fn sha(secret: &str) -> String {
    sluice::control::encode_hash(&sluice::control::keys::hash_secret(secret))
}

/// The standard config (models `gpt` → the mock upstream, `claude` → its Anthropic side) with two keys
/// and `extra` appended.
fn config(upstream: &MockUpstream, extra: &str) -> String {
    format!(
        "{}\n[auth]\nrequired = true\n[[auth.keys]]\nname = \"a\"\nsecret_sha256 = \"{}\"\n\
         [[auth.keys]]\nname = \"b\"\nsecret_sha256 = \"{}\"\n{extra}",
        standard_config(&upstream.base_url(), "", ""),
        sha(KEY_A),
        sha(KEY_B),
    )
}

async fn start(upstream: &MockUpstream, extra: &str) -> TestApp {
    TestApp::start_secured(&config(upstream, extra), tempfile::tempdir().unwrap()).await
}

async fn create(app: &TestApp, key: &str, body: Value) -> String {
    let resp = app
        .client
        .post(app.url("/v1/sessions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let session: Value = resp.json().await.unwrap();
    assert_eq!(session["object"], "session");
    session["id"].as_str().unwrap().to_owned()
}

async fn get(app: &TestApp, key: &str, id: &str) -> (u16, Value) {
    let resp = app
        .client
        .get(app.url(&format!("/v1/sessions/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn turn(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

async fn chat(app: &TestApp, key: &str, id: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("x-sluice-session-id", id)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Roles and texts of the messages the upstream received in request `n`.
fn sent(upstream: &MockUpstream, n: usize) -> Vec<(String, String)> {
    let requests = upstream.requests();
    requests[n].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(r, t)| ((*r).to_owned(), (*t).to_owned()))
        .collect()
}

const REPLY: &str = "Hello from the mock upstream.";

#[tokio::test]
async fn a_conversation_over_stream_and_non_stream_turns() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream, "").await;
    let id = create(
        &app,
        KEY_A,
        json!({"model": "gpt", "system": "Be brief.", "metadata": {"user": "ada"}}),
    )
    .await;
    // Turn 1, non-streaming; the body field works as well as the header.
    let resp = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(KEY_A)
        .json(&json!({"model": "gpt", "session_id": id, "messages": [{"role": "user", "content": "My name is Ada."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = sent(&upstream, 0);
    assert_eq!(
        first,
        pairs(&[("system", "Be brief."), ("user", "My name is Ada.")])
    );
    assert!(
        upstream.requests()[0].body.get("session_id").is_none(),
        "session_id never goes upstream"
    );
    // Turn 2, streaming, only the new message sent by the client.
    let resp = chat(&app, KEY_A, &id, &turn("gpt", "What is my name?", true)).await;
    assert_eq!(resp.status(), 200);
    read_sse(resp).await;
    assert_eq!(
        sent(&upstream, 1),
        pairs(&[
            ("system", "Be brief."),
            ("user", "My name is Ada."),
            ("assistant", REPLY),
            ("user", "What is my name?"),
        ])
    );
    // Turn 3 sees the streamed reply, stored as it passed.
    let resp = chat(&app, KEY_A, &id, &turn("gpt", "Thanks.", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(sent(&upstream, 2).len(), 6);
    assert_eq!(
        sent(&upstream, 2)[4],
        ("assistant".to_owned(), REPLY.to_owned())
    );
    let (status, session) = get(&app, KEY_A, &id).await;
    assert_eq!(status, 200);
    let turns = session["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "{session}");
    assert_eq!(turns[1]["input"][0]["content"], "What is my name?");
    assert_eq!(turns[1]["output"]["content"], REPLY);
    assert_eq!(turns[1]["cut"], false);
    assert_eq!(turns[1]["usage"]["prompt_tokens"], 12, "{session}");
    assert_eq!(turns[2]["sent"]["dropped_turns"], 0);
    assert_eq!(session["totals"]["turns"], 3);
    assert_eq!(session["totals"]["messages"], 6);
    assert_eq!(session["metadata"]["user"], "ada");
    let metrics = metrics(&app).await;
    assert!(
        metrics.lines().any(|l| l == "sluice_session_turns_total 3"),
        "{metrics}"
    );
}

async fn metrics(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn tool_calls_round_trip_through_a_session() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        tool_call: Some(("get_weather".to_owned(), r#"{"city":"Paris"}"#.to_owned())),
        ..Behavior::default()
    });
    let app = start(&upstream, "").await;
    let id = create(&app, KEY_A, json!({"model": "gpt"})).await;
    let resp = chat(&app, KEY_A, &id, &turn("gpt", "Weather in Paris?", true)).await;
    let events = read_sse(resp).await;
    let call_id = events
        .iter()
        .find_map(|e| {
            let v: Value = serde_json::from_str(&e.data).ok()?;
            v["choices"][0]["delta"]["tool_calls"][0]["id"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap();
    upstream.set_behavior(Behavior::default());
    let result = json!({"model": "gpt", "messages": [{"role": "tool", "tool_call_id": call_id, "content": "18C"}]});
    assert_eq!(chat(&app, KEY_A, &id, &result).await.status(), 200);
    let second = &upstream.requests()[1].body["messages"];
    assert_eq!(second[1]["role"], "assistant", "{second}");
    assert_eq!(second[1]["tool_calls"][0]["id"], call_id.as_str());
    assert_eq!(
        second[1]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        second[1]["tool_calls"][0]["function"]["arguments"],
        r#"{"city":"Paris"}"#
    );
    assert_eq!(second[2]["role"], "tool");
}

#[tokio::test]
async fn anthropic_messages_join_sessions_too() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream, "").await;
    let id = create(&app, KEY_A, json!({"system": "Be brief."})).await;
    for text in ["Hi, I am Ada.", "Who am I?"] {
        let resp = app
            .client
            .post(app.url("/v1/messages"))
            .header("x-api-key", KEY_A)
            .header("x-sluice-session-id", &id)
            .json(&json!({"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["type"], "message", "{body}");
    }
    let second = &upstream.requests()[1].body;
    assert_eq!(second["system"], "Be brief.", "{second}");
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 3, "{second}");
    assert_eq!(messages[1]["role"], "assistant");
    // A model is required when the session has none: the 400 is Anthropic-shaped.
    let (_, session) = get(&app, KEY_A, &id).await;
    assert_eq!(session["turns"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn old_turns_are_dropped_to_fit_the_context_window() {
    let upstream = MockUpstream::start().await.unwrap();
    // Room for the system prompt, a few turns and the reply.
    let app = start(
        &upstream,
        "[models.small]\nprovider = \"up\"\ncontext_window = 120\n",
    )
    .await;
    let id = create(
        &app,
        KEY_A,
        json!({"model": "small", "system": "You are a terse assistant."}),
    )
    .await;
    for i in 0..8 {
        let body = json!({"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": format!("message number {i} with a few words")}]});
        assert_eq!(
            chat(&app, KEY_A, &id, &body).await.status(),
            200,
            "turn {i}"
        );
    }
    let last = sent(&upstream, 7);
    assert_eq!(last[0].0, "system", "the system prompt stays");
    assert_eq!(last.last().unwrap().1, "message number 7 with a few words");
    assert!(last.len() < 2 + 7 * 2, "nothing was dropped: {last:?}");
    // The newest turns are the ones kept, in order.
    assert_eq!(
        last[last.len() - 2],
        ("assistant".to_owned(), REPLY.to_owned())
    );
    assert_eq!(last[last.len() - 3].1, "message number 6 with a few words");
    let (_, session) = get(&app, KEY_A, &id).await;
    let sent_window = &session["turns"][7]["sent"];
    assert!(
        sent_window["dropped_turns"].as_u64().unwrap() > 0,
        "{sent_window}"
    );
    assert_eq!(
        sent_window["first_turn"].as_u64().unwrap(),
        sent_window["dropped_turns"].as_u64().unwrap()
    );
    let metrics = metrics(&app).await;
    let truncated: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("sluice_session_truncated_turns_total ")?
                .parse()
                .ok()
        })
        .unwrap();
    assert!(
        truncated >= sent_window["dropped_turns"].as_u64().unwrap(),
        "{metrics}"
    );
    // All 8 turns are still stored: truncation only changes what is sent.
    assert_eq!(session["turns"].as_array().unwrap().len(), 8);
    // A single message larger than the window: 400 context_length_exceeded.
    let huge =
        json!({"model": "small", "messages": [{"role": "user", "content": "word ".repeat(500)}]});
    let resp = chat(&app, KEY_A, &id, &huge).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "context_length_exceeded", "{err}");
}

#[tokio::test]
async fn a_session_belongs_to_its_key() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(&upstream, "").await;
    let id = create(&app, KEY_A, json!({"model": "gpt"})).await;
    let other = create(&app, KEY_B, json!({"model": "gpt"})).await;
    assert_eq!(get(&app, KEY_B, &id).await.0, 404);
    let resp = chat(&app, KEY_B, &id, &turn("gpt", "hi", false)).await;
    assert_eq!(resp.status(), 404);
    assert!(
        upstream.requests().is_empty(),
        "no call was made for another key's session"
    );
    let list: Value = app
        .client
        .get(app.url("/v1/sessions"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    assert!(!ids.contains(&other.as_str()));
    // Delete: B cannot, A can; then it is gone.
    let delete = |key: &'static str| {
        app.client
            .delete(app.url(&format!("/v1/sessions/{id}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(delete(KEY_B).await.unwrap().status(), 404);
    assert_eq!(delete(KEY_A).await.unwrap().status(), 200);
    assert_eq!(get(&app, KEY_A, &id).await.0, 404);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(
        &upstream,
        "[sessions]\nmax_turn_bytes = 200\nmax_sessions_per_key = 2\n",
    )
    .await;
    let post = |body: Value| {
        app.client
            .post(app.url("/v1/sessions"))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
    };
    for (body, status) in [
        (json!({"model": "nope"}), 404),
        (json!({"ttl_seconds": 0}), 400),
        (json!({"ttl_seconds": 999_999_999}), 400),
        (json!({"colour": "red"}), 400),
    ] {
        assert_eq!(post(body.clone()).await.unwrap().status(), status, "{body}");
    }
    let id = create(&app, KEY_A, json!({"model": "gpt"})).await;
    let long = turn("gpt", &"x".repeat(300), false);
    let resp = chat(&app, KEY_A, &id, &long).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"].as_str().unwrap().contains("bytes"),
        "{err}"
    );
    let resp = chat(&app, KEY_A, "sess_nope", &turn("gpt", "hi", false)).await;
    assert_eq!(resp.status(), 404);
    create(&app, KEY_A, json!({})).await;
    let resp = post(json!({})).await.unwrap();
    assert_eq!(resp.status(), 429, "the third session of a key with max 2");
    // A session without a model needs one per turn.
    let bare = create(&app, KEY_B, json!({})).await;
    let resp = chat(&app, KEY_B, &bare, &turn("", "hi", false)).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn a_second_concurrent_turn_gets_409_and_nothing_is_lost() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_millis(40),
        ..Behavior::default()
    });
    let app = start(&upstream, "").await;
    let id = create(&app, KEY_A, json!({"model": "gpt"})).await;
    let first = chat(&app, KEY_A, &id, &turn("gpt", "first", true)).await;
    assert_eq!(first.status(), 200);
    let second = chat(&app, KEY_A, &id, &turn("gpt", "second", false)).await;
    assert_eq!(second.status(), 409);
    let err: Value = second.json().await.unwrap();
    assert_eq!(err["error"]["code"], "session_busy", "{err}");
    read_sse(first).await;
    // Once the first turn ended, the retry goes through and sees it.
    let retry = chat(&app, KEY_A, &id, &turn("gpt", "second", false)).await;
    assert_eq!(retry.status(), 200);
    let (_, session) = get(&app, KEY_A, &id).await;
    let inputs: Vec<&str> = session["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["input"][0]["content"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, vec!["first", "second"]);
}

#[tokio::test]
async fn a_stream_cut_by_the_client_is_stored_as_cut() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_millis(30),
        ..Behavior::default()
    });
    let app = start(&upstream, "").await;
    let id = create(&app, KEY_A, json!({"model": "gpt"})).await;
    let resp = chat(&app, KEY_A, &id, &turn("gpt", "tell me a story", true)).await;
    // Read until the first words arrived, then hang up.
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("Hello") {
        let bytes = futures_util::StreamExt::next(&mut body)
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    drop(body);
    assert!(upstream.wait_stream_dropped(Duration::from_secs(5)).await);
    // The cut turn is stored from a task; the next turn waits for nothing but may race it, so poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let session = loop {
        let (_, session) = get(&app, KEY_A, &id).await;
        if session["turns"].as_array().is_some_and(|t| !t.is_empty()) {
            break session;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut turn was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let turn0 = &session["turns"][0];
    assert_eq!(turn0["cut"], true, "{turn0}");
    assert!(
        turn0["output"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello"),
        "{turn0}"
    );
}

#[tokio::test]
async fn sessions_survive_a_restart_and_expire() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_secured(&config(&upstream, ""), dir).await;
    let id = create(&app, KEY_A, json!({"model": "gpt", "system": "Remember."})).await;
    assert_eq!(
        chat(&app, KEY_A, &id, &turn("gpt", "one", false))
            .await
            .status(),
        200
    );
    let short = create(&app, KEY_A, json!({"model": "gpt", "ttl_seconds": 1})).await;
    let (dir, _) = app.stop().await;
    let app = TestApp::start_secured(&config(&upstream, ""), dir).await;
    assert_eq!(
        chat(&app, KEY_A, &id, &turn("gpt", "two", false))
            .await
            .status(),
        200
    );
    assert_eq!(
        sent(&upstream, 1).len(),
        4,
        "the history came back after the restart"
    );
    // The one-second session expires (time passing is the point here, not synchronisation).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while get(&app, KEY_A, &short).await.0 != 404 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn turns_that_no_longer_fit_are_summarised_when_configured() {
    let upstream = MockUpstream::start().await.unwrap();
    let app = start(
        &upstream,
        "[models.small]\nprovider = \"up\"\ncontext_window = 300\n\
         [sessions]\nsummarize_with = \"gpt\"\nsummary_max_tokens = 50\n",
    )
    .await;
    let id = create(
        &app,
        KEY_A,
        json!({"model": "small", "system": "You are terse."}),
    )
    .await;
    for i in 0..12 {
        let body = json!({"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": format!("message number {i} with a few more words in it")}]});
        assert_eq!(
            chat(&app, KEY_A, &id, &body).await.status(),
            200,
            "turn {i}"
        );
    }
    let requests = upstream.requests();
    let summaries: Vec<_> = requests
        .iter()
        .filter(|r| r.body["model"] == "gpt-upstream")
        .collect();
    assert!(!summaries.is_empty(), "no summary was asked for");
    assert_eq!(summaries[0].body["temperature"], 0.0);
    let transcript = summaries[0].body["messages"].to_string();
    assert!(transcript.contains("message number 0"), "{transcript}");
    let last = &requests.last().unwrap().body["messages"];
    assert_eq!(last[0]["content"], "You are terse.", "{last}");
    assert_eq!(last[1]["role"], "system", "{last}");
    assert_eq!(
        last[1]["content"],
        format!("Summary of the earlier conversation: {REPLY}"),
        "{last}"
    );
    let (_, session) = get(&app, KEY_A, &id).await;
    let sent_window = &session["turns"][11]["sent"];
    assert_eq!(sent_window["summarized"], true, "{sent_window}");
    assert!(sent_window["dropped_turns"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn cut_turns_are_dropped_when_configured_and_the_session_stays_usable() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior {
        token_delay: Duration::from_millis(30),
        ..Behavior::default()
    });
    let app = start(&upstream, "[sessions]\nkeep_cut_turns = false\n").await;
    let id = create(&app, KEY_A, json!({"model": "gpt"})).await;
    let resp = chat(&app, KEY_A, &id, &turn("gpt", "tell me a story", true)).await;
    let mut body = resp.bytes_stream();
    futures_util::StreamExt::next(&mut body)
        .await
        .unwrap()
        .unwrap();
    drop(body);
    assert!(upstream.wait_stream_dropped(Duration::from_secs(5)).await);
    upstream.set_behavior(Behavior::default());
    // The lock is released from a task: the next turn may see 409 for a moment, never a lost message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let resp = chat(&app, KEY_A, &id, &turn("gpt", "again", false)).await;
        if resp.status() == 200 {
            break;
        }
        assert_eq!(resp.status(), 409);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut turn never released the session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, session) = get(&app, KEY_A, &id).await;
    let turns = session["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1, "{session}");
    assert_eq!(turns[0]["input"][0]["content"], "again");
    assert_eq!(turns[0]["cut"], false);
}
