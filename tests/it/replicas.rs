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
