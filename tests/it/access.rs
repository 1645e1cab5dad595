//! Access and cost control end to end: the auth matrix, RPM/TPM/concurrency limits at their exact
//! boundary, budgets refusing the right call, the admin keys API, per-model limits.

use serde_json::{Value, json};
use sluice::control::keys::{Limits, VirtualKey};

use crate::common::{TestApp, UPSTREAM_KEY, chat_body, read_sse};

/// Admin key (the test upstream key variable doubles as the admin key variable).
const ADMIN: &str = UPSTREAM_KEY;

/// The mock provider: 5 output tokens; prompt "hi" = 7 tokens by the mock's count (8 by tiktoken's);
/// priced at 1,000 USD per million tokens = 0.001 USD per token. `extra` goes into `[auth]`.
fn config(extra_auth: &str, extra: &str) -> String {
    format!(
        r#"
[server]
shutdown_grace = "5s"

[providers.mock]
kind = "mock"
output_tokens = 5

[providers.slow]
kind = "mock"
output_tokens = 40
token_delay = "25ms"

[models.mock-gpt]
provider = "mock"
price = {{ input = "1000", output = "1000" }}

[models.other]
provider = "mock"

[models.slow]
provider = "slow"

[admin]
api_key_env = "SLUICE_TEST_UPSTREAM_KEY"

[auth]
required = true
{extra_auth}

{extra}
"#
    )
}

async fn start(extra_auth: &str, extra: &str) -> TestApp {
    TestApp::start_secured(&config(extra_auth, extra), tempfile::tempdir().unwrap()).await
}

/// Creates a key through the admin API; returns (id, secret).
async fn create_key(app: &TestApp, body: Value) -> (String, String) {
    app.create_key(ADMIN, body).await
}

async fn chat(app: &TestApp, secret: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(secret)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn with_max_tokens(mut body: Value, n: u64) -> Value {
    body["max_tokens"] = json!(n);
    body
}

#[tokio::test]
async fn the_auth_matrix() {
    let app = start("", "").await;
    let (_, secret) = create_key(&app, json!({"name": "team-a", "models": ["mock-gpt"]})).await;
    let body = chat_body("mock-gpt", "hi", false);
    let send = |auth: Option<(&'static str, String)>| {
        let mut req = app.client.post(app.url("/v1/chat/completions")).json(&body);
        if let Some((name, value)) = auth {
            req = req.header(name, value);
        }
        req.send()
    };
    // Missing, malformed, unknown: 401 in OpenAI's shape, naming the problem.
    for (auth, needle) in [
        (None, "missing API key"),
        (Some(("authorization", "Basic abc".to_owned())), "malformed"),
        (Some(("authorization", "Bearer".to_owned())), "malformed"),
        (
            Some(("authorization", "Bearer sk-sluice-unknown".to_owned())),
            "invalid API key",
        ),
        (
            Some(("authorization", format!("Bearer {secret}x"))),
            "invalid API key",
        ),
    ] {
        let resp = send(auth.clone()).await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["type"], "authentication_error", "{err}");
        assert_eq!(err["error"]["code"], "invalid_api_key", "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{auth:?}: {message}");
        assert!(!message.contains(&secret), "the secret is never echoed");
    }
    // The valid key, by Bearer and by x-api-key.
    assert_eq!(
        send(Some(("authorization", format!("Bearer {secret}"))))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        send(Some(("x-api-key", secret.clone())))
            .await
            .unwrap()
            .status(),
        200
    );
    // A model the key may not use: 403.
    let resp = chat(&app, &secret, &chat_body("other", "hi", false)).await;
    assert_eq!(resp.status(), 403);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["type"], "permission_error", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("other"));
    // /v1/messages answers 401 in Anthropic's shape.
    let resp = app
        .client
        .post(app.url("/v1/messages"))
        .header("x-api-key", "sk-sluice-wrong")
        .json(&json!({"model": "mock-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["error"]["type"], "authentication_error", "{err}");
    // Probes and metrics stay open; the admin API is not opened by a virtual key.
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.client
            .get(app.url("/admin/keys"))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused_and_every_failure_is_counted() {
    let app = start("", "").await;
    let (id, secret) = create_key(&app, json!({"name": "team-a", "models": ["mock-gpt"]})).await;
    let body = chat_body("mock-gpt", "hi", false);
    assert_eq!(chat(&app, &secret, &body).await.status(), 200);
    assert_eq!(
        chat(&app, &secret, &chat_body("other", "hi", false))
            .await
            .status(),
        403
    );
    assert_eq!(chat(&app, "", &body).await.status(), 401);
    assert_eq!(chat(&app, "sk-nope", &body).await.status(), 401);
    let malformed = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("authorization", "Basic abc")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 401);
    let missing = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    // Revoked: 401 at once on this replica.
    let revoked: Value = app
        .client
        .delete(app.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(revoked["revoked_at"].as_i64().is_some(), "{revoked}");
    let resp = chat(&app, &secret, &body).await;
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // Expired: a stored key whose expiry passed.
    let expired = sluice::control::keys::generate_secret().unwrap();
    let key = VirtualKey {
        id: "key_expired".to_owned(),
        name: "old".to_owned(),
        prefix: expired.prefix.clone(),
        hash: sluice::control::encode_hash(&expired.hash),
        models: vec![],
        limits: Limits::default(),
        budget: None,
        expires_at: Some(sluice::control::unix_ms() - 1),
        revoked_at: None,
        metadata: std::collections::BTreeMap::default(),
        cache: None,
        created_at: 0,
        source: "api".to_owned(),
    };
    app.state.control.store().put(&key).await.unwrap();
    app.state.control.reload().await.unwrap();
    let resp = chat(&app, &expired.secret, &body).await;
    assert_eq!(resp.status(), 401);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    // Every failure was counted by reason.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "missing",
        "malformed",
        "unknown",
        "revoked",
        "expired",
        "model_not_allowed",
    ] {
        let sample = format!("sluice_auth_failures_total{{reason=\"{reason}\"}} ");
        assert!(
            metrics.lines().any(|l| l.starts_with(&sample)),
            "{reason} not counted:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn config_keys_work_and_are_read_only() {
    let hash = sluice::control::encode_hash(&sluice::control::keys::hash_secret(
        "sk-from-the-config-file",
    ));
    let app = start(
        &format!(
            "[[auth.keys]]\nname = \"app1\"\nsecret_sha256 = \"{hash}\"\nmodels = [\"mock-gpt\"]\n"
        ),
        "",
    )
    .await;
    let resp = chat(
        &app,
        "sk-from-the-config-file",
        &chat_body("mock-gpt", "hi", false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    // The key sees only its models.
    let models: Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("sk-from-the-config-file")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
    assert_eq!(models["data"][0]["id"], "mock-gpt");
    let resp = app
        .client
        .delete(app.url("/admin/keys/cfg_app1"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let list: Value = app
        .client
        .get(app.url("/admin/keys"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], "cfg_app1", "{list}");
    assert_eq!(list["data"][0]["source"], "config", "{list}");
}

#[tokio::test]
async fn requests_per_minute_are_exact_at_the_boundary_for_streams_and_not() {
    let app = start("", "").await;
    let (_, secret) = create_key(&app, json!({"name": "rpm", "limits": {"rpm": 3}})).await;
    // rpm = 3: a burst of 3, then one every 20 s.
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        let resp = chat(&app, &secret, &chat_body("mock-gpt", "hi", stream)).await;
        assert_eq!(resp.status(), 200, "call {i}");
        assert_eq!(
            header(&resp, "x-ratelimit-limit-requests").as_deref(),
            Some("3")
        );
        assert_eq!(
            header(&resp, "x-ratelimit-remaining-requests"),
            Some((2 - i).to_string()),
            "call {i}"
        );
        if stream {
            read_sse(resp).await;
        }
    }
    let resp = chat(&app, &secret, &chat_body("mock-gpt", "hi", true)).await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "rate_limit_exceeded", "{err}");
    assert_eq!(err["error"]["type"], "rate_limit_error", "{err}");
    // Another key is not affected.
    let (_, other) = create_key(&app, json!({"name": "other", "limits": {"rpm": 3}})).await;
    assert_eq!(
        chat(&app, &other, &chat_body("mock-gpt", "hi", false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn tokens_per_minute_reserve_then_reconcile() {
    let app = start("", "").await;
    let (_, secret) = create_key(&app, json!({"name": "tpm", "limits": {"tpm": 100}})).await;
    // Each call reserves 8 (prompt, tiktoken) + 20 (max_tokens) = 28 and really uses 7 + 5 = 12.
    let body = with_max_tokens(chat_body("mock-gpt", "hi", false), 20);
    let first = chat(&app, &secret, &body).await;
    assert_eq!(first.status(), 200);
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens").as_deref(),
        Some("100")
    );
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens").as_deref(),
        Some("72")
    );
    app.wait_finished(1).await;
    // Reconciled: 100 - 12 used - 28 reserved = 60 (plus what refilled in the meantime, < 1).
    let second = chat(&app, &secret, &body).await;
    assert_eq!(second.status(), 200);
    assert_eq!(
        header(&second, "x-ratelimit-remaining-tokens").as_deref(),
        Some("60")
    );
    app.wait_finished(2).await;
    // Admitted while 12·n + 28 <= 100 (+ refill of 100/60 per second): n = 0..=6, the 8th is refused.
    let mut admitted = 2;
    loop {
        let stream = admitted % 2 == 0;
        let mut body = with_max_tokens(chat_body("mock-gpt", "hi", stream), 20);
        body["stream_options"] = json!({"include_usage": true});
        let resp = chat(&app, &secret, &body).await;
        if resp.status() != 200 {
            assert_eq!(resp.status(), 429);
            let err: Value = resp.json().await.unwrap();
            assert!(
                err["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("tokens per minute"),
                "{err}"
            );
            break;
        }
        if stream {
            read_sse(resp).await;
        }
        admitted += 1;
        app.wait_finished(admitted).await;
    }
    assert_eq!(admitted, 7);
    // A request bigger than the whole limit can never pass, and says so.
    let resp = chat(
        &app,
        &secret,
        &with_max_tokens(chat_body("mock-gpt", "hi", false), 500),
    )
    .await;
    assert_eq!(resp.status(), 429);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stream_cut_by_the_client_gives_back_its_unused_reservation() {
    let app = start("", "").await;
    let (_, secret) = create_key(&app, json!({"name": "cut", "limits": {"tpm": 1000}})).await;
    // Reserve 8 + 400 = 408 tokens; read one event and hang up.
    let body = with_max_tokens(chat_body("slow", "hi", true), 400);
    let resp = chat(&app, &secret, &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-remaining-tokens").as_deref(),
        Some("592")
    );
    let mut stream = resp.bytes_stream();
    futures_util::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();
    drop(stream);
    app.wait_finished(1).await;
    // Settled with what the cut stream really used (prompt plus a few tokens), not the 408 reserved.
    let resp = chat(
        &app,
        &secret,
        &with_max_tokens(chat_body("mock-gpt", "hi", false), 0),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let remaining: u64 = header(&resp, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining > 1000 - 408 && remaining < 1000 - 8 - 8,
        "remaining {remaining}: the cut stream's reservation was not reconciled"
    );
}

#[tokio::test]
async fn a_stream_holds_its_concurrency_slot_until_its_last_byte() {
    let app = start("", "").await;
    let (_, secret) = create_key(
        &app,
        json!({"name": "one", "limits": {"max_concurrent": 1}}),
    )
    .await;
    let open = chat(&app, &secret, &chat_body("slow", "hi", true)).await;
    assert_eq!(open.status(), 200);
    let refused = chat(&app, &secret, &chat_body("mock-gpt", "hi", false)).await;
    assert_eq!(refused.status(), 429);
    let err: Value = refused.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in flight"),
        "{err}"
    );
    read_sse(open).await;
    app.wait_finished(2).await;
    assert_eq!(
        chat(&app, &secret, &chat_body("mock-gpt", "hi", false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_budget_refuses_the_call_that_would_pass_it() {
    let app = start("", "").await;
    // 0.05 USD; each call reserves (8 + 5) x 0.001 = 0.013 and costs (7 + 5) x 0.001 = 0.012.
    let (id, secret) = create_key(
        &app,
        json!({"name": "budget", "budget": {"usd": "0.05", "period": "month", "soft_threshold": 0.5}}),
    )
    .await;
    let body = with_max_tokens(chat_body("mock-gpt", "hi", false), 5);
    for i in 0..4 {
        let resp = chat(&app, &secret, &body).await;
        assert_eq!(resp.status(), 200, "call {i}");
        assert_eq!(header(&resp, "x-sluice-cost-usd").as_deref(), Some("0.012"));
        app.wait_finished(i + 1).await;
    }
    // Spent 0.048: 0.048 + 0.013 > 0.05.
    let resp = chat(&app, &secret, &body).await;
    assert_eq!(resp.status(), 429);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "insufficient_quota", "{err}");
    assert_eq!(err["error"]["type"], "insufficient_quota", "{err}");
    let key: Value = app
        .client
        .get(app.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["spend"]["spent_usd"], "0.048", "{key}");
    assert_eq!(key["spend"]["remaining_usd"], "0.002", "{key}");
    assert_eq!(key["spend"]["reserved_usd"], "0", "{key}");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |line: String| metrics.lines().any(|l| l == line);
    assert!(
        has(format!("sluice_budget_spend_usd{{key=\"{id}\"}} 0.048")),
        "{metrics}"
    );
    assert!(
        has(format!("sluice_budget_remaining_usd{{key=\"{id}\"}} 0.002")),
        "{metrics}"
    );
    assert!(
        has(format!(
            "sluice_budget_soft_limit_warnings_total{{key=\"{id}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        has("sluice_ratelimit_rejections_total{scope=\"key\",limit=\"budget\"} 1".to_owned()),
        "{metrics}"
    );
}

#[tokio::test]
async fn model_limits_apply_to_every_caller_together() {
    let app = start(
        "",
        "[models.capped]\nprovider = \"mock\"\nlimits = { rpm = 2 }\n",
    )
    .await;
    let (_, a) = create_key(&app, json!({"name": "a"})).await;
    let (_, b) = create_key(&app, json!({"name": "b"})).await;
    assert_eq!(
        chat(&app, &a, &chat_body("capped", "hi", false))
            .await
            .status(),
        200
    );
    assert_eq!(
        chat(&app, &b, &chat_body("capped", "hi", false))
            .await
            .status(),
        200
    );
    let resp = chat(&app, &a, &chat_body("capped", "hi", false)).await;
    assert_eq!(resp.status(), 429);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this model"),
        "{err}"
    );
    // Other models are not capped.
    assert_eq!(
        chat(&app, &a, &chat_body("mock-gpt", "hi", false))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_admin_api_manages_keys() {
    let app = start("", "").await;
    let admin =
        |m: reqwest::Method, path: &str| app.client.request(m, app.url(path)).bearer_auth(ADMIN);
    // Bad input: 400 naming the field.
    for (body, param) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "models": ["nope"]}), "models"),
        (
            json!({"name": "x", "budget": {"usd": "-1", "period": "day"}}),
            "budget",
        ),
        (json!({"name": "x", "expires_at": 1}), "expires_at"),
    ] {
        let resp = admin(reqwest::Method::POST, "/admin/keys")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["param"], param, "{err}");
    }
    let resp = admin(reqwest::Method::POST, "/admin/keys")
        .json(&json!({"name": "x", "colour": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (id, secret) = create_key(
        &app,
        json!({"name": "svc", "models": ["mock-gpt"], "limits": {"rpm": 60}, "metadata": {"team": "search"}}),
    )
    .await;
    let key: Value = admin(reqwest::Method::GET, &format!("/admin/keys/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(key["name"], "svc");
    assert_eq!(key["limits"]["rpm"], 60);
    assert_eq!(key["metadata"]["team"], "search");
    assert_eq!(key["prefix"].as_str().unwrap(), &secret[..14]);
    // Update: allow another model, drop the rpm limit.
    let updated: Value = admin(reqwest::Method::PATCH, &format!("/admin/keys/{id}"))
        .json(&json!({"models": ["mock-gpt", "other"], "limits": {}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["models"], json!(["mock-gpt", "other"]), "{updated}");
    assert_eq!(
        chat(&app, &secret, &chat_body("other", "hi", false))
            .await
            .status(),
        200
    );
    let missing = admin(reqwest::Method::GET, "/admin/keys/key_nope")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // Listing never shows secrets or hashes.
    let list = admin(reqwest::Method::GET, "/admin/keys")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(list.contains(&id));
    assert!(
        !list.contains(&secret) && !list.contains("\"hash\""),
        "{list}"
    );
}

#[tokio::test]
async fn keys_and_spend_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start_secured(&config("", ""), dir).await;
    let (id, secret) = create_key(
        &app,
        json!({"name": "durable", "budget": {"usd": "1", "period": "total"}}),
    )
    .await;
    let (revoked_id, revoked) = create_key(&app, json!({"name": "gone"})).await;
    let body = with_max_tokens(chat_body("mock-gpt", "hi", false), 5);
    for i in 0..3 {
        assert_eq!(chat(&app, &secret, &body).await.status(), 200);
        app.wait_finished(i + 1).await;
    }
    app.client
        .delete(app.url(&format!("/admin/keys/{revoked_id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    // A graceful stop writes the last settled spend; nothing is lost.
    let (dir, _) = app.stop().await;
    let app = TestApp::start_secured(&config("", ""), dir).await;
    assert_eq!(chat(&app, &secret, &body).await.status(), 200);
    assert_eq!(chat(&app, &revoked, &body).await.status(), 401);
    app.wait_finished(2).await;
    let key: Value = app
        .client
        .get(app.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // 3 calls before the restart and 1 after, 0.012 USD each.
    assert_eq!(key["spend"]["spent_usd"], "0.048", "{key}");
}

#[tokio::test]
async fn the_keys_cli_drives_a_running_gateway() {
    let app = start("", "").await;
    let run = |args: Vec<String>| {
        let base = app.base.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
                .arg("keys")
                .args(&args)
                .args(["--url", &base])
                .env("SLUICE_ADMIN_KEY", ADMIN)
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let created: Value = serde_json::from_str(
        &run([
            "create", "--name", "from-cli", "--model", "mock-gpt", "--rpm", "5", "--json",
        ]
        .map(String::from)
        .to_vec())
        .await,
    )
    .unwrap();
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(created["key"]["limits"]["rpm"], 5);
    let resp = chat(&app, &secret, &chat_body("mock-gpt", "hi", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "x-ratelimit-limit-requests").as_deref(),
        Some("5")
    );
    let list = run(vec!["list".to_owned()]).await;
    assert!(list.contains(&id) && list.contains("from-cli"), "{list}");
    assert!(!list.contains(&secret));
    run(vec!["revoke".to_owned(), id.clone()]).await;
    assert_eq!(
        chat(&app, &secret, &chat_body("mock-gpt", "hi", false))
            .await
            .status(),
        401
    );
    // Without the admin key the CLI refuses before sending anything.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "list", "--url", &app.base])
        .env_remove("SLUICE_ADMIN_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_ADMIN_KEY"));
}
