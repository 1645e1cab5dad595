//! The operator CLI for virtual keys, `sluice keys create|list|revoke`: an HTTP client of the admin API
//! (`/admin/keys`), so it works the same against one process or a fleet behind a load balancer, and
//! never opens the store itself.
//!
//! The admin key comes from the environment (`SLUICE_ADMIN_KEY`), never from a flag: flags end up in
//! shell history and in `ps` output. [`run_keys`] returns the text to print instead of printing it, so
//! the binary decides where it goes (stdout) and tests can read it.
//!
//! The binary wires it as `Keys(KeysArgs)`, then
//! `run_keys(args.command, &args.url, &admin_key_from_env()?)` on a small runtime.

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::control::keys::{Limits, Period};

/// Where the admin API is when neither `--url` nor `SLUICE_URL` says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Environment variable holding the admin key.
pub const ADMIN_KEY_ENV: &str = "SLUICE_ADMIN_KEY";

/// Longest wait for a TCP (and TLS) connection to the admin API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a whole admin call; the answers are small JSON documents.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Most characters of a non-JSON error body shown to the operator.
const MAX_ERROR_BODY_CHARS: usize = 300;

/// `sluice keys ...`: where the admin API is, and what to do.
#[derive(Debug, Clone, clap::Args)]
pub struct KeysArgs {
    /// Base URL of the Sluice admin API. The admin key is read from `SLUICE_ADMIN_KEY`, never from a
    /// flag.
    #[arg(long, env = "SLUICE_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    /// The command.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// A `sluice keys` command.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret (shown only once).
    Create(CreateArgs),
    /// List every key, revoked and expired ones included.
    List(ListArgs),
    /// Revoke a key: it is refused from now on (on other replicas within `state.sync_interval`).
    Revoke(RevokeArgs),
}

/// `sluice keys create`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CreateArgs {
    /// Name of the key: who or what uses it.
    #[arg(long)]
    pub name: String,
    /// A model the key may call; repeat for several. Without any, it may call every model.
    #[arg(long = "model", value_name = "MODEL")]
    pub models: Vec<String>,
    /// Requests per minute.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N")]
    pub max_concurrent: Option<u32>,
    /// Most the key may spend per budget period, in USD (e.g. `10.00`); needs `--budget-period`.
    #[arg(long, value_name = "USD", requires = "budget_period")]
    pub budget_usd: Option<Decimal>,
    /// The budget period.
    #[arg(long, value_enum, value_name = "PERIOD", requires = "budget_usd")]
    pub budget_period: Option<BudgetPeriod>,
    /// Fraction of the budget (0–1) past which a warning is logged; the server's default is 0.8.
    #[arg(long, value_name = "FRACTION", requires = "budget_usd")]
    pub budget_soft_threshold: Option<f64>,
    /// Expire the key after this long, e.g. `30d`, `12h`, `1week`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub expires_in: Option<Duration>,
    /// Operator data stored with the key, `KEY=VALUE`; repeat for several.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_metadata)]
    pub metadata: Vec<(String, String)>,
    /// Print the admin API's JSON answer as is (it includes the secret).
    #[arg(long)]
    pub json: bool,
}

/// `sluice keys list`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListArgs {
    /// Print the admin API's JSON answer as is.
    #[arg(long)]
    pub json: bool,
}

/// `sluice keys revoke`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RevokeArgs {
    /// Id of the key (`key_...`), as `sluice keys list` shows it.
    pub id: String,
    /// Print the admin API's JSON answer as is.
    #[arg(long)]
    pub json: bool,
}

/// A budget period, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BudgetPeriod {
    /// Calendar day, UTC.
    Day,
    /// Calendar month, UTC.
    Month,
    /// Never resets.
    Total,
}

impl From<BudgetPeriod> for Period {
    fn from(p: BudgetPeriod) -> Self {
        match p {
            BudgetPeriod::Day => Self::Day,
            BudgetPeriod::Month => Self::Month,
            BudgetPeriod::Total => Self::Total,
        }
    }
}

/// Why a `sluice keys` command failed; the message is meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `SLUICE_ADMIN_KEY` is unset or empty.
    #[error(
        "{ADMIN_KEY_ENV} is not set: export the admin key in the environment (it is never taken as a \
         flag, which would leak into shell history and `ps`)"
    )]
    MissingAdminKey,
    /// The arguments cannot make a valid request; nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// `--url` is not an http(s) URL.
    #[error("invalid --url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it is unusable.
        reason: String,
    },
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach Sluice at {url}: {reason}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// The underlying cause.
        reason: String,
    },
    /// The admin API refused the call.
    #[error("admin API: {status}: {message}{}", hint(*status))]
    Api {
        /// The HTTP status.
        status: http::StatusCode,
        /// The error message it sent (or the start of its body).
        message: String,
    },
    /// The admin API answered something this CLI does not understand.
    #[error("unexpected answer from the admin API: {0}")]
    Response(String),
}

fn hint(status: http::StatusCode) -> &'static str {
    match status {
        http::StatusCode::UNAUTHORIZED | http::StatusCode::FORBIDDEN => " (check SLUICE_ADMIN_KEY)",
        _ => "",
    }
}

/// The admin key from `SLUICE_ADMIN_KEY`.
pub fn admin_key_from_env() -> Result<String, CliError> {
    std::env::var(ADMIN_KEY_ENV)
        .ok()
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .ok_or(CliError::MissingAdminKey)
}

/// Runs `cmd` against the admin API at `url` with `admin_key`, and returns the text to print (without
/// a final newline). Arguments are validated before anything is sent.
pub async fn run_keys(cmd: KeysCommand, url: &str, admin_key: &str) -> Result<String, CliError> {
    let admin_key = admin_key.trim();
    if admin_key.is_empty() {
        return Err(CliError::MissingAdminKey);
    }
    let client = Client::new(url, admin_key)?;
    match cmd {
        KeysCommand::Create(args) => {
            let body = create_body(&args, crate::control::unix_ms())?;
            let text = client
                .call(http::Method::POST, &["admin", "keys"], Some(&body))
                .await?;
            if args.json {
                return Ok(text);
            }
            let created: Created = decode(&text)?;
            Ok(format_created(&created))
        }
        KeysCommand::List(args) => {
            let text = client
                .call(http::Method::GET, &["admin", "keys"], None::<&()>)
                .await?;
            if args.json {
                return Ok(text);
            }
            let list: KeyList = decode(&text)?;
            Ok(format_list(&list.data, crate::control::unix_ms()))
        }
        KeysCommand::Revoke(args) => {
            let id = args.id.trim();
            if id.is_empty() {
                return Err(CliError::Invalid("the key id must not be empty".to_owned()));
            }
            let text = client
                .call(http::Method::DELETE, &["admin", "keys", id], None::<&()>)
                .await?;
            if args.json {
                return Ok(text);
            }
            let key: KeyView = decode(&text)?;
            Ok(format_revoked(&key))
        }
    }
}

// === Requests ===

/// Body of `POST /admin/keys`.
#[derive(Debug, Serialize)]
struct CreateBody<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    models: &'a [String],
    #[serde(skip_serializing_if = "Limits::is_empty")]
    limits: Limits,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<BudgetBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<&'a str, &'a str>,
}

#[derive(Debug, Serialize)]
struct BudgetBody {
    /// A string, as the API takes it: decimal money never goes through a float.
    usd: String,
    period: Period,
    #[serde(skip_serializing_if = "Option::is_none")]
    soft_threshold: Option<f64>,
}

/// Checks what can be checked here, and builds the request body.
fn create_body(args: &CreateArgs, now_ms: i64) -> Result<CreateBody<'_>, CliError> {
    let invalid = |m: &str| Err(CliError::Invalid(m.to_owned()));
    let name = args.name.trim();
    if name.is_empty() {
        return invalid("--name must not be empty");
    }
    if args.models.iter().any(|m| m.trim().is_empty()) {
        return invalid("--model must not be empty");
    }
    for (flag, value) in [
        ("--rpm", args.rpm.map(u64::from)),
        ("--tpm", args.tpm),
        ("--max-concurrent", args.max_concurrent.map(u64::from)),
    ] {
        if value == Some(0) {
            return Err(CliError::Invalid(format!(
                "{flag} must be at least 1 (leave it out for no limit)"
            )));
        }
    }
    let budget = match (args.budget_usd, args.budget_period) {
        (None, None) => {
            if args.budget_soft_threshold.is_some() {
                return invalid("--budget-soft-threshold needs --budget-usd and --budget-period");
            }
            None
        }
        (Some(_), None) => {
            return invalid("--budget-usd needs --budget-period (day, month or total)");
        }
        (None, Some(_)) => return invalid("--budget-period needs --budget-usd"),
        (Some(usd), Some(period)) => {
            if usd < Decimal::ZERO {
                return invalid("--budget-usd must not be negative");
            }
            if let Some(t) = args.budget_soft_threshold
                && !(t > 0.0 && t <= 1.0)
            {
                return invalid("--budget-soft-threshold must be a fraction in (0, 1]");
            }
            Some(BudgetBody {
                usd: usd.to_string(),
                period: period.into(),
                soft_threshold: args.budget_soft_threshold,
            })
        }
    };
    let expires_at = match args.expires_in {
        None => None,
        Some(d) if d.is_zero() => return invalid("--expires-in must be longer than zero"),
        Some(d) => Some(
            i64::try_from(d.as_millis())
                .ok()
                .and_then(|ms| now_ms.checked_add(ms))
                .ok_or_else(|| CliError::Invalid("--expires-in is too long".to_owned()))?,
        ),
    };
    Ok(CreateBody {
        name,
        models: &args.models,
        limits: Limits {
            rpm: args.rpm,
            tpm: args.tpm,
            max_concurrent: args.max_concurrent,
        },
        budget,
        expires_at,
        metadata: args
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
    })
}

/// `KEY=VALUE` for `--metadata`.
fn parse_metadata(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// One admin API endpoint with its credentials.
struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    admin_key: String,
}

impl Client {
    fn new(url: &str, admin_key: &str) -> Result<Self, CliError> {
        let bad = |reason: &str| CliError::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = reqwest::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("expected http://host:port or https://host:port"));
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // An admin API does not redirect; following one would replay the call elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("sluice-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Unreachable {
                url: url.to_owned(),
                reason: format!("cannot build the HTTP client: {}", root_cause(&e)),
            })?;
        Ok(Self {
            http,
            base,
            admin_key: admin_key.to_owned(),
        })
    }

    /// `base` + `segments`, each segment percent-encoded (an id cannot add path segments).
    fn endpoint(&self, segments: &[&str]) -> Result<reqwest::Url, CliError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| CliError::Url {
                url: self.base.to_string(),
                reason: "cannot hold a path".to_owned(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends one call; the body text of a 2xx answer, or the API's error.
    async fn call<B: Serialize + ?Sized>(
        &self,
        method: http::Method,
        segments: &[&str],
        body: Option<&B>,
    ) -> Result<String, CliError> {
        let url = self.endpoint(segments)?;
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(&self.admin_key)
            .header(http::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |e: &reqwest::Error| CliError::Unreachable {
            url: self.base.as_str().trim_end_matches('/').to_owned(),
            reason: if e.is_timeout() {
                "timed out".to_owned()
            } else {
                root_cause(e)
            },
        };
        let response = request.send().await.map_err(|e| unreachable(&e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.map_err(|e| unreachable(&e))?;
        if status.is_success() {
            return Ok(text.trim_end().to_owned());
        }
        Err(CliError::Api {
            status,
            message: error_message(&text, location.as_deref()),
        })
    }
}

/// The innermost cause of an error: "Connection refused (os error 111)" rather than "error sending
/// request for url (...)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The message of an OpenAI-shaped error body, else the start of the body.
fn error_message(body: &str, location: Option<&str>) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Detail,
    }
    #[derive(Deserialize)]
    struct Detail {
        message: String,
    }
    if let Ok(envelope) = serde_json::from_str::<Envelope>(body) {
        return envelope.error.message;
    }
    if let Some(location) = location {
        return format!("redirected to {location}; use that URL as --url");
    }
    let body = body.trim();
    if body.is_empty() {
        return "(no message)".to_owned();
    }
    let mut cut: String = body.chars().take(MAX_ERROR_BODY_CHARS).collect();
    if cut.len() < body.len() {
        cut.push('…');
    }
    cut
}

// === Answers ===

/// The parts of a key this CLI shows; lenient, so new fields on the server do not break it.
#[derive(Debug, Deserialize)]
struct KeyView {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    limits: Option<LimitsView>,
    #[serde(default)]
    budget: Option<BudgetView>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    revoked_at: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct LimitsView {
    #[serde(default)]
    rpm: Option<u64>,
    #[serde(default)]
    tpm: Option<u64>,
    #[serde(default)]
    max_concurrent: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct BudgetView {
    usd: Decimal,
    period: String,
}

#[derive(Debug, Deserialize)]
struct Created {
    key: KeyView,
    secret: String,
}

#[derive(Debug, Deserialize)]
struct KeyList {
    data: Vec<KeyView>,
}

fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, CliError> {
    serde_json::from_str(text).map_err(|e| CliError::Response(e.to_string()))
}

fn format_created(created: &Created) -> String {
    let key = &created.key;
    let mut lines = vec![
        format!("Created key {} ({}).", clean(&key.id), quoted(&key.name)),
        format!("Secret: {}", created.secret),
        "This secret is shown only once: store it now. Sluice keeps only its hash.".to_owned(),
    ];
    if let Some(at) = key.expires_at {
        lines.push(format!("Expires at {}.", format_time(at)));
    }
    lines.join("\n")
}

fn format_revoked(key: &KeyView) -> String {
    match key.revoked_at {
        Some(at) => format!(
            "Revoked key {} ({}) at {}.",
            clean(&key.id),
            quoted(&key.name),
            format_time(at)
        ),
        None => format!("Revoked key {} ({}).", clean(&key.id), quoted(&key.name)),
    }
}

const HEADER: [&str; 7] = [
    "ID", "NAME", "PREFIX", "MODELS", "LIMITS", "BUDGET", "STATUS",
];

/// An aligned table, one key a line.
fn format_list(keys: &[KeyView], now_ms: i64) -> String {
    if keys.is_empty() {
        return "No keys.".to_owned();
    }
    let rows: Vec<[String; 7]> = keys
        .iter()
        .map(|k| {
            [
                clean(&k.id),
                clean(&k.name),
                clean(&k.prefix),
                if k.models.is_empty() {
                    "all".to_owned()
                } else {
                    clean(&k.models.join(","))
                },
                format_limits(k.limits.as_ref()),
                k.budget.as_ref().map_or_else(
                    || "-".to_owned(),
                    |b| format!("${}/{}", b.usd, clean(&b.period)),
                ),
                status(k, now_ms).to_owned(),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            // `{:<w$}` pads by characters, the same unit as the widths.
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut lines = Vec::with_capacity(rows.len() + 1);
    lines.push(line(HEADER));
    for row in &rows {
        lines.push(line(row.each_ref().map(String::as_str)));
    }
    lines.join("\n")
}

fn format_limits(limits: Option<&LimitsView>) -> String {
    let Some(l) = limits else {
        return "-".to_owned();
    };
    let parts: Vec<String> = [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("concurrent", l.max_concurrent),
    ]
    .into_iter()
    .filter_map(|(name, v)| v.map(|v| format!("{name}={v}")))
    .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

fn status(key: &KeyView, now_ms: i64) -> &'static str {
    if key.revoked_at.is_some() {
        "revoked"
    } else if key.expires_at.is_some_and(|t| t <= now_ms) {
        "expired"
    } else {
        "active"
    }
}

/// Unix ms as RFC 3339 (UTC, seconds).
fn format_time(unix_ms: i64) -> String {
    u64::try_from(unix_ms).map_or_else(
        |_| unix_ms.to_string(),
        |ms| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        },
    )
}

/// Server-supplied text made safe for a terminal: control characters (escape sequences, newlines that
/// would break the table) are shown escaped.
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", clean(name))
}

#[cfg(test)]
mod tests {
    use std::future::{Future, IntoFuture as _};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::response::{IntoResponse as _, Response};
    use clap::Parser as _;
    use http::{HeaderMap, Method, StatusCode, Uri};
    use serde_json::{Value, json};

    use super::*;

    const ADMIN: &str = "admin-secret";
    /// 2026-01-01T00:00:00Z.
    const REVOKED_AT: i64 = 1_767_225_600_000;

    /// One request the fake admin API received.
    #[derive(Debug, Clone)]
    struct Seen {
        method: Method,
        path: String,
        auth: Option<String>,
        body: Option<Value>,
    }

    /// A minimal admin API following the contract: keys in memory, every request recorded.
    #[derive(Clone, Default)]
    struct Fake {
        seen: Arc<Mutex<Vec<Seen>>>,
        keys: Arc<Mutex<Vec<Value>>>,
    }

    fn api_error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
        let body = json!({"error": {"message": message, "type": kind, "code": code}});
        (status, axum::Json(body)).into_response()
    }

    async fn handle(
        State(fake): State<Fake>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let auth = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned());
        fake.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: uri.path().to_owned(),
            auth: auth.clone(),
            body: (!body.is_empty()).then(|| serde_json::from_slice(&body).unwrap()),
        });
        if auth.as_deref() != Some(&format!("Bearer {ADMIN}")) {
            return api_error(
                StatusCode::UNAUTHORIZED,
                "invalid admin key",
                "authentication_error",
                "invalid_api_key",
            );
        }
        let mut keys = fake.keys.lock().unwrap();
        let path = uri.path();
        match (method, path) {
            (Method::POST, "/admin/keys") => {
                let mut req: Value = serde_json::from_slice(&body).unwrap();
                let req = req.as_object_mut().unwrap();
                let mut key = json!({
                    "id": format!("key_{:04}", keys.len() + 1),
                    "name": req.remove("name").unwrap(),
                    "prefix": "sk-sluice-Test",
                    "models": req.remove("models").unwrap_or(json!([])),
                    "limits": req.remove("limits").unwrap_or(json!({})),
                    "metadata": req.remove("metadata").unwrap_or(json!({})),
                    "created_at": 1_767_000_000_000_i64,
                    "source": "api",
                });
                for field in ["budget", "expires_at"] {
                    if let Some(v) = req.remove(field) {
                        key[field] = v;
                    }
                }
                assert!(req.is_empty(), "fields outside the contract: {req:?}");
                keys.push(key.clone());
                let body = json!({"key": key, "secret": "sk-sluice-TESTSECRET"});
                (StatusCode::CREATED, axum::Json(body)).into_response()
            }
            (Method::GET, "/admin/keys") => {
                axum::Json(json!({"object": "list", "data": *keys})).into_response()
            }
            (Method::DELETE, _) if path.starts_with("/admin/keys/") => {
                let id = &path["/admin/keys/".len()..];
                match keys.iter_mut().find(|k| k["id"] == id) {
                    Some(key) => {
                        key["revoked_at"] = json!(REVOKED_AT);
                        axum::Json(key.clone()).into_response()
                    }
                    None => api_error(
                        StatusCode::NOT_FOUND,
                        &format!("no key with id {id}"),
                        "invalid_request_error",
                        "key_not_found",
                    ),
                }
            }
            _ => api_error(
                StatusCode::NOT_FOUND,
                "no route",
                "invalid_request_error",
                "x",
            ),
        }
    }

    /// Runs `client(url)` against the fake (served on the same task: no detached server), returns its
    /// result and what the fake saw.
    async fn with_fake<F, Fut, T>(keys: Vec<Value>, client: F) -> (T, Vec<Seen>)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = T>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = Fake::default();
        *fake.keys.lock().unwrap() = keys;
        let app = Router::new().fallback(handle).with_state(fake.clone());
        let out = tokio::select! {
            out = client(url) => out,
            stopped = axum::serve(listener, app).into_future() => {
                panic!("fake admin API stopped: {stopped:?}")
            }
        };
        let seen = fake.seen.lock().unwrap().clone();
        (out, seen)
    }

    fn sample_keys() -> Vec<Value> {
        vec![
            json!({
                "id": "key_a", "name": "ci bot", "prefix": "sk-sluice-AbCd", "models": [],
                "limits": {"rpm": 60, "tpm": 100_000},
                "budget": {"usd": "10.00", "period": "day", "soft_threshold": 0.8},
                "metadata": {}, "created_at": 1, "source": "api",
            }),
            json!({
                "id": "key_b", "name": "équipe données", "prefix": "sk-sluice-XyZw",
                "models": ["gpt-4o-mini", "claude"], "limits": {}, "revoked_at": REVOKED_AT,
                "metadata": {"team": "search"}, "created_at": 2, "source": "api",
            }),
            json!({
                "id": "cfg_old", "name": "old", "prefix": "sk-sluice-Old0", "models": [],
                "limits": {"max_concurrent": 2}, "budget": {"usd": "250", "period": "total"},
                "expires_at": 1, "metadata": {}, "created_at": 0, "source": "config",
            }),
        ]
    }

    fn create(name: &str) -> CreateArgs {
        CreateArgs {
            name: name.to_owned(),
            ..CreateArgs::default()
        }
    }

    #[tokio::test]
    async fn create_sends_the_contract_body_and_prints_the_secret_once() {
        let args = CreateArgs {
            name: "ci bot".to_owned(),
            models: vec!["gpt-4o-mini".to_owned(), "claude-sonnet".to_owned()],
            rpm: Some(60),
            tpm: Some(100_000),
            max_concurrent: Some(4),
            budget_usd: Some("10.00".parse().unwrap()),
            budget_period: Some(BudgetPeriod::Month),
            budget_soft_threshold: Some(0.9),
            expires_in: Some(humantime::parse_duration("30d").unwrap()),
            metadata: vec![("team".to_owned(), "search".to_owned())],
            json: false,
        };
        let before = crate::control::unix_ms();
        let (out, seen) = with_fake(Vec::new(), |url| async move {
            run_keys(KeysCommand::Create(args), &url, ADMIN).await
        })
        .await;
        let after = crate::control::unix_ms();
        let out = out.unwrap();

        assert_eq!(seen.len(), 1);
        let req = &seen[0];
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.path, "/admin/keys");
        assert_eq!(req.auth.as_deref(), Some("Bearer admin-secret"));
        let mut body = req.body.clone().unwrap();
        let expires_at = body["expires_at"].as_i64().unwrap();
        let thirty_days = 30 * 86_400_000;
        assert!((before + thirty_days..=after + thirty_days).contains(&expires_at));
        body.as_object_mut().unwrap().remove("expires_at");
        assert_eq!(
            body,
            json!({
                "name": "ci bot",
                "models": ["gpt-4o-mini", "claude-sonnet"],
                "limits": {"rpm": 60, "tpm": 100_000, "max_concurrent": 4},
                "budget": {"usd": "10.00", "period": "month", "soft_threshold": 0.9},
                "metadata": {"team": "search"},
            })
        );

        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Created key key_0001 (\"ci bot\").");
        assert_eq!(lines[1], "Secret: sk-sluice-TESTSECRET");
        assert_eq!(
            lines[2],
            "This secret is shown only once: store it now. Sluice keeps only its hash."
        );
        assert!(lines[3].starts_with("Expires at 20"), "{out}");
        assert_eq!(lines.len(), 4);
    }

    #[tokio::test]
    async fn create_with_only_a_name_sends_only_the_name() {
        let (out, seen) = with_fake(Vec::new(), |url| async move {
            run_keys(KeysCommand::Create(create("  bare  ")), &url, ADMIN).await
        })
        .await;
        assert_eq!(seen[0].body, Some(json!({"name": "bare"})));
        let out = out.unwrap();
        assert!(out.contains("key_0001"), "{out}");
        assert!(!out.contains("Expires"), "{out}");
    }

    #[tokio::test]
    async fn create_json_prints_the_raw_answer() {
        let (out, _) = with_fake(Vec::new(), |url| async move {
            let args = CreateArgs {
                json: true,
                ..create("raw")
            };
            run_keys(KeysCommand::Create(args), &url, ADMIN).await
        })
        .await;
        let out: Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(out["secret"], "sk-sluice-TESTSECRET");
        assert_eq!(out["key"]["name"], "raw");
    }

    #[tokio::test]
    async fn list_prints_an_aligned_table() {
        let (out, seen) = with_fake(sample_keys(), |url| async move {
            run_keys(KeysCommand::List(ListArgs::default()), &url, ADMIN).await
        })
        .await;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, Method::GET);
        assert_eq!(seen[0].path, "/admin/keys");
        assert_eq!(seen[0].auth.as_deref(), Some("Bearer admin-secret"));
        assert_eq!(seen[0].body, None);
        let expected = "\
ID       NAME            PREFIX          MODELS              LIMITS             BUDGET      STATUS
key_a    ci bot          sk-sluice-AbCd  all                 rpm=60 tpm=100000  $10.00/day  active
key_b    équipe données  sk-sluice-XyZw  gpt-4o-mini,claude  -                  -           revoked
cfg_old  old             sk-sluice-Old0  all                 concurrent=2       $250/total  expired";
        assert_eq!(out.unwrap(), expected);
    }

    #[tokio::test]
    async fn list_json_prints_the_raw_answer_and_empty_list_says_so() {
        let (out, _) = with_fake(sample_keys(), |url| async move {
            run_keys(KeysCommand::List(ListArgs { json: true }), &url, ADMIN).await
        })
        .await;
        let out: Value = serde_json::from_str(&out.unwrap()).unwrap();
        assert_eq!(out["object"], "list");
        assert_eq!(out["data"].as_array().unwrap().len(), 3);

        let (out, _) = with_fake(Vec::new(), |url| async move {
            run_keys(KeysCommand::List(ListArgs::default()), &url, ADMIN).await
        })
        .await;
        assert_eq!(out.unwrap(), "No keys.");
    }

    #[tokio::test]
    async fn revoke_sends_delete_and_prints_the_revocation() {
        let (out, seen) = with_fake(sample_keys(), |url| async move {
            let args = RevokeArgs {
                id: "key_a".to_owned(),
                json: false,
            };
            run_keys(KeysCommand::Revoke(args), &url, ADMIN).await
        })
        .await;
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].method, Method::DELETE);
        assert_eq!(seen[0].path, "/admin/keys/key_a");
        assert_eq!(seen[0].auth.as_deref(), Some("Bearer admin-secret"));
        assert_eq!(
            out.unwrap(),
            "Revoked key key_a (\"ci bot\") at 2026-01-01T00:00:00Z."
        );
    }

    #[tokio::test]
    async fn revoke_of_an_unknown_id_shows_the_api_message_and_encodes_the_id() {
        let (out, seen) = with_fake(sample_keys(), |url| async move {
            let args = RevokeArgs {
                id: "../x y".to_owned(),
                json: false,
            };
            run_keys(KeysCommand::Revoke(args), &url, ADMIN).await
        })
        .await;
        // One segment, whatever the id holds.
        assert_eq!(seen[0].path, "/admin/keys/..%2Fx%20y");
        let err = out.unwrap_err();
        assert!(matches!(err, CliError::Api { status, .. } if status == StatusCode::NOT_FOUND));
        assert_eq!(
            err.to_string(),
            "admin API: 404 Not Found: no key with id ..%2Fx%20y"
        );
    }

    #[tokio::test]
    async fn create_list_revoke_round_trip() {
        let (out, seen) = with_fake(Vec::new(), |url| async move {
            run_keys(KeysCommand::Create(create("a")), &url, ADMIN)
                .await
                .unwrap();
            let args = RevokeArgs {
                id: "key_0001".to_owned(),
                json: false,
            };
            run_keys(KeysCommand::Revoke(args), &url, ADMIN)
                .await
                .unwrap();
            run_keys(KeysCommand::List(ListArgs::default()), &url, ADMIN).await
        })
        .await;
        assert_eq!(seen.len(), 3);
        let out = out.unwrap();
        assert!(out.lines().nth(1).unwrap().ends_with("revoked"), "{out}");
    }

    #[tokio::test]
    async fn wrong_admin_key_shows_the_401_message() {
        let (out, seen) = with_fake(sample_keys(), |url| async move {
            run_keys(KeysCommand::List(ListArgs::default()), &url, "wrong").await
        })
        .await;
        assert_eq!(seen[0].auth.as_deref(), Some("Bearer wrong"));
        assert_eq!(
            out.unwrap_err().to_string(),
            "admin API: 401 Unauthorized: invalid admin key (check SLUICE_ADMIN_KEY)"
        );
    }

    #[tokio::test]
    async fn unreachable_url_is_reported() {
        // A port nothing listens on any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = run_keys(KeysCommand::List(ListArgs::default()), &url, ADMIN)
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, CliError::Unreachable { .. }), "{message}");
        assert!(
            message.starts_with(&format!("cannot reach Sluice at {url}: ")),
            "{message}"
        );
        assert!(
            message.to_lowercase().contains("connection refused"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn budget_usd_without_period_is_refused_before_sending() {
        let (out, seen) = with_fake(Vec::new(), |url| async move {
            let args = CreateArgs {
                budget_usd: Some("5".parse().unwrap()),
                ..create("a")
            };
            run_keys(KeysCommand::Create(args), &url, ADMIN).await
        })
        .await;
        assert!(seen.is_empty());
        assert_eq!(
            out.unwrap_err().to_string(),
            "--budget-usd needs --budget-period (day, month or total)"
        );
    }

    #[test]
    fn local_validation_messages() {
        let cases = [
            (create(" "), "--name must not be empty"),
            (
                CreateArgs {
                    models: vec![String::new()],
                    ..create("a")
                },
                "--model must not be empty",
            ),
            (
                CreateArgs {
                    rpm: Some(0),
                    ..create("a")
                },
                "--rpm must be at least 1 (leave it out for no limit)",
            ),
            (
                CreateArgs {
                    budget_period: Some(BudgetPeriod::Day),
                    ..create("a")
                },
                "--budget-period needs --budget-usd",
            ),
            (
                CreateArgs {
                    budget_usd: Some("-1".parse().unwrap()),
                    budget_period: Some(BudgetPeriod::Day),
                    ..create("a")
                },
                "--budget-usd must not be negative",
            ),
            (
                CreateArgs {
                    budget_usd: Some("1".parse().unwrap()),
                    budget_period: Some(BudgetPeriod::Day),
                    budget_soft_threshold: Some(1.5),
                    ..create("a")
                },
                "--budget-soft-threshold must be a fraction in (0, 1]",
            ),
            (
                CreateArgs {
                    expires_in: Some(Duration::ZERO),
                    ..create("a")
                },
                "--expires-in must be longer than zero",
            ),
            (
                CreateArgs {
                    expires_in: Some(Duration::MAX),
                    ..create("a")
                },
                "--expires-in is too long",
            ),
        ];
        for (args, expected) in cases {
            let err = create_body(&args, 0).unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
    }

    #[tokio::test]
    async fn missing_admin_key_and_bad_url_are_refused_locally() {
        let list = || KeysCommand::List(ListArgs::default());
        let err = run_keys(list(), DEFAULT_URL, "  ").await.unwrap_err();
        assert!(matches!(err, CliError::MissingAdminKey));
        assert!(err.to_string().starts_with("SLUICE_ADMIN_KEY is not set"));
        let err = run_keys(list(), "ftp://host", ADMIN).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --url \"ftp://host\": expected http://host:port or https://host:port"
        );
        let err = run_keys(list(), "localhost:8080", ADMIN).await.unwrap_err();
        assert!(matches!(err, CliError::Url { .. }), "{err}");
    }

    #[test]
    fn base_url_path_is_kept() {
        let client = Client::new("http://gw.internal:8080/sluice/?x=1#f", ADMIN).unwrap();
        let url = client.endpoint(&["admin", "keys", "key_a"]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://gw.internal:8080/sluice/admin/keys/key_a"
        );
        let client = Client::new("http://gw.internal:8080", ADMIN).unwrap();
        let url = client.endpoint(&["admin", "keys"]).unwrap();
        assert_eq!(url.as_str(), "http://gw.internal:8080/admin/keys");
    }

    #[test]
    fn error_bodies_that_are_not_openai_shaped() {
        assert_eq!(error_message("", None), "(no message)");
        assert_eq!(error_message("Bad Gateway\n", None), "Bad Gateway");
        assert_eq!(
            error_message("", Some("https://gw/admin/keys")),
            "redirected to https://gw/admin/keys; use that URL as --url"
        );
        let long = "x".repeat(1000);
        assert_eq!(error_message(&long, None).chars().count(), 301);
    }

    #[test]
    fn control_characters_from_the_server_are_escaped() {
        let key: KeyView =
            serde_json::from_value(json!({"id": "k", "name": "a\u{1b}[31mred\nb"})).unwrap();
        let out = format_list(&[key], 0);
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("a\\u{1b}[31mred\\nb"), "{out}");
    }

    /// How the binary will embed the commands.
    #[derive(Debug, clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        keys: KeysArgs,
    }

    #[test]
    fn command_lines_parse() {
        let cli = TestCli::try_parse_from([
            "keys",
            "create",
            "--name",
            "ci",
            "--model",
            "a",
            "--model",
            "b",
            "--rpm",
            "60",
            "--budget-usd",
            "10.00",
            "--budget-period",
            "day",
            "--expires-in",
            "30d",
            "--metadata",
            "team=search=x",
            "--url",
            "http://gw:1",
        ])
        .unwrap();
        assert_eq!(cli.keys.url, "http://gw:1");
        let KeysCommand::Create(args) = cli.keys.command else {
            panic!("not create")
        };
        assert_eq!(args.models, ["a", "b"]);
        assert_eq!(args.rpm, Some(60));
        assert_eq!(args.budget_usd, Some(Decimal::new(1000, 2)));
        assert_eq!(args.budget_period, Some(BudgetPeriod::Day));
        assert_eq!(args.expires_in, Some(Duration::from_hours(30 * 24)));
        assert_eq!(args.metadata, [("team".to_owned(), "search=x".to_owned())]);

        let cli = TestCli::try_parse_from(["keys", "revoke", "key_a", "--json"]).unwrap();
        assert!(matches!(
            cli.keys.command,
            KeysCommand::Revoke(RevokeArgs { ref id, json: true }) if id == "key_a"
        ));

        // The budget pair is enforced by clap too; the admin key is never a flag.
        for bad in [
            &["keys", "create", "--name", "a", "--budget-usd", "5"][..],
            &["keys", "list", "--admin-key", "x"],
            &["keys", "create", "--name", "a", "--expires-in", "soon"],
            &["keys", "create", "--name", "a", "--metadata", "novalue"],
        ] {
            assert!(TestCli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
