//! Secret masking for captured bodies, and the two-step body cap: a cheap cut on the request path
//! ([`cut_in_place`]), then redaction and the exact cap with a marker in the writer ([`finish_body`]).
//!
//! Every rule tolerates text cut in the middle of a secret (the value pattern runs to the end of the
//! text when its closing quote is missing), because bodies arrive here already cut.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::LazyLock;

use regex::Regex;

/// What a masked secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Extra bytes kept past `max_body_bytes` on the request path, so that a secret straddling the final
/// cap is still whole (and so recognisable) when the writer redacts.
pub(crate) const REDACTION_MARGIN: usize = 1024;

/// Field and parameter names whose values are secrets. The name must END with one of these words:
/// `access_token`, `client_secret` and `apiKey` match; `max_tokens` and `tokenizer` do not.
const SECRET_NAME: &str = r"[A-Za-z0-9_.-]*(?:api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key|password|passwd|secret|token|credentials?)";

/// Header names (and header-like assignments) whose whole value is a credential.
const HEADER_NAME: &str = r"(?:proxy-)?authorization|x-api-key|api-key|x-goog-api-key|aws_secret_access_key|aws_session_token";

/// One rule: a pattern and its replacement (`$n` refers to capture groups).
struct Rule {
    regex: Regex,
    replacement: &'static str,
}

/// The rules, in order. `None` only if a pattern fails to compile, which a unit test rules out; then
/// [`redact`] fails closed.
static RULES: LazyLock<Option<Vec<Rule>>> = LazyLock::new(|| {
    // `(?-u:\b)`: an ASCII word boundary. A Unicode `\b` makes the regex engine fall back to its slow
    // path on non-ASCII text, which model output often is.
    let specs: [(String, &'static str); 7] = [
        // `Authorization: Bearer …`, `"x-api-key": "…"`, `-H 'api-key: …'`, `aws_secret_access_key = …`.
        (
            format!(
                r#"(?i)(?-u:\b)({HEADER_NAME})(\\?"?\s*[:=]\s*\\?"?)(?:(?:bearer|basic|token)\s+)?[^\s"'\\,;}}]+"#
            ),
            "${1}${2}[REDACTED]",
        ),
        // A bearer token anywhere else.
        (
            r"(?i)(?-u:\b)bearer\s+[A-Za-z0-9._~+/=-]{8,}".to_owned(),
            "Bearer [REDACTED]",
        ),
        // Provider keys: `sk-…`, `sk-ant-…`, `sk-proj-…` (OpenAI, Anthropic and look-alikes), Google `AIza…`.
        (
            r"(?-u:\b)(?:sk-[A-Za-z0-9_-]{16,}|AIza[0-9A-Za-z_-]{30,})".to_owned(),
            "[REDACTED]",
        ),
        // AWS access key ids.
        (
            r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}(?-u:\b)"
                .to_owned(),
            "[REDACTED]",
        ),
        // JSON string fields: `"api_key": "…"`, `"password":"…"`.
        (
            format!(r#"(?i)("{SECRET_NAME}")(\s*:\s*)"(?:[^"\\]|\\.)*"?"#),
            r#"${1}${2}"[REDACTED]""#,
        ),
        // The same inside a JSON-encoded string (`\"password\": \"…\"`), e.g. tool-call arguments.
        // Value: plain characters, inner escapes (`\\n`, `\\\"`, `\\\\`) or outer escapes (`\n`).
        (
            format!(
                r#"(?i)(\\"{SECRET_NAME}\\")(\s*:\s*)\\"(?:[^"\\]|\\\\(?:\\"|\\\\|[^"\\])|\\[^"\\])*(?:\\")?"#
            ),
            r#"${1}${2}\"[REDACTED]\""#,
        ),
        // Query strings, form bodies, env assignments: `api_key=…&`, `AWS_SECRET_ACCESS_KEY=…`.
        (
            format!(r#"(?i)(?-u:\b)({SECRET_NAME})=[^&\s"'<>,;]+"#),
            "${1}=[REDACTED]",
        ),
    ];
    specs
        .into_iter()
        .map(|(pattern, replacement)| {
            Regex::new(&pattern)
                .ok()
                .map(|regex| Rule { regex, replacement })
        })
        .collect()
});

/// Masks secrets in `text`: `Authorization`/`x-api-key` header values, bearer tokens, `sk-…`-style and
/// Google API keys, AWS access key ids and secret keys, and values of JSON fields and query parameters
/// whose name ends in `api_key`/`apiKey`, `password`, `secret`, `token`, `access_key`, `credentials`….
///
/// Over-masks rather than under-masks: e.g. every `"token"` field of OpenAI logprobs is masked too.
pub fn redact(text: &str) -> String {
    let Some(rules) = RULES.as_ref() else {
        // Unreachable in practice (a test compiles every rule); never store unmasked text.
        return REDACTED.to_owned();
    };
    let mut out = Cow::Borrowed(text);
    for rule in rules {
        let replaced = match rule.regex.replace_all(&out, rule.replacement) {
            Cow::Owned(s) => Some(s),
            Cow::Borrowed(_) => None,
        };
        if let Some(s) = replaced {
            out = Cow::Owned(s);
        }
    }
    out.into_owned()
}

/// Request-path cut: truncates `body` to at most `limit` bytes (at a char boundary) and releases the
/// excess memory, so the queue holds bounded bytes. Returns the original length if it cut.
pub(crate) fn cut_in_place(body: &mut Option<String>, limit: usize) -> Option<usize> {
    let s = body.as_mut()?;
    if s.len() <= limit {
        return None;
    }
    let original = s.len();
    let at = s.floor_char_boundary(limit);
    s.truncate(at);
    s.shrink_to_fit();
    Some(original)
}

/// Writer-side finish: redacts `body`, then caps it to `max` bytes with a marker naming the original
/// size. `original_len` is the size before [`cut_in_place`] (equal to `body.len()` if it did not cut).
pub(crate) fn finish_body(body: &str, original_len: usize, max: usize) -> String {
    let mut out = redact(body);
    if out.len() <= max && original_len <= body.len() {
        return out;
    }
    out.truncate(out.floor_char_boundary(max));
    // Writing to a `String` cannot fail.
    let _ = write!(out, "…[truncated: {original_len} bytes total]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles() {
        assert_eq!(RULES.as_ref().map(Vec::len), Some(7));
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(
            redact("Authorization: Bearer abc.def-ghi_jkl\r\nHost: x"),
            "Authorization: [REDACTED]\r\nHost: x"
        );
        assert_eq!(
            redact(r#"{"headers":{"Authorization":"Bearer eyJhbGciOi.eyJzdWIi.sig"}}"#),
            r#"{"headers":{"Authorization":"[REDACTED]"}}"#
        );
        assert_eq!(
            redact("curl -H 'authorization: Basic dXNlcjpwYXNz' https://x"),
            "curl -H 'authorization: [REDACTED]' https://x"
        );
        assert_eq!(
            redact(r#"{"Proxy-Authorization": "Basic Zm9vOmJhcg=="}"#),
            r#"{"Proxy-Authorization": "[REDACTED]"}"#
        );
    }

    #[test]
    fn bearer_token_anywhere() {
        assert_eq!(
            redact("use bearer 0123456789abcdef to call"),
            "use Bearer [REDACTED] to call"
        );
        // Too short to be a token: prose is kept.
        assert_eq!(redact("the bearer of news"), "the bearer of news");
    }

    #[test]
    fn x_api_key_header() {
        assert_eq!(
            redact("x-api-key: 3f9a8b7c6d5e4f3a2b1c\nother: 1"),
            "x-api-key: [REDACTED]\nother: 1"
        );
        assert_eq!(
            redact(r#"{"X-Api-Key": "plainvalue123"}"#),
            r#"{"X-Api-Key": "[REDACTED]"}"#
        );
        assert_eq!(redact("x-goog-api-key=abc123"), "x-goog-api-key=[REDACTED]");
    }

    #[test]
    fn provider_keys() {
        for key in [
            "sk-abcdefghijklmnopqrstuvwxyz012345",
            "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx-yz0123456789_AA",
            "sk-proj-AbCdEf0123456789GhIjKlMnOpQrStUvWx",
            "AIzaSyA-1234567890abcdefghijklmnopqrstu",
        ] {
            let text = format!("my key is {key}, keep it safe");
            assert_eq!(redact(&text), "my key is [REDACTED], keep it safe", "{key}");
            let json = format!(r#"{{"content":"key={key}"}}"#);
            assert!(!redact(&json).contains(&key[8..]), "{key} in {json}");
        }
        // Ordinary words containing `sk-` are kept.
        assert_eq!(redact("task-queue and sk-learn"), "task-queue and sk-learn");
    }

    #[test]
    fn aws_keys() {
        assert_eq!(
            redact("id AKIAIOSFODNN7EXAMPLE and ASIAY34FZKBOKMUTVV7A."),
            "id [REDACTED] and [REDACTED]."
        );
        assert_eq!(
            redact("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nX=1"),
            "AWS_SECRET_ACCESS_KEY=[REDACTED]\nX=1"
        );
        assert_eq!(
            redact("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            "aws_secret_access_key = [REDACTED]"
        );
        assert_eq!(
            redact(r#"{"secretAccessKey":"wJalrXUtnFEMI/K7MDENG"}"#),
            r#"{"secretAccessKey":"[REDACTED]"}"#
        );
    }

    #[test]
    fn json_secret_fields() {
        let input = r#"{"api_key":"k1","apiKey": "k2","password" : "p\"w","client_secret":"s","access_token":"t","token":"u","Credentials":"c","max_tokens":5,"tokenizer":"cl100k","model":"gpt"}"#;
        let expected = r#"{"api_key":"[REDACTED]","apiKey": "[REDACTED]","password" : "[REDACTED]","client_secret":"[REDACTED]","access_token":"[REDACTED]","token":"[REDACTED]","Credentials":"[REDACTED]","max_tokens":5,"tokenizer":"cl100k","model":"gpt"}"#;
        assert_eq!(redact(input), expected);
    }

    #[test]
    fn json_fields_inside_a_json_string() {
        let input = r#"{"arguments":"{\"user\":\"bob\",\"password\":\"a\\\"b\\\\c\",\"n\":1}"}"#;
        let expected = r#"{"arguments":"{\"user\":\"bob\",\"password\":\"[REDACTED]\",\"n\":1}"}"#;
        assert_eq!(redact(input), expected);
    }

    #[test]
    fn query_and_form_parameters() {
        assert_eq!(
            redact("GET /v1?api_key=abc123&model=x&access_token=zzz"),
            "GET /v1?api_key=[REDACTED]&model=x&access_token=[REDACTED]"
        );
        assert_eq!(
            redact("user=bob&password=hunter2"),
            "user=bob&password=[REDACTED]"
        );
        assert_eq!(redact("max_tokens=100"), "max_tokens=100");
    }

    #[test]
    fn cut_secrets_are_still_masked() {
        // A value whose closing quote was cut off.
        assert_eq!(
            redact(r#"{"password":"hunter2-and-mo"#),
            r#"{"password":"[REDACTED]""#
        );
        assert_eq!(
            redact("Authorization: Bearer eyJhbGciOiJIUzI1"),
            "Authorization: [REDACTED]"
        );
    }

    #[test]
    fn ordinary_text_is_untouched_and_redaction_is_idempotent() {
        let text = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Ünïcödé text: tokens, secrets and passwords are words."}],"max_tokens":64}"#;
        assert_eq!(redact(text), text);
        let secret =
            r#"Authorization: Bearer abcdefghijk {"api_key":"x"} sk-abcdefghijklmnopqrstuvwx"#;
        let once = redact(secret);
        assert_eq!(redact(&once), once);
    }

    #[test]
    fn cut_in_place_respects_char_boundaries() {
        let mut body = Some("ééééé".to_owned()); // 10 bytes
        assert_eq!(cut_in_place(&mut body, 5), Some(10));
        assert_eq!(body.as_deref(), Some("éé"));
        let mut short = Some("abc".to_owned());
        assert_eq!(cut_in_place(&mut short, 5), None);
        assert_eq!(cut_in_place(&mut None, 5), None);
    }

    #[test]
    fn finish_body_caps_after_redacting_with_a_marker() {
        assert_eq!(finish_body("short", 5, 16), "short");
        // The key straddles the cap: it is masked before the cut, so no fragment survives.
        let body = format!("{}sk-ant-api03-{}", "a ".repeat(10), "Z".repeat(40));
        let out = finish_body(&body, body.len(), 24);
        assert!(!out.contains("ZZZ"), "{out}");
        assert!(out.starts_with("a a a a a a a a a a [RED"), "{out}");
        assert!(out.ends_with(&format!("…[truncated: {} bytes total]", body.len())));
        // Cut on the request path: the marker names the original size even if the rest fits.
        assert_eq!(
            finish_body("abc", 5000, 16),
            "abc…[truncated: 5000 bytes total]"
        );
    }
}
