//! The LLM judge: one prompt per kind of judgment, asking for JSON; lenient extraction of that JSON
//! from whatever the model returns (code fences, prose around it); and [`Judges`], which calls the judge
//! model through the provider layer at temperature 0 as an internal call (metrics, cost and the
//! request log record it like a client's call), with a bounded cache of replies and a timeout.
//!
//! Every prompt's user message starts with a marker line `### sluice-judge: <kind>` and ends with the
//! input as a JSON document after `Input:`. The marker says which judgment is asked (the scripted test
//! judge in `testkit::judge` keys on it); models ignore it.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use moka::future::Cache;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::GatewayError;
use crate::protocol::openai::{ChatMessage, ChatRequest};
use crate::provider::CallContext;
use crate::state::{AppState, WeakState};
use crate::telemetry::call::{Call, Operation, RequestParams};

/// The first line of every judge prompt, followed by the kind.
pub const MARKER: &str = "### sluice-judge: ";

/// Longest judge reply, in tokens.
const JUDGE_MAX_TOKENS: u32 = 2048;

/// Which judgment a prompt asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Split an answer into atomic statements (faithfulness, step 1).
    Statements,
    /// Supported / not supported verdict per statement (faithfulness, step 2).
    Faithfulness,
    /// Questions the answer would answer, and whether it is noncommittal (answer relevancy).
    AnswerQuestions,
    /// Useful / not useful verdict per context chunk (context precision).
    ContextUsefulness,
    /// 0–3 relevance of each chunk to the question (context relevance).
    ContextRelevance,
    /// Attributable / not verdict per reference sentence (context recall).
    ContextRecall,
    /// 0–3 support of each answer sentence (groundedness).
    Groundedness,
}

impl Kind {
    /// The name on the marker line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Statements => "statements",
            Self::Faithfulness => "faithfulness",
            Self::AnswerQuestions => "answer_questions",
            Self::ContextUsefulness => "context_usefulness",
            Self::ContextRelevance => "context_relevance",
            Self::ContextRecall => "context_recall",
            Self::Groundedness => "groundedness",
        }
    }

    /// The kind named on a marker line.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Statements,
            Self::Faithfulness,
            Self::AnswerQuestions,
            Self::ContextUsefulness,
            Self::ContextRelevance,
            Self::ContextRecall,
            Self::Groundedness,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    fn instructions(self) -> &'static str {
        match self {
            Self::Statements => {
                "Break the answer to the question into standalone, atomic statements. Each statement \
                 must be understandable on its own: replace pronouns with what they refer to. Do not \
                 add information that is not in the answer. If the answer makes no claim (a refusal, \
                 an empty answer), return an empty list.\n\
                 Reply with JSON only, in this shape: {\"statements\": [\"...\"]}"
            }
            Self::Faithfulness => {
                "For each statement, in order, judge whether it can be directly inferred from the \
                 context. verdict 1: the context supports it. verdict 0: the context contradicts it or \
                 says nothing about it. Use only the context, not your own knowledge. Give a short \
                 reason before each verdict.\n\
                 Reply with JSON only, one entry per statement, in this shape: {\"verdicts\": \
                 [{\"statement\": \"...\", \"reason\": \"...\", \"verdict\": 1}]}"
            }
            Self::AnswerQuestions => {
                "Write `n` different questions that the answer answers, each one on its own. Also say \
                 whether the answer is noncommittal (evasive, vague or a refusal such as \"I don't \
                 know\" or \"I'm not sure\"): 1 if it is, 0 if it is not.\n\
                 Reply with JSON only, in this shape: {\"questions\": [\"...\"], \"noncommittal\": 0}"
            }
            Self::ContextUsefulness => {
                "For each context chunk, in order, decide whether it was useful in arriving at the \
                 given answer to the question. verdict 1: useful. verdict 0: not useful. Give a short \
                 reason before each verdict.\n\
                 Reply with JSON only, one entry per chunk, in this shape: {\"verdicts\": \
                 [{\"index\": 0, \"reason\": \"...\", \"verdict\": 1}]}"
            }
            Self::ContextRelevance => {
                "For each context chunk, in order, rate how relevant it is to the question: 0 = not \
                 relevant, 1 = barely relevant, 2 = relevant, 3 = relevant and enough to answer the \
                 question. Give a short reason before each score.\n\
                 Reply with JSON only, one entry per chunk, in this shape: {\"scores\": \
                 [{\"index\": 0, \"reason\": \"...\", \"score\": 3}]}"
            }
            Self::ContextRecall => {
                "For each sentence of the reference answer, in order, decide whether it can be \
                 attributed to the context. attributed 1: the context contains it. attributed 0: it \
                 does not. Give a short reason before each verdict.\n\
                 Reply with JSON only, one entry per sentence, in this shape: {\"verdicts\": \
                 [{\"sentence\": \"...\", \"reason\": \"...\", \"attributed\": 1}]}"
            }
            Self::Groundedness => {
                "For each sentence of the answer, in order, rate how well the context supports it: \
                 0 = not supported, 1 = weakly supported, 2 = mostly supported, 3 = fully supported. \
                 Use only the context, not your own knowledge. Give a short reason before each \
                 score.\n\
                 Reply with JSON only, one entry per sentence, in this shape: {\"scores\": \
                 [{\"sentence\": \"...\", \"reason\": \"...\", \"score\": 3}]}"
            }
        }
    }
}

/// The messages of a judge call: a fixed system message and the marked user prompt.
pub fn prompt(kind: Kind, input: &Value) -> Vec<ChatMessage> {
    let input = serde_json::to_string_pretty(input).unwrap_or_else(|_| input.to_string());
    vec![
        ChatMessage::text(
            "system",
            "You are a careful, strict evaluator of retrieval-augmented answers. You reply with one \
             JSON object and nothing else.",
        ),
        ChatMessage::text(
            "user",
            format!(
                "{MARKER}{}\n{}\n\nInput:\n{input}",
                kind.as_str(),
                kind.instructions()
            ),
        ),
    ]
}

/// The JSON value in a judge reply: the whole text, else the content of a ```json fence, else the
/// span from the first `{` to the last `}`. Judges wrap JSON in prose and fences; this takes it anyway.
pub fn extract_json(text: &str) -> Option<Value> {
    let text = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v.is_object().then_some(v);
    }
    if let Some(start) = text.find("```") {
        let body = &text[start + 3..];
        let body = body.strip_prefix("json").unwrap_or(body);
        if let Some(end) = body.find("```")
            && let Ok(v) = serde_json::from_str::<Value>(body[..end].trim())
            && v.is_object()
        {
            return Some(v);
        }
    }
    let (start, end) = (text.find('{')?, text.rfind('}')?);
    if end <= start {
        return None;
    }
    let candidate = &text[start..=end];
    serde_json::from_str::<Value>(candidate)
        .ok()
        // A trailing comma before `}` or `]` is the commonest near-miss.
        .or_else(|| {
            let fixed = Regexes::get().trailing_comma.replace_all(candidate, "$1");
            serde_json::from_str::<Value>(&fixed).ok()
        })
        .filter(Value::is_object)
}

struct Regexes {
    trailing_comma: regex::Regex,
}

impl Regexes {
    fn get() -> &'static Self {
        static R: OnceLock<Regexes> = OnceLock::new();
        R.get_or_init(|| Self {
            #[expect(
                clippy::expect_used,
                reason = "a constant pattern, checked by the tests"
            )]
            trailing_comma: regex::Regex::new(r",\s*([}\]])").expect("valid regex"),
        })
    }
}

/// A 0/1 verdict, leniently: numbers (≥ 0.5 is yes), booleans, and yes/no words.
pub fn verdict(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f >= 0.5),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "yes" | "true" | "supported" | "useful" | "attributed" | "relevant" => Some(true),
            "0" | "no" | "false" | "unsupported" | "not supported" | "not useful"
            | "not attributed" | "irrelevant" | "not relevant" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A rating in `0..=max`, leniently: a number or a numeric string.
pub fn rating(v: &Value, max: f64) -> Option<f64> {
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (0.0..=max).contains(&f).then_some(f)
}

/// Why a judgment failed; the message is what the per-metric error says.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JudgeError {
    /// The reply held no usable JSON, or not the fields asked for.
    #[error("malformed judge output: {0}")]
    Malformed(String),
    /// The judge did not answer within `judge_timeout` (or the route's own timeout).
    #[error("judge timed out")]
    Timeout,
    /// The judge's provider (or Sluice's own limits) said 429.
    #[error("judge rate limited (429): {0}")]
    RateLimited(String),
    /// Any other failure of the judge call.
    #[error("judge call failed: {0}")]
    Failed(String),
    /// An embeddings call (answer relevancy) failed.
    #[error("{0}")]
    Embedding(String),
    /// What the metric needs is not configured or not given.
    #[error("{0}")]
    Unavailable(String),
}

impl JudgeError {
    /// A short label for metrics (`malformed`, `timeout`, `rate_limited`, `failed`, `embedding`,
    /// `unavailable`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Timeout => "timeout",
            Self::RateLimited(_) => "rate_limited",
            Self::Failed(_) => "failed",
            Self::Embedding(_) => "embedding",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn from_gateway(e: &GatewayError) -> Self {
        match e {
            GatewayError::UpstreamTimeout { .. } => Self::Timeout,
            GatewayError::RateLimited { .. } | GatewayError::QuotaExceeded(_) => {
                Self::RateLimited(e.to_string())
            }
            GatewayError::UpstreamRejected { status, .. } if status.as_u16() == 429 => {
                Self::RateLimited(e.to_string())
            }
            _ => Self::Failed(e.to_string()),
        }
    }
}

/// What the judge cost one evaluation: calls made, replies taken from the cache, and the cost of the
/// calls whose model has a price.
#[derive(Debug, Default)]
pub struct Tally {
    inner: Mutex<TallyData>,
}

#[derive(Debug, Default, Clone, Copy)]
struct TallyData {
    calls: u64,
    cached: u64,
    cost: Decimal,
    priced: bool,
}

impl Tally {
    fn add(&self, cached: bool, cost: Option<Decimal>) {
        let mut d = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if cached {
            d.cached += 1;
        } else {
            d.calls += 1;
        }
        if let Some(c) = cost {
            d.cost += c;
            d.priced = true;
        }
    }

    /// `{calls, cached, cost_usd}` (`cost_usd` null when no call had a known price).
    pub fn to_json(&self) -> Value {
        let d = *self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        json!({
            "calls": d.calls,
            "cached": d.cached,
            "cost_usd": d.priced.then(|| rust_decimal::prelude::ToPrimitive::to_f64(&d.cost)).flatten(),
        })
    }
}

/// Shared judge machinery: the cache of replies, the bound on calls in flight, the timeout.
pub struct Judges {
    cache: Option<Cache<[u8; 32], Arc<str>>>,
    permits: Semaphore,
    timeout: Duration,
    state: OnceLock<WeakState>,
}

impl Judges {
    /// At most `max_calls` judge calls at once, each within `timeout`; `cache_entries` replies kept for
    /// `cache_ttl` (0 entries: no cache).
    pub fn new(
        max_calls: usize,
        timeout: Duration,
        cache_entries: u64,
        cache_ttl: Duration,
    ) -> Self {
        Self {
            cache: (cache_entries > 0).then(|| {
                Cache::builder()
                    .max_capacity(cache_entries)
                    .time_to_live(cache_ttl)
                    .build()
            }),
            permits: Semaphore::new(max_calls),
            timeout,
            state: OnceLock::new(),
        }
    }

    /// Connects the judges to the gateway they call through.
    pub fn bind(&self, state: &AppState) {
        let _ = self.state.set(state.downgrade());
    }

    /// Asks `model` for a `kind` judgment of `input`; the reply's JSON object.
    pub async fn ask(
        &self,
        model: &str,
        kind: Kind,
        input: &Value,
        tally: &Tally,
    ) -> Result<Value, JudgeError> {
        let messages = prompt(kind, input);
        let key = cache_key(model, &messages);
        if let Some(cache) = &self.cache
            && let Some(text) = cache.get(&key).await
            && let Some(v) = extract_json(&text)
        {
            tally.add(true, None);
            return Ok(v);
        }
        let text = self.call(model, messages, tally).await?;
        let value = extract_json(&text).ok_or_else(|| {
            JudgeError::Malformed(format!(
                "no JSON object in the reply to the {} prompt",
                kind.as_str()
            ))
        })?;
        if let Some(cache) = &self.cache {
            cache.insert(key, Arc::from(text)).await;
        }
        Ok(value)
    }

    async fn call(
        &self,
        model: &str,
        messages: Vec<ChatMessage>,
        tally: &Tally,
    ) -> Result<String, JudgeError> {
        let state = self
            .state
            .get()
            .and_then(WeakState::upgrade)
            .ok_or_else(|| JudgeError::Failed("the gateway is shutting down".to_owned()))?;
        let route = state
            .providers
            .route(model)
            .map_err(|e| JudgeError::Unavailable(e.to_string()))?
            .clone();
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| JudgeError::Failed("the judge is closed".to_owned()))?;
        let call = Call::internal("rag_judge");
        let params = RequestParams {
            temperature: Some(0.0),
            top_p: None,
            max_tokens: Some(JUDGE_MAX_TOKENS),
        };
        call.begin(Operation::Chat, model, false, params);
        let ctx = CallContext {
            call: Arc::clone(&call),
            ..CallContext::default()
        };
        let req = ChatRequest {
            model: model.to_owned(),
            messages,
            temperature: Some(0.0),
            max_tokens: Some(JUDGE_MAX_TOKENS),
            ..ChatRequest::default()
        };
        let result = match tokio::time::timeout(self.timeout, route.chat(req, ctx)).await {
            Ok(r) => r,
            Err(_elapsed) => Err(GatewayError::UpstreamTimeout {
                provider: route.provider.name().to_owned(),
                phase: "judge",
            }),
        };
        let status = match &result {
            Ok(_) => 200,
            Err(e) => {
                call.fail(e);
                e.status().as_u16()
            }
        };
        let cost = call.finish(status, true, &state.obs).and_then(|f| f.cost);
        tally.add(false, cost);
        let reply = result.map_err(|e| JudgeError::from_gateway(&e))?;
        Ok(reply
            .choices
            .first()
            .map(|c| c.message.text_content())
            .unwrap_or_default())
    }
}

fn cache_key(model: &str, messages: &[ChatMessage]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    for m in messages {
        h.update(m.role.as_bytes());
        h.update([0]);
        h.update(m.text_content().as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_found_in_fences_prose_and_near_misses() {
        let want = json!({"statements": ["a"]});
        assert_eq!(extract_json(r#"{"statements": ["a"]}"#), Some(want.clone()));
        assert_eq!(
            extract_json("Sure!\n```json\n{\"statements\": [\"a\"]}\n```\nDone."),
            Some(want.clone())
        );
        assert_eq!(
            extract_json("Here it is: {\"statements\": [\"a\"]} hope it helps"),
            Some(want.clone())
        );
        assert_eq!(extract_json("{\"statements\": [\"a\",],}"), Some(want));
        assert_eq!(extract_json("I cannot judge this."), None);
        assert_eq!(extract_json("[1, 2]"), None);
        assert_eq!(extract_json("} {"), None);
    }

    #[test]
    fn verdicts_and_ratings_are_read_leniently() {
        assert_eq!(verdict(&json!(1)), Some(true));
        assert_eq!(verdict(&json!(0)), Some(false));
        assert_eq!(verdict(&json!("Yes")), Some(true));
        assert_eq!(verdict(&json!("not supported")), Some(false));
        assert_eq!(verdict(&json!(true)), Some(true));
        assert_eq!(verdict(&json!("maybe")), None);
        assert_eq!(rating(&json!(2), 3.0), Some(2.0));
        assert_eq!(rating(&json!("3"), 3.0), Some(3.0));
        assert_eq!(rating(&json!(7), 3.0), None);
        assert_eq!(rating(&json!(null), 3.0), None);
    }

    #[test]
    fn prompts_carry_the_marker_and_the_input() {
        let p = prompt(Kind::Faithfulness, &json!({"statements": ["x"]}));
        let user = p[1].text_content();
        assert!(user.starts_with("### sluice-judge: faithfulness\n"));
        let input = user.split_once("\nInput:\n").unwrap().1;
        assert_eq!(
            serde_json::from_str::<Value>(input).unwrap(),
            json!({"statements": ["x"]})
        );
        assert_eq!(Kind::parse("faithfulness"), Some(Kind::Faithfulness));
    }
}
