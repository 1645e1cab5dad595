//! Several `sluice` processes behind one key: with the Redis backend no more than each limit is admitted
//! across all replicas; with the memory backend each replica counts alone (the documented N× overshoot).

use serde_json::{Value, json};

use crate::common::spawn_sluice;

/// Replicas per test.
const REPLICAS: usize = 3;
/// Requests per limit, spread over the replicas, all in flight at once.
const CALLS: usize = 30;

const RPM_KEY: &str = "sk-replica-rpm-0123456789";
const TPM_KEY: &str = "sk-replica-tpm-0123456789";
const BUDGET_KEY: &str = "sk-replica-budget-0123456789";

fn sha(secret: &str) -> String {
    sluice::control::encode_hash(&sluice::control::keys::hash_secret(secret))
}

/// The mock provider (5 output tokens; "hi" = 7 + 5 = 12 tokens, 0.012 USD at 1,000 USD per million);
/// three keys: rpm = 6, tpm = 100, budget 0.05 USD. `state` is the `[state]` section.
fn config(state: &str) -> String {
    format!(
        r#"
[server]
shutdown_grace = "1s"
[providers.mock]
kind = "mock"
output_tokens = 5
[models.mock-gpt]
provider = "mock"
price = {{ input = "1000", output = "1000" }}
[request_log]
enabled = false
[auth]
required = true
[[auth.keys]]
name = "rpm"
secret_sha256 = "{}"
limits = {{ rpm = 6 }}
[[auth.keys]]
name = "tpm"
secret_sha256 = "{}"
limits = {{ tpm = 100 }}
[[auth.keys]]
name = "budget"
secret_sha256 = "{}"
budget = {{ usd = "0.05", period = "total" }}
{state}
"#,
        sha(RPM_KEY),
        sha(TPM_KEY),
        sha(BUDGET_KEY)
    )
}

/// A set of running replicas; killed on drop.
struct Replicas {
    children: Vec<std::process::Child>,
    addrs: Vec<String>,
    /// Each replica's config, request log and state.
    dirs: Vec<tempfile::TempDir>,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn start_replicas(config_text: &str, env: &[(&str, &str)]) -> Replicas {
    let mut replicas = Replicas {
        children: Vec::new(),
        addrs: Vec::new(),
        dirs: Vec::new(),
    };
    for _ in 0..REPLICAS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, config_text).unwrap();
        let (child, addr) = spawn_sluice(&path, dir.path(), env).await;
        replicas.children.push(child);
        replicas.addrs.push(addr);
        replicas.dirs.push(dir);
    }
    replicas
}

/// Sends `CALLS` calls with `key`, round-robin over the replicas, all at once; returns the responses'
/// statuses and, for admitted calls, their `x-sluice-cost-usd`.
async fn burst(addrs: &[String], key: &str) -> Vec<(u16, Option<String>)> {
    let client = reqwest::Client::new();
    let body = json!({"model": "mock-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let calls = (0..CALLS).map(|i| {
        let url = format!("http://{}/v1/chat/completions", addrs[i % addrs.len()]);
        let request = client.post(url).bearer_auth(key).json(&body).send();
        async move {
            let resp = request.await.unwrap();
            let status = resp.status().as_u16();
            let cost = resp
                .headers()
                .get("x-sluice-cost-usd")
                .map(|v| v.to_str().unwrap().to_owned());
            let _: Value = resp.json().await.unwrap();
            (status, cost)
        }
    });
    futures_util::future::join_all(calls).await
}

fn admitted(results: &[(u16, Option<String>)]) -> usize {
    for (status, _) in results {
        assert!(
            *status == 200 || *status == 429,
            "unexpected status {status}"
        );
    }
    results.iter().filter(|(s, _)| *s == 200).count()
}

/// What the three keys' bursts admitted: (rpm calls, tpm calls, budget calls).
async fn run_bursts(addrs: &[String]) -> (usize, usize, usize) {
    let rpm = admitted(&burst(addrs, RPM_KEY).await);
    let tpm = admitted(&burst(addrs, TPM_KEY).await);
    let budget = admitted(&burst(addrs, BUDGET_KEY).await);
    (rpm, tpm, budget)
}

#[tokio::test]
async fn with_the_memory_backend_each_replica_counts_alone() {
    let replicas = start_replicas(&config("[state]\nbackend = \"memory\"\n"), &[]).await;
    let (rpm, tpm, budget) = run_bursts(&replicas.addrs).await;
    // Each replica admits its own 6 requests: 3 x the limit.
    assert_eq!(rpm, 6 * REPLICAS, "rpm");
    // Each replica admits at least 3 calls of 28 reserved tokens (84 <= 100): at least 9 x 12 = 108
    // tokens, more than the limit of 100.
    assert!(tpm * 12 > 100, "tpm: {tpm} calls");
    // Each replica admits at least 3 calls of 0.013 reserved (0.039 <= 0.05): 0.108 USD spent in all.
    assert!(budget * 12 > 50, "budget: {budget} calls");
}

/// A private Redis for one test, or `None` (skip) when `redis-server` is not installed outside CI.
async fn redis() -> Option<sluice::testkit::redis::RedisServer> {
    sluice::testkit::redis::RedisServer::start_or_skip()
        .await
        .unwrap()
}

fn redis_state(redis: &sluice::testkit::redis::RedisServer, policy: &str) -> String {
    format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"{policy}\"\n\
         [admin]\napi_key_env = \"SLUICE_TEST_UPSTREAM_KEY\"\n",
        redis.url()
    )
}

#[tokio::test]
async fn with_redis_no_limit_is_passed_across_replicas() {
    let Some(redis) = redis().await else { return };
    let replicas = start_replicas(&config(&redis_state(&redis, "fail-open")), &[]).await;
    let (rpm, tpm, budget) = run_bursts(&replicas.addrs).await;
    assert_eq!(rpm, 6, "rpm across replicas");
    // Each admitted call reserved 28 tokens and used 12: the admitted tokens never pass 100 (plus the
    // 1 or 2 tokens refilled during the test).
    assert!((3..=8).contains(&tpm), "tpm: {tpm} calls admitted");
    assert!(tpm * 12 <= 102, "tpm: {tpm} calls = {} tokens", tpm * 12);
    // 0.012 USD per call, 0.013 reserved: never more than 0.05 spent.
    assert!((3..=4).contains(&budget), "budget: {budget} calls admitted");
}

/// Polls `check` every 50 ms until it holds or `within` passes; a condition that is eventually
/// true across processes (key reload), not a synchronisation sleep.
async fn eventually<F, Fut>(within: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn status(client: &reqwest::Client, addr: &str, key: &str) -> u16 {
    client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn metric(client: &reqwest::Client, addr: &str, name: &str) -> f64 {
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

#[tokio::test]
async fn a_key_created_or_revoked_on_one_replica_reaches_the_others() {
    let Some(redis) = redis().await else { return };
    let replicas = start_replicas(&config(&redis_state(&redis, "fail-open")), &[]).await;
    let (a, b) = (&replicas.addrs[0], &replicas.addrs[1]);
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("http://{a}/admin/keys"))
        .bearer_auth(crate::common::UPSTREAM_KEY)
        .json(&json!({"name": "shared"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(status(&client, a, &secret).await, 200);
    let second = std::time::Duration::from_secs(3);
    assert!(
        eventually(second, || async {
            status(&client, b, &secret).await == 200
        })
        .await,
        "the new key never reached the other replica"
    );
    client
        .delete(format!("http://{a}/admin/keys/{id}"))
        .bearer_auth(crate::common::UPSTREAM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(status(&client, a, &secret).await, 401);
    assert!(
        eventually(second, || async {
            status(&client, b, &secret).await == 401
        })
        .await,
        "the revocation never reached the other replica"
    );
}

#[tokio::test]
async fn redis_down_fail_open_serves_on_local_limits_and_recovers() {
    let Some(mut redis) = redis().await else {
        return;
    };
    let replicas = start_replicas(&config(&redis_state(&redis, "fail-open")), &[]).await;
    let addr = &replicas.addrs[0];
    let client = reqwest::Client::new();
    assert_eq!(status(&client, addr, RPM_KEY).await, 200);
    redis.stop();
    // Served on this replica's own limits (rpm 6, one used in Redis, none locally yet).
    for _ in 0..3 {
        assert_eq!(status(&client, addr, RPM_KEY).await, 200);
    }
    assert!(
        metric(&client, addr, "sluice_state_backend_up").await < 0.5,
        "backend_up should be 0"
    );
    let fallback = metric(&client, addr, "sluice_state_fallback_admissions_total").await;
    assert!(fallback >= 3.0, "fallback admissions: {fallback}");
    redis.restart().await.unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            status(&client, addr, TPM_KEY).await == 200
                && metric(&client, addr, "sluice_state_backend_up").await > 0.5
        })
        .await,
        "never went back to Redis"
    );
}

#[tokio::test]
async fn redis_down_fail_closed_refuses_limited_calls_until_it_is_back() {
    let Some(mut redis) = redis().await else {
        return;
    };
    let replicas = start_replicas(&config(&redis_state(&redis, "fail-closed")), &[]).await;
    let addr = &replicas.addrs[0];
    let client = reqwest::Client::new();
    assert_eq!(status(&client, addr, RPM_KEY).await, 200);
    redis.stop();
    let resp = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(RPM_KEY)
        .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "state_unavailable", "{err}");
    redis.restart().await.unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            status(&client, addr, RPM_KEY).await == 200
        })
        .await,
        "never went back to Redis"
    );
}

#[tokio::test]
async fn a_session_continues_on_another_replica_through_redis() {
    let Some(redis) = redis().await else { return };
    let replicas = start_replicas(&config(&redis_state(&redis, "fail-open")), &[]).await;
    let client = reqwest::Client::new();
    let (a, b) = (&replicas.addrs[0], &replicas.addrs[1]);
    let session: Value = client
        .post(format!("http://{a}/v1/sessions"))
        .bearer_auth(RPM_KEY)
        .json(&json!({"model": "mock-gpt", "system": "Be brief."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["id"].as_str().unwrap();
    // Turns alternate between replicas; each sees the whole history.
    for (i, addr) in [a, b, a].into_iter().enumerate() {
        let resp = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(RPM_KEY)
            .header("x-sluice-session-id", id)
            .json(&json!({"model": "mock-gpt", "messages": [{"role": "user", "content": format!("turn {i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "turn {i} on {addr}");
    }
    let stored: Value = client
        .get(format!("http://{b}/v1/sessions/{id}"))
        .bearer_auth(RPM_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let turns = stored["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 3, "{stored}");
    for (i, turn) in turns.iter().enumerate() {
        assert_eq!(turn["input"][0]["content"], format!("turn {i}"));
    }
    // The third turn (on replica a) was sent the two earlier turns, one of them stored by replica b.
    assert_eq!(turns[2]["sent"]["first_turn"], 0);
    assert_eq!(turns[2]["sent"]["dropped_turns"], 0);
    assert!(
        turns[2]["sent"]["input_tokens"].as_u64().unwrap()
            > turns[0]["sent"]["input_tokens"].as_u64().unwrap()
    );
    // Another key still cannot see it from any replica.
    let other = client
        .get(format!("http://{a}/v1/sessions/{id}"))
        .bearer_auth(TPM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[tokio::test]
async fn replicas_share_cached_replies_semantic_entries_and_purges_through_redis() {
    let Some(redis) = redis().await else { return };
    let cache = "[cache]\nsync_interval = \"50ms\"\n\
                 [cache.semantic]\nembedder = \"hashing\"\nenabled = true\nthreshold = 0.8\n";
    let text = format!("{}{cache}", config(&redis_state(&redis, "fail-open")));
    let replicas = start_replicas(&text, &[]).await;
    let client = reqwest::Client::new();
    let (a, b) = (&replicas.addrs[0], &replicas.addrs[1]);
    let ask = |addr: &str, question: &str| {
        client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(RPM_KEY)
            .json(&json!({"model": "mock-gpt", "temperature": 0,
                          "messages": [{"role": "user", "content": question}]}))
            .send()
    };
    let header = |r: &reqwest::Response| r.headers()["x-sluice-cache"].to_str().unwrap().to_owned();
    let stats = |addr: &str| {
        client
            .get(format!("http://{addr}/admin/cache"))
            .bearer_auth(crate::common::UPSTREAM_KEY)
            .send()
    };
    let first = ask(a, "What is the capital of Austria?").await.unwrap();
    assert_eq!(header(&first), "miss");
    let first: Value = first.json().await.unwrap();
    // Replica a writes the reply to Redis in the background, after answering: wait until it is there.
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(10), || {
            let mut conn = conn.clone();
            async move {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("*cache:x:*")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                keys.len() == 1
            }
        })
        .await,
        "replica a stored the reply in Redis"
    );
    // Replica b has never seen it: the reply comes from Redis.
    let exact = ask(b, "What is the capital of Austria?").await.unwrap();
    assert_eq!(header(&exact), "hit");
    assert_eq!(exact.json::<Value>().await.unwrap(), first);
    // The semantic entry reaches b through the event stream.
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            let s: Value = stats(b).await.unwrap().json().await.unwrap();
            s["semantic"]["entries"] == 1
        })
        .await,
        "the semantic entry never reached replica b"
    );
    let near = ask(b, "what is the capital of austria").await.unwrap();
    assert_eq!(header(&near), "semantic-hit");
    assert_eq!(near.json::<Value>().await.unwrap(), first);
    // A purge on b empties a too (and Redis).
    let purge = client
        .delete(format!("http://{b}/admin/cache?model=mock-gpt"))
        .bearer_auth(crate::common::UPSTREAM_KEY)
        .send()
        .await
        .unwrap();
    let purged: Value = purge.json().await.unwrap();
    assert!(
        purged["purged"]["shared"].as_u64().unwrap() >= 1,
        "{purged}"
    );
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            let s: Value = stats(a).await.unwrap().json().await.unwrap();
            s["entries"] == 0 && s["semantic"]["entries"] == 0
        })
        .await,
        "replica a never applied the purge"
    );
    let after = ask(a, "What is the capital of Austria?").await.unwrap();
    assert_eq!(header(&after), "miss");
}
