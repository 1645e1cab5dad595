//! A scripted LLM judge for tests: a loopback OpenAI-compatible server (`POST /v1/chat/completions`)
//! that recognises Sluice's judge prompts by their marker line (`### sluice-judge: <kind>`) and answers
//! deterministically from word overlap: a statement is supported when at least 60% of its content words
//! appear in the context, a chunk is useful when it holds at least 30% of the answer's content words,
//! and so on. Its JSON comes wrapped in prose and a code fence, as real models often answer, so the
//! lenient parser is exercised too.
//!
//! Failure modes, per judgment kind or for all: [`Mode::Malformed`] (prose, no JSON), [`Mode::Hang`]
//! (never answers), [`Mode::RateLimited`] (429 in OpenAI's error shape), [`Mode::ServerError`] (500),
//! [`Mode::ShortList`] (well-formed JSON with the last entry of each list missing).

use std::collections::{BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::eval::judge::MARKER;

/// How the judge answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deterministic judgments.
    Normal,
    /// A reply without any JSON.
    Malformed,
    /// Never answers (the gateway's judge timeout must fire).
    Hang,
    /// 429 with an OpenAI-shaped error body.
    RateLimited,
    /// 500 with an OpenAI-shaped error body.
    ServerError,
    /// The normal judgment, well-formed, but every list one entry short (a wrong verdict count).
    ShortList,
}

#[derive(Default)]
struct Shared {
    /// Mode per judgment kind; `""` applies to every kind without its own.
    modes: Mutex<HashMap<String, Mode>>,
    calls: AtomicU64,
    /// Temperature of every request (at most the last 1000).
    temperatures: Mutex<Vec<Option<f64>>>,
}

/// A running scripted judge; clones share the server.
#[derive(Clone)]
pub struct ScriptedJudge {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl ScriptedJudge {
    /// Starts the judge on 127.0.0.1 on a free port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .with_state(Arc::clone(&shared));
        #[expect(
            clippy::disallowed_methods,
            reason = "the judge server runs detached for the life of the test"
        )]
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "scripted judge stopped");
            }
        });
        Ok(Self { shared, addr })
    }

    /// `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sets the mode of one judgment kind (`faithfulness`, `statements`, ...), or of all (`None`).
    pub fn set_mode(&self, kind: Option<&str>, mode: Mode) {
        self.shared
            .modes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind.unwrap_or_default().to_owned(), mode);
    }

    /// Chat requests received so far.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// The `temperature` of every request received (the last 1000).
    pub fn temperatures(&self) -> Vec<Option<f64>> {
        self.shared
            .temperatures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

async fn chat(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    shared.calls.fetch_add(1, Ordering::SeqCst);
    {
        let mut t = shared
            .temperatures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if t.len() < 1000 {
            t.push(body.get("temperature").and_then(Value::as_f64));
        }
    }
    let prompt = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let kind = prompt
        .lines()
        .next()
        .and_then(|l| l.strip_prefix(MARKER))
        .unwrap_or_default()
        .to_owned();
    let mode = {
        let modes = shared.modes.lock().unwrap_or_else(PoisonError::into_inner);
        modes
            .get(&kind)
            .or_else(|| modes.get(""))
            .copied()
            .unwrap_or(Mode::Normal)
    };
    let content = match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_hours(1)).await;
            String::new()
        }
        Mode::RateLimited => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "30")],
                Json(json!({"error": {"message": "Rate limit reached for judge", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})),
            )
                .into_response();
        }
        Mode::ServerError => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": {"message": "The judge had an error", "type": "server_error", "param": null, "code": null}})),
            )
                .into_response();
        }
        Mode::Malformed => {
            "I am sorry, I cannot produce a verdict in the requested format.".to_owned()
        }
        Mode::Normal | Mode::ShortList => {
            let input = prompt
                .split_once("\nInput:\n")
                .and_then(|(_, i)| serde_json::from_str::<Value>(i).ok())
                .unwrap_or(Value::Null);
            let judged = judge(&kind, &input).map(|mut v| {
                if mode == Mode::ShortList
                    && let Some(obj) = v.as_object_mut()
                {
                    for list in obj.values_mut().filter_map(Value::as_array_mut) {
                        list.pop();
                    }
                }
                v
            });
            match judged {
                Some(v) => format!("Here is my judgment:\n```json\n{v:#}\n```"),
                None => "Unknown judgment.".to_owned(),
            }
        }
    };
    let prompt_tokens = prompt.split_whitespace().count();
    let completion_tokens = content.split_whitespace().count();
    Json(json!({
        "id": "chatcmpl-judge",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

const STOPWORDS: [&str; 24] = [
    "the", "and", "for", "are", "was", "were", "with", "that", "this", "from", "has", "have",
    "had", "its", "which", "what", "who", "when", "where", "how", "not", "but", "into", "also",
];

/// Lowercase words of three letters or more, without stopwords.
pub fn content_words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Fraction of `text`'s content words found in `source` (1 when `text` has none).
pub fn support(text: &str, source: &str) -> f64 {
    let words = content_words(text);
    if words.is_empty() {
        return 1.0;
    }
    let source = content_words(source);
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let f = words.iter().filter(|w| source.contains(*w)).count() as f64 / words.len() as f64;
    f
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str().map_or_else(
                        || x["text"].as_str().unwrap_or_default().to_owned(),
                        str::to_owned,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn rating(f: f64) -> u8 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "0..=3"
    )]
    let r = (f * 3.0).round().clamp(0.0, 3.0) as u8;
    r
}

fn noncommittal(answer: &str) -> bool {
    let a = answer.to_lowercase();
    ["don't know", "do not know", "not sure", "cannot answer"]
        .iter()
        .any(|p| a.contains(p))
}

fn judge(kind: &str, input: &Value) -> Option<Value> {
    let context = input["context"].as_str().unwrap_or_default();
    Some(match kind {
        "statements" => {
            let answer = input["answer"].as_str().unwrap_or_default();
            let statements: Vec<String> = if noncommittal(answer) {
                Vec::new()
            } else {
                crate::eval::metrics::sentences(answer)
            };
            json!({"statements": statements})
        }
        "faithfulness" => {
            let verdicts: Vec<Value> = strings(&input["statements"])
                .iter()
                .map(|s| {
                    let f = support(s, context);
                    json!({"statement": s, "reason": format!("{:.0}% of its content words are in the context", f * 100.0), "verdict": u8::from(f >= 0.6)})
                })
                .collect();
            json!({"verdicts": verdicts})
        }
        "answer_questions" => {
            let answer = input["answer"].as_str().unwrap_or_default();
            // A refusal: no question to generate, as real judges often reply.
            let n = if noncommittal(answer) {
                0
            } else {
                input["n"].as_u64().unwrap_or(3)
            };
            let words: Vec<String> = content_words(answer).into_iter().collect();
            let questions: Vec<String> = (0..n)
                .map(|i| {
                    let skip = usize::try_from(i).unwrap_or(0);
                    let picked: Vec<&str> = words
                        .iter()
                        .skip(skip)
                        .take(6)
                        .map(String::as_str)
                        .collect();
                    format!("What about {}?", picked.join(" "))
                })
                .collect();
            json!({"questions": questions, "noncommittal": u8::from(noncommittal(answer))})
        }
        "context_usefulness" => {
            let answer = input["answer"].as_str().unwrap_or_default();
            let verdicts: Vec<Value> = strings(&input["contexts"])
                .iter()
                .enumerate()
                .map(|(index, chunk)| {
                    let f = support(answer, chunk);
                    json!({"index": index, "reason": format!("holds {:.0}% of the answer's words", f * 100.0), "verdict": u8::from(f >= 0.3)})
                })
                .collect();
            json!({"verdicts": verdicts})
        }
        "context_relevance" => {
            let question = input["question"].as_str().unwrap_or_default();
            let scores: Vec<Value> = strings(&input["contexts"])
                .iter()
                .enumerate()
                .map(|(index, chunk)| {
                    let f = support(question, chunk);
                    json!({"index": index, "reason": format!("holds {:.0}% of the question's words", f * 100.0), "score": rating(f)})
                })
                .collect();
            json!({"scores": scores})
        }
        "context_recall" => {
            let verdicts: Vec<Value> = strings(&input["reference_sentences"])
                .iter()
                .map(|s| {
                    let f = support(s, context);
                    json!({"sentence": s, "reason": format!("{:.0}% found in the context", f * 100.0), "attributed": u8::from(f >= 0.6)})
                })
                .collect();
            json!({"verdicts": verdicts})
        }
        "groundedness" => {
            let scores: Vec<Value> = strings(&input["sentences"])
                .iter()
                .map(|s| {
                    let f = support(s, context);
                    json!({"sentence": s, "reason": format!("{:.0}% supported", f * 100.0), "score": rating(f)})
                })
                .collect();
            json!({"scores": scores})
        }
        _ => return None,
    })
}
