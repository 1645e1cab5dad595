//! Virtual API keys: the model an operator creates and a client presents.
//!
//! A secret looks like `sk-sluice-<43 url-safe base64 chars>` (256 random bits). Only its SHA-256 is
//! stored: a fast hash is enough for secrets with that much entropy (no dictionary to attack), and it
//! lets a lookup go straight to the key by hash. The presented secret's hash is then compared with the
//! stored one in constant time. The first 14 characters (`sk-sluice-AbCd`) are kept in the clear as a
//! `prefix`, so operators can tell keys apart in lists and logs.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Every generated secret starts with this.
pub const SECRET_PREFIX: &str = "sk-sluice-";

/// Characters of the secret kept in the clear (`prefix`).
const SHOWN_PREFIX_CHARS: usize = SECRET_PREFIX.len() + 4;

/// SHA-256 of a secret.
pub type SecretHash = [u8; 32];

/// SHA-256 of a presented secret.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time comparison of two hashes.
pub fn hashes_match(a: &SecretHash, b: &SecretHash) -> bool {
    bool::from(a.ct_eq(b))
}

/// A new random secret and its stored form.
pub struct NewSecret {
    /// The secret, shown to the operator once.
    pub secret: String,
    /// Its SHA-256.
    pub hash: SecretHash,
    /// Its first characters, kept in the clear.
    pub prefix: String,
}

/// Generates a secret from the OS random source.
pub fn generate_secret() -> Result<NewSecret, getrandom::Error> {
    use base64::Engine as _;
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)?;
    let secret = format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let prefix = secret.chars().take(SHOWN_PREFIX_CHARS).collect();
    Ok(NewSecret {
        hash: hash_secret(&secret),
        prefix,
        secret,
    })
}

/// A budget period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Calendar day, UTC.
    Day,
    /// Calendar month, UTC.
    Month,
    /// Never resets.
    Total,
}

/// Spend cap of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most the key may spend per period, in USD.
    pub usd: Decimal,
    /// The period.
    pub period: Period,
    /// Fraction of the budget (0–1) past which a warning is logged and counted once per period.
    #[serde(default = "default_soft_threshold")]
    pub soft_threshold: f64,
}

fn default_soft_threshold() -> f64 {
    0.8
}

/// Rate limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute (GCRA: a burst of `rpm`, then one every `60/rpm` s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens per minute: prompt estimate plus `max_tokens` reserved before the call, reconciled with
    /// the real usage after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests in flight at once; a stream holds its slot until its last byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

impl Limits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrent.is_none()
    }
}

/// A virtual key as stored (never the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VirtualKey {
    /// Stable id, e.g. `key_0193...`; what logs, metrics and the admin API use.
    pub id: String,
    /// Operator's name for it.
    pub name: String,
    /// The secret's first characters.
    pub prefix: String,
    /// SHA-256 of the secret, hex; never returned by the API.
    #[serde(skip_serializing, default)]
    pub hash: String,
    /// Public model names it may call; empty means all.
    #[serde(default)]
    pub models: Vec<String>,
    /// Its rate limits.
    #[serde(default)]
    pub limits: Limits,
    /// Its budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Unix ms after which it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Unix ms it was revoked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// Free-form operator data.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Cache switches for this key's calls (`exact`, `semantic`, `ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::CachePolicy>,
    /// Unix ms it was created at.
    pub created_at: i64,
    /// `config` for keys declared in the config file (read-only through the API), else `api`.
    #[serde(default = "default_source")]
    pub source: String,
}

fn default_source() -> String {
    "api".to_owned()
}

impl VirtualKey {
    /// Whether the key may call `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }

    /// Why the key cannot be used at `now_ms`, if it cannot.
    pub fn unusable(&self, now_ms: i64) -> Option<&'static str> {
        if self.revoked_at.is_some() {
            Some("revoked")
        } else if self.expires_at.is_some_and(|t| t <= now_ms) {
            Some("expired")
        } else {
            None
        }
    }
}
