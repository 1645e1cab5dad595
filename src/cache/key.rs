//! The exact-tier cache key of a chat request: SHA-256 over a canonical JSON encoding of the tenant and
//! every request field that can change the answer.
//!
//! - **Which fields.** All of them except a short list that cannot change the content of the answer
//!   ([`IGNORED_FIELDS`]: how it is delivered, who asked, where it is stored). A field Sluice does not
//!   know is part of the key: an unknown field costs a miss, never a wrong hit.
//! - **Canonical.** Object keys are sorted at every depth (independent of `serde_json`'s map order), so
//!   `{"a":1,"b":2}` and `{"b":2,"a":1}` give the same key; typed fields (temperature, max_tokens)
//!   serialise one way, so `0` and `0.0` agree. Strings are compared exactly: whitespace or case
//!   differences in a prompt are a different key (the semantic tier is for near-duplicates).
//! - **Tenant.** The scope (the key id, or `anonymous`) is hashed first, so an answer is never
//!   shared across tenants, even for byte-identical requests.
//! - **Determinism.** [`cacheable`] says whether a request may be served from the cache at all: only
//!   deterministic sampling (`temperature` 0, one choice) unless the caller opts in.

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::protocol::openai::ChatRequest;

/// Fields that do not change the content of an answer and are left out of the key: delivery
/// (`stream`, `stream_options`), identity and bookkeeping (`user`, `metadata`, `store`,
/// `service_tier`, `safety_identifier`, `prompt_cache_key`), and Sluice's own `session_id`.
pub const IGNORED_FIELDS: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "session_id",
];

/// An exact-tier cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lower-case hex, for logs and Redis keys.
    pub fn hex(&self) -> String {
        crate::control::encode_hash(&self.0)
    }
}

/// The key of `request` for tenant `scope`.
pub fn chat_key(scope: &str, request: &ChatRequest) -> CacheKey {
    request_key(scope, "chat", request)
}

/// The key of any request body (`kind` separates endpoints whose bodies could look alike, e.g.
/// `completion` for `/v1/completions`).
pub fn request_key(scope: &str, kind: &str, request: &impl serde::Serialize) -> CacheKey {
    let mut value = serde_json::to_value(request).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for field in IGNORED_FIELDS {
            map.remove(*field);
        }
    }
    hash_parts(&[scope, kind], &value)
}

/// SHA-256 of length-prefixed `parts` (so no part can run into the next) and the canonical `value`.
fn hash_parts(parts: &[&str], value: &Value) -> CacheKey {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let mut canonical = Vec::with_capacity(256);
    write_canonical(value, &mut canonical);
    hasher.update(&canonical);
    CacheKey(hasher.finalize().into())
}

/// The semantic-tier scope of `request`: tenant, model, every parameter, the tools and the system
/// prompt — everything but the conversation itself — and the embedder (vectors of different embedders
/// are not comparable). Only entries of the same scope are compared.
pub fn semantic_scope(tenant: &str, embedder: &str, request: &ChatRequest) -> CacheKey {
    let mut value = serde_json::to_value(request).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for field in IGNORED_FIELDS {
            map.remove(*field);
        }
        if let Some(Value::Array(messages)) = map.get_mut("messages") {
            messages.retain(|m| is_instruction(m.get("role").and_then(Value::as_str)));
        }
    }
    hash_parts(&[tenant, "semantic", embedder], &value)
}

fn is_instruction(role: Option<&str>) -> bool {
    matches!(role, Some("system" | "developer"))
}

/// Why a request is not looked up in the semantic tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSemantic {
    /// More user turns than `max_turns` (a conversation's answer depends on all of it).
    LongConversation,
    /// Images, audio, files or tool calls: the text alone does not say what is asked.
    NonText,
    /// Longer than `max_query_chars`.
    TooLong,
    /// No user text at all.
    Empty,
}

/// The text the semantic tier embeds: the user-visible turns (user and assistant text, system prompt
/// excluded — it is part of the scope), one per line. `max_turns` user messages at most unless
/// `force`; any non-text part or tool call makes the request ineligible.
pub fn semantic_text(
    request: &ChatRequest,
    max_turns: usize,
    max_chars: usize,
    force: bool,
) -> Result<String, NotSemantic> {
    let turns: Vec<_> = request
        .messages
        .iter()
        .filter(|m| !is_instruction(Some(m.role.as_str())))
        .collect();
    let user_turns = turns.iter().filter(|m| m.role == "user").count();
    if user_turns == 0 {
        return Err(NotSemantic::Empty);
    }
    if user_turns > max_turns && !force {
        return Err(NotSemantic::LongConversation);
    }
    let mut text = String::new();
    for m in &turns {
        let plain = match &m.content {
            Some(crate::protocol::openai::MessageContent::Text(_)) => true,
            Some(crate::protocol::openai::MessageContent::Parts(parts)) => parts
                .iter()
                .all(|p| p.get("type").and_then(Value::as_str) == Some("text")),
            None => false,
        };
        if !plain || m.tool_calls.is_some() || !matches!(m.role.as_str(), "user" | "assistant") {
            return Err(NotSemantic::NonText);
        }
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(m.text_content().trim());
    }
    if text.chars().count() > max_chars {
        return Err(NotSemantic::TooLong);
    }
    if text.trim().is_empty() {
        return Err(NotSemantic::Empty);
    }
    Ok(text)
}

/// Why a request is not served from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCacheable {
    /// Sampling is random (`temperature` unset or above 0) and the caller did not opt in.
    NonDeterministic,
    /// More than one choice asked for (`n` > 1).
    SeveralChoices,
}

/// Whether `request` may be answered from the cache: deterministic sampling (`temperature` 0), or any
/// sampling when the caller opted in (`opt_in`, e.g. a header); never with `n` > 1.
pub fn cacheable(request: &ChatRequest, opt_in: bool) -> Result<(), NotCacheable> {
    if request
        .extra
        .get("n")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 1)
    {
        return Err(NotCacheable::SeveralChoices);
    }
    if opt_in || request.temperature == Some(0.0) {
        Ok(())
    } else {
        Err(NotCacheable::NonDeterministic)
    }
}

/// Appends the canonical JSON of `value`: object keys sorted, no whitespace.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Scalars have one JSON encoding in serde_json; writing to a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One edit of a request body.
    type Change = Box<dyn Fn(&mut Value)>;

    fn request(json: Value) -> ChatRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn semantic_scope_ignores_the_conversation_but_not_the_system_prompt_or_tenant() {
        let base = serde_json::json!({"model": "m", "temperature": 0, "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "capital of Austria?"}]});
        let a = request(base.clone());
        let mut other_question = base.clone();
        other_question["messages"][1]["content"] = "capital of France?".into();
        let mut other_system = base.clone();
        other_system["messages"][0]["content"] = "be long".into();
        let mut other_temp = base;
        other_temp["temperature"] = 1.into();
        let scope = |r: &ChatRequest| semantic_scope("t1", "e", r);
        assert_eq!(scope(&a), scope(&request(other_question)));
        assert_ne!(scope(&a), scope(&request(other_system)));
        assert_ne!(scope(&a), scope(&request(other_temp)));
        assert_ne!(scope(&a), semantic_scope("t2", "e", &a));
        assert_ne!(scope(&a), semantic_scope("t1", "other-embedder", &a));
    }

    #[test]
    fn semantic_text_takes_user_turns_and_refuses_what_it_cannot_compare() {
        let one = request(serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "x"}, {"role": "user", "content": " Hi there "}]}));
        assert_eq!(semantic_text(&one, 1, 100, false).unwrap(), "Hi there");
        assert_eq!(semantic_text(&one, 1, 3, false), Err(NotSemantic::TooLong));
        let long = request(serde_json::json!({"model": "m", "messages": [
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}]}));
        assert_eq!(
            semantic_text(&long, 1, 100, false),
            Err(NotSemantic::LongConversation)
        );
        assert_eq!(semantic_text(&long, 1, 100, true).unwrap(), "a\nb\nc");
        let image = request(
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": "x"}}]}]}),
        );
        assert_eq!(
            semantic_text(&image, 1, 100, false),
            Err(NotSemantic::NonText)
        );
    }

    fn base() -> Value {
        serde_json::json!({
            "model": "gpt-4o",
            "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of Austria?"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}}}}]
        })
    }

    #[test]
    fn delivery_and_identity_fields_do_not_change_the_key() {
        let plain = chat_key("key_1", &request(base()));
        let mut streamed = base();
        streamed["stream"] = true.into();
        streamed["stream_options"] = serde_json::json!({"include_usage": true});
        streamed["user"] = "u-42".into();
        streamed["session_id"] = "sess_1".into();
        assert_eq!(chat_key("key_1", &request(streamed)), plain);
        let mut float = base();
        float["temperature"] = serde_json::json!(0.0);
        assert_eq!(chat_key("key_1", &request(float)), plain, "0 and 0.0 agree");
    }

    #[test]
    fn object_key_order_does_not_matter_at_any_depth() {
        let reordered: Value = serde_json::from_str(
            r#"{"tools": [{"function": {"parameters": {"properties": {"b": {"type": "number"}, "a": {"type": "string"}}, "type": "object"}, "name": "f"}, "type": "function"}],
                "messages": [{"content": "What is the capital of Austria?", "role": "user"}], "temperature": 0, "model": "gpt-4o"}"#,
        )
        .unwrap();
        assert_eq!(
            chat_key("key_1", &request(reordered)),
            chat_key("key_1", &request(base()))
        );
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let plain = chat_key("key_1", &request(base()));
        let variants: Vec<Change> = vec![
            Box::new(|v| v["model"] = "gpt-4o-mini".into()),
            Box::new(|v| v["messages"][0]["content"] = "What is the capital of Australia?".into()),
            Box::new(|v| v["messages"][0]["content"] = "what is the capital of Austria?".into()),
            Box::new(|v| v["messages"][0]["role"] = "system".into()),
            Box::new(|v| v["temperature"] = serde_json::json!(0.5)),
            Box::new(|v| v["max_tokens"] = 10.into()),
            Box::new(|v| v["seed"] = 7.into()),
            Box::new(|v| v["response_format"] = serde_json::json!({"type": "json_object"})),
            Box::new(|v| v["tools"][0]["function"]["name"] = "g".into()),
            Box::new(|v| v["some_future_field"] = true.into()),
        ];
        for (i, change) in variants.iter().enumerate() {
            let mut v = base();
            change(&mut v);
            assert_ne!(chat_key("key_1", &request(v)), plain, "variant {i}");
        }
    }

    #[test]
    fn tenants_never_share_a_key() {
        let r = request(base());
        assert_ne!(chat_key("key_1", &r), chat_key("key_2", &r));
        assert_ne!(chat_key("a", &r), chat_key("", &r));
        assert_eq!(chat_key("key_1", &r).hex().len(), 64);
    }

    #[test]
    fn only_deterministic_single_choice_requests_are_cacheable_by_default() {
        assert_eq!(cacheable(&request(base()), false), Ok(()));
        let mut random = base();
        random["temperature"] = serde_json::json!(0.7);
        assert_eq!(
            cacheable(&request(random.clone()), false),
            Err(NotCacheable::NonDeterministic)
        );
        assert_eq!(cacheable(&request(random), true), Ok(()));
        let mut unset = base();
        unset.as_object_mut().unwrap().remove("temperature");
        assert_eq!(
            cacheable(&request(unset), false),
            Err(NotCacheable::NonDeterministic),
            "OpenAI's default temperature is 1"
        );
        let mut several = base();
        several["n"] = 3.into();
        assert_eq!(
            cacheable(&request(several), true),
            Err(NotCacheable::SeveralChoices)
        );
    }

    proptest::proptest! {
        #[test]
        fn keys_are_stable_and_distinct_for_distinct_prompts(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let key = |text: &str| {
                let mut v = base();
                v["messages"][0]["content"] = text.into();
                chat_key("k", &request(v))
            };
            proptest::prop_assert_eq!(key(&a), key(&a));
            proptest::prop_assert_eq!(key(&a) == key(&b), a == b);
        }
    }
}
