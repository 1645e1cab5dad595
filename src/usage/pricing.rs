//! Exact cost of an LLM call: a price table (built in, with config overrides) and decimal arithmetic.
//!
//! Prices are USD per million tokens, held as [`Decimal`] so that a cost is exact to the last digit:
//! one token of a $0.15/M model costs `0.00000015`, not a float near it. The built-in table is
//! `prices.toml`, compiled into the binary; it carries a version string that cost records can cite.

use std::collections::HashMap;
use std::sync::LazyLock;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::protocol::openai;

/// The built-in price table, as shipped in the binary.
const BUILTIN_TOML: &str = include_str!("prices.toml");

/// Tokens per unit of the price (prices are per million tokens).
const TOKENS_PER_UNIT: u64 = 1_000_000;

/// What a model costs, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Price of an uncached input token.
    pub input: Decimal,
    /// Price of an output token (reasoning tokens included).
    pub output: Decimal,
    /// Price of an input token read from the prompt cache; `None` bills it as `input`.
    pub cached_input: Option<Decimal>,
    /// Price of an input token written to the prompt cache; `None` bills it as `input`.
    pub cache_write: Option<Decimal>,
}

/// Token counts of one call, in the terms [`cost`] bills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// All input tokens, cache reads and cache writes included (OpenAI's `prompt_tokens`).
    pub input: u64,
    /// Input tokens read from the prompt cache (part of `input`).
    pub cached_input: u64,
    /// Input tokens written to the prompt cache (part of `input`).
    pub cache_write: u64,
    /// Output tokens, reasoning tokens included.
    pub output: u64,
}

impl TokenUsage {
    /// Input tokens billed at the plain input price: `input` less cache reads and writes (never below 0).
    pub fn uncached_input(&self) -> u64 {
        self.input
            .saturating_sub(self.cached_input)
            .saturating_sub(self.cache_write)
    }
}

impl From<&openai::Usage> for TokenUsage {
    /// OpenAI usage carries no cache-write count: cache writes (Anthropic's `cache_creation_input_tokens`,
    /// folded into `prompt_tokens` by the translation) are billed at the input price.
    fn from(usage: &openai::Usage) -> Self {
        Self {
            input: usage.prompt_tokens,
            cached_input: usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
            cache_write: 0,
            output: usage.completion_tokens,
        }
    }
}

impl From<&openai::EmbeddingsUsage> for TokenUsage {
    fn from(usage: &openai::EmbeddingsUsage) -> Self {
        Self {
            input: usage.prompt_tokens,
            ..Self::default()
        }
    }
}

/// The exact cost in USD of `usage` at `price`.
///
/// Uncached input at `input`, cache reads at `cached_input` (or `input`), cache writes at
/// `cache_write` (or `input`) and output at `output`, summed and divided by 1,000,000 in decimal
/// arithmetic: no rounding for any realistic price. The result is normalised (`0.00000015`, not
/// `0.000000150`). It saturates at [`Decimal::MAX`] instead of overflowing, which only absurd
/// configured prices (billions of USD per million tokens) with enormous counts could reach.
pub fn cost(price: &Price, usage: &TokenUsage) -> Decimal {
    let terms = [
        (usage.uncached_input(), price.input),
        (
            usage.cached_input,
            price.cached_input.unwrap_or(price.input),
        ),
        (usage.cache_write, price.cache_write.unwrap_or(price.input)),
        (usage.output, price.output),
    ];
    let micro_usd = terms
        .iter()
        .fold(Decimal::ZERO, |sum, &(tokens, per_million)| {
            sum.saturating_add(Decimal::from(tokens).saturating_mul(per_million))
        });
    micro_usd
        .checked_div(Decimal::from(TOKENS_PER_UNIT))
        .unwrap_or(Decimal::MAX)
        .normalize()
}

/// A price as written in configuration: decimals from TOML/JSON strings (`"0.15"`, exact) or numbers.
///
/// ```toml
/// [pricing."my-finetune"]
/// input = "0.30"
/// output = "1.20"
/// cached_input = "0.15"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// USD per million uncached input tokens.
    pub input: Decimal,
    /// USD per million output tokens.
    pub output: Decimal,
    /// USD per million cache-read input tokens; absent bills them as `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<Decimal>,
    /// USD per million cache-write input tokens; absent bills them as `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<Decimal>,
}

impl PriceConfig {
    /// Checks the price of `model` (no negative amounts) and turns it into a [`Price`].
    pub fn validate(self, model: &str) -> Result<Price, PriceError> {
        let fields = [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cached_input", self.cached_input),
            ("cache_write", self.cache_write),
        ];
        for (field, value) in fields {
            if value.is_some_and(|v| v < Decimal::ZERO) {
                return Err(PriceError::Negative {
                    model: model.to_owned(),
                    field,
                });
            }
        }
        Ok(Price {
            input: self.input,
            output: self.output,
            cached_input: self.cached_input,
            cache_write: self.cache_write,
        })
    }
}

/// Why a price table or a configured price was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    /// The table is not valid TOML or does not have the expected shape.
    #[error("price table: {0}")]
    Toml(#[from] toml::de::Error),
    /// A price is below zero.
    #[error("price of `{model}`: `{field}` is negative")]
    Negative {
        /// The model.
        model: String,
        /// The field (`input`, `output`, `cached_input`, `cache_write`).
        field: &'static str,
    },
    /// Two entries have the same name once lower-cased.
    #[error("price table lists `{0}` twice")]
    Duplicate(String),
    /// An alias names a model that is not in the table.
    #[error("price alias `{alias}` points to unknown model `{target}`")]
    UnknownAliasTarget {
        /// The alias.
        alias: String,
        /// The missing model.
        target: String,
    },
}

/// The file format of `prices.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    version: String,
    models: HashMap<String, PriceConfig>,
    #[serde(default)]
    aliases: HashMap<String, String>,
}

/// Model prices, looked up by model name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    version: String,
    models: HashMap<String, Price>,
}

impl PriceTable {
    /// The built-in table (`prices.toml`), parsed once.
    ///
    /// A test parses the file, so it always loads; were it broken, this would be an empty table
    /// (every model unpriced) rather than a panic.
    pub fn builtin() -> &'static PriceTable {
        static BUILTIN: LazyLock<PriceTable> =
            LazyLock::new(|| PriceTable::from_toml(BUILTIN_TOML).unwrap_or_default());
        &BUILTIN
    }

    /// The built-in table with `overrides` added; an override replaces a built-in entry of the same
    /// name (case-insensitive). The version becomes `<builtin version>+overrides` when there is any.
    ///
    /// An override is an exact entry: overriding `gpt-4o` also reprices snapshots that fall back to it
    /// by prefix (`gpt-4o-2024-08-06`), but not snapshots listed separately (`gpt-4o-2024-05-13`).
    pub fn with_overrides(overrides: impl IntoIterator<Item = (String, Price)>) -> PriceTable {
        let mut table = Self::builtin().clone();
        let mut overridden = false;
        for (model, price) in overrides {
            table
                .models
                .insert(model.trim().to_ascii_lowercase(), price);
            overridden = true;
        }
        if overridden {
            table.version.push_str("+overrides");
        }
        table
    }

    /// Parses a table in the format of `prices.toml`.
    pub fn from_toml(text: &str) -> Result<PriceTable, PriceError> {
        let raw: RawTable = toml::from_str(text)?;
        let mut models = HashMap::with_capacity(raw.models.len() + raw.aliases.len());
        for (name, config) in raw.models {
            let price = config.validate(&name)?;
            crate::usage::model_names::insert_new(&mut models, &name, price)
                .map_err(PriceError::Duplicate)?;
        }
        for (alias, target) in raw.aliases {
            let price = *models.get(&target.to_ascii_lowercase()).ok_or_else(|| {
                PriceError::UnknownAliasTarget {
                    alias: alias.clone(),
                    target: target.clone(),
                }
            })?;
            crate::usage::model_names::insert_new(&mut models, &alias, price)
                .map_err(PriceError::Duplicate)?;
        }
        Ok(PriceTable {
            version: raw.version,
            models,
        })
    }

    /// The price of `model`, if known.
    ///
    /// Tried in order, case-insensitively: the exact name; the name without provider prefixes
    /// (`openai/gpt-4o`, `groq/meta-llama/…`, `models/gemini-2.5-pro`, Bedrock's `us.anthropic.claude-…`);
    /// then the longest table entry that the name extends at a `-`, `@` or `:` (dated snapshots such as
    /// `gpt-4o-2024-08-06`, `claude-sonnet-4-5-20250929`, `claude-3-5-sonnet@20240620`, `…-latest`).
    /// A `-` followed by a short version number (`-5`, `-10`, `-4.1`) is a different model, not a
    /// snapshot, so `claude-opus-4-9` does not fall back to `claude-opus-4`.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        super::model_names::lookup(&self.models, model)
    }

    /// The cost of `usage` on `model`, or `None` when the model has no price.
    pub fn cost(&self, model: &str, usage: &TokenUsage) -> Option<Decimal> {
        self.lookup(model).map(|price| cost(price, usage))
    }

    /// The version of the table (the `version` of `prices.toml`), for cost records.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Number of priced names, aliases included.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when no model is priced.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use crate::protocol::openai::{PromptTokensDetails, Usage};

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn price(input: &str, output: &str) -> Price {
        Price {
            input: dec(input),
            output: dec(output),
            cached_input: None,
            cache_write: None,
        }
    }

    fn usage(input: u64, cached_input: u64, cache_write: u64, output: u64) -> TokenUsage {
        TokenUsage {
            input,
            cached_input,
            cache_write,
            output,
        }
    }

    fn builtin(model: &str) -> Price {
        *PriceTable::builtin()
            .lookup(model)
            .unwrap_or_else(|| panic!("{model} is not priced"))
    }

    #[test]
    fn builtin_table_parses_and_is_not_empty() {
        let parsed = PriceTable::from_toml(BUILTIN_TOML).expect("prices.toml must parse");
        assert!(parsed.len() > 100, "{} entries", parsed.len());
        assert_eq!(PriceTable::builtin(), &parsed);
        assert_eq!(PriceTable::builtin().version(), "2026-11-01");
    }

    #[test]
    fn every_builtin_entry_is_sane() {
        for (name, p) in &PriceTable::builtin().models {
            assert_eq!(name, &name.to_ascii_lowercase());
            assert!(p.input > Decimal::ZERO, "{name}: input must be positive");
            assert!(p.output >= Decimal::ZERO, "{name}");
            if let Some(cached) = p.cached_input {
                assert!(
                    cached < p.input,
                    "{name}: a cache read must be cheaper than input"
                );
            }
            if let Some(write) = p.cache_write {
                assert!(
                    write > p.input,
                    "{name}: a cache write costs more than input"
                );
            }
        }
    }

    #[test]
    fn every_vendor_is_covered() {
        for model in [
            "gpt-5",
            "gpt-5-mini",
            "gpt-4.1-nano",
            "gpt-4o",
            "gpt-4o-mini",
            "o1",
            "o3-mini",
            "o4-mini",
            "text-embedding-3-small",
            "text-embedding-3-large",
            "text-embedding-ada-002",
            "claude-opus-4-5",
            "claude-sonnet-4-5",
            "claude-haiku-4-5",
            "claude-3-5-haiku",
            "claude-3-haiku",
            "gemini-2.5-pro",
            "gemini-2.5-flash",
            "gemini-2.0-flash",
            "gemini-1.5-pro",
            "gemini-1.5-flash",
            "mistral-large-latest",
            "mistral-medium-latest",
            "mistral-small-latest",
            "codestral-latest",
            "mistral-embed",
            "deepseek-chat",
            "deepseek-reasoner",
            "llama-3.3-70b-versatile",
            "llama-3.1-8b-instant",
            "mixtral-8x7b-32768",
            "gemma2-9b-it",
        ] {
            builtin(model);
        }
    }

    #[test]
    fn plain_price() {
        // gpt-4o: $2.50 in, $10 out. 1000 in + 500 out = 0.0025 + 0.005.
        let p = builtin("gpt-4o");
        assert_eq!(cost(&p, &usage(1000, 0, 0, 500)), dec("0.0075"));
    }

    #[test]
    fn cached_input_is_billed_at_the_cache_price() {
        // gpt-4o: 1000 input of which 400 cached: 600 × 2.50 + 400 × 1.25 = 2000 µ$.
        let p = builtin("gpt-4o");
        assert_eq!(cost(&p, &usage(1000, 400, 0, 0)), dec("0.002"));
    }

    #[test]
    fn cache_write_is_billed_at_the_write_price() {
        // claude-sonnet-4-5: 3 in, 0.30 read, 3.75 write, 15 out.
        let p = builtin("claude-sonnet-4-5");
        let u = usage(10_000, 2_000, 5_000, 1_000);
        // 3000 × 3 + 2000 × 0.30 + 5000 × 3.75 + 1000 × 15 = 9000 + 600 + 18750 + 15000 µ$.
        assert_eq!(cost(&p, &u), dec("0.04335"));
    }

    #[test]
    fn missing_cache_prices_fall_back_to_input() {
        let p = price("2", "8");
        assert_eq!(
            cost(&p, &usage(1_000_000, 300_000, 200_000, 0)),
            cost(&p, &usage(1_000_000, 0, 0, 0))
        );
        assert_eq!(cost(&p, &usage(1_000_000, 300_000, 200_000, 0)), dec("2"));
    }

    #[test]
    fn embeddings_have_no_output_price() {
        let p = builtin("text-embedding-3-small");
        assert_eq!(p.output, Decimal::ZERO);
        let u = TokenUsage::from(&openai::EmbeddingsUsage {
            prompt_tokens: 50_000,
            total_tokens: 50_000,
        });
        assert_eq!(cost(&p, &u), dec("0.001"));
    }

    #[test]
    fn one_token_is_exact() {
        let p = builtin("gpt-4o-mini");
        let c = cost(&p, &usage(1, 0, 0, 0));
        assert_eq!(c, dec("0.00000015"));
        assert_eq!(c.to_string(), "0.00000015");
        // Repeated addition of the exact cost stays exact (a float would drift).
        let sum: Decimal = std::iter::repeat_n(c, 1_000_000).sum();
        assert_eq!(sum, dec("0.15"));
    }

    #[test]
    fn large_counts_do_not_overflow() {
        let max = usage(u64::MAX, u64::MAX / 2, u64::MAX / 4, u64::MAX);
        let p = builtin("o1-pro"); // the most expensive entry: $150 / $600.
        let c = cost(&p, &max);
        // (MAX - MAX/2 - MAX/4) × 150 + MAX/2 × 150 + MAX/4 × 150 + MAX × 600 = MAX × 750.
        let expected = Decimal::from(u64::MAX) * dec("750") / dec("1000000");
        assert_eq!(c, expected);
        // A price near Decimal's limit saturates instead of panicking.
        let absurd = Price {
            input: Decimal::MAX,
            output: Decimal::MAX,
            cached_input: None,
            cache_write: None,
        };
        assert!(cost(&absurd, &max) > Decimal::ZERO);
    }

    #[test]
    fn inconsistent_counts_do_not_underflow() {
        // More cached than total input (a confused upstream): uncached is 0, the cache reads are billed.
        let p = builtin("gpt-4o");
        assert_eq!(usage(10, 20, 0, 0).uncached_input(), 0);
        assert_eq!(cost(&p, &usage(10, 20, 0, 0)), dec("0.000025"));
    }

    #[test]
    fn openai_usage_converts_with_cached_tokens() {
        let mut u = Usage::new(1200, 300);
        assert_eq!(TokenUsage::from(&u), usage(1200, 0, 0, 300));
        u.prompt_tokens_details = Some(PromptTokensDetails {
            cached_tokens: 1024,
        });
        assert_eq!(TokenUsage::from(&u), usage(1200, 1024, 0, 300));
    }

    #[test]
    fn dated_snapshots_find_their_base_entry() {
        for (snapshot, base) in [
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
            ("gpt-5-2025-08-07", "gpt-5"),
            ("gpt-5-chat-latest", "gpt-5"),
            ("o3-mini-2025-01-31", "o3-mini"),
            ("o1-2024-12-17", "o1"),
            ("gpt-4-0613", "gpt-4"),
            ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
            ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-opus-4-1-20250805", "claude-opus-4-1"),
            ("claude-opus-4-20250514", "claude-opus-4"),
            ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
            ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
            ("claude-3-haiku-20240307", "claude-3-haiku"),
            ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
            ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
            ("gemini-1.5-flash-002", "gemini-1.5-flash"),
            ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
            ("mistral-large-2411", "mistral-large"),
            ("codestral-2501", "codestral"),
        ] {
            assert_eq!(builtin(snapshot), builtin(base), "{snapshot} -> {base}");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        assert_eq!(builtin("gpt-4o-mini-2024-07-18"), builtin("gpt-4o-mini"));
        assert_ne!(builtin("gpt-4o-mini"), builtin("gpt-4o"));
        assert_eq!(
            builtin("gemini-2.5-flash-lite-preview-06-17"),
            builtin("gemini-2.5-flash-lite")
        );
        assert_ne!(
            builtin("gemini-2.5-flash-lite"),
            builtin("gemini-2.5-flash")
        );
    }

    #[test]
    fn snapshots_with_their_own_price_are_not_their_base() {
        assert_eq!(builtin("gpt-4o-2024-05-13"), price("5.00", "15.00"));
        assert_eq!(builtin("gpt-4-1106-preview"), builtin("gpt-4-turbo"));
        assert_eq!(builtin("claude-opus-4-0"), builtin("claude-opus-4"));
        assert_ne!(
            builtin("claude-opus-4-5-20251101"),
            builtin("claude-opus-4")
        );
    }

    #[test]
    fn a_new_version_number_is_not_a_snapshot() {
        let table = PriceTable::builtin();
        for unknown in [
            "claude-opus-4-9",
            "claude-opus-4-9-20270101",
            "claude-sonnet-4-10",
            "gpt-5.9",
            "gpt-5.9-mini",
            "gpt-4.7",
            "gemini-9.0-flash",
        ] {
            assert_eq!(table.lookup(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn provider_prefixes_are_stripped() {
        assert_eq!(builtin("openai/gpt-4o"), builtin("gpt-4o"));
        assert_eq!(
            builtin("anthropic/claude-sonnet-4-5-20250929"),
            builtin("claude-sonnet-4-5")
        );
        assert_eq!(builtin("models/gemini-2.5-pro"), builtin("gemini-2.5-pro"));
        assert_eq!(
            builtin("groq/llama-3.3-70b-versatile"),
            builtin("llama-3.3-70b-versatile")
        );
        assert_eq!(
            builtin("us.anthropic.claude-3-5-sonnet-20240620-v1:0"),
            builtin("claude-3-5-sonnet")
        );
        // A name whose vendor part is itself the model id is found whole first.
        assert_eq!(builtin("groq/openai/gpt-oss-120b"), price("0.15", "0.75"));
        assert_eq!(
            builtin("groq/meta-llama/llama-4-scout-17b-16e-instruct"),
            price("0.11", "0.34")
        );
    }

    #[test]
    fn lookup_ignores_case_and_whitespace() {
        assert_eq!(builtin(" GPT-4o-Mini "), builtin("gpt-4o-mini"));
    }

    #[test]
    fn unknown_models_are_unpriced() {
        let table = PriceTable::builtin();
        for unknown in [
            "",
            "/",
            "llama-9",
            "my-finetune",
            "ft:gpt-4o-mini-2024-07-18:org::abc",
            "-gpt-4o",
            "modèle-é-2024",
            "é-",
            "gpt-4oé-x",
        ] {
            assert_eq!(table.lookup(unknown), None, "{unknown:?}");
            assert_eq!(table.cost(unknown, &usage(1, 0, 0, 1)), None);
        }
    }

    #[test]
    fn overrides_win() {
        let cheap = price("0.01", "0.02");
        let table = PriceTable::with_overrides([
            ("GPT-4o".to_owned(), cheap),
            ("my-finetune".to_owned(), price("1", "2")),
        ]);
        assert_eq!(table.lookup("gpt-4o"), Some(&cheap));
        // Snapshots that fall back to the entry by prefix follow it.
        assert_eq!(table.lookup("gpt-4o-2024-08-06"), Some(&cheap));
        assert_eq!(table.lookup("openai/my-finetune"), Some(&price("1", "2")));
        assert_eq!(table.version(), "2026-11-01+overrides");
        // The built-in table is unchanged.
        assert_ne!(PriceTable::builtin().lookup("gpt-4o"), Some(&cheap));
        assert_eq!(PriceTable::with_overrides([]).version(), "2026-11-01");
    }

    #[test]
    fn price_config_parses_strings_and_numbers() {
        let from_toml: HashMap<String, PriceConfig> = toml::from_str(
            r#"
            a = { input = "0.15", output = "0.60", cached_input = "0.075" }
            b = { input = 0.15, output = 2, cache_write = 1e-1 }
            "#,
        )
        .unwrap();
        assert_eq!(
            from_toml["a"].clone().validate("a").unwrap(),
            Price {
                input: dec("0.15"),
                output: dec("0.60"),
                cached_input: Some(dec("0.075")),
                cache_write: None,
            }
        );
        let b = from_toml["b"].clone().validate("b").unwrap();
        assert_eq!(
            (b.input, b.output, b.cache_write),
            (dec("0.15"), dec("2"), Some(dec("0.1")))
        );
        // A float that a binary double cannot hold exactly still becomes the decimal written.
        assert_eq!(b.input.to_string(), "0.15");

        let from_json: PriceConfig =
            serde_json::from_str(r#"{"input": "3", "output": 15, "cached_input": 0.3}"#).unwrap();
        assert_eq!(from_json.cached_input, Some(dec("0.3")));
    }

    #[test]
    fn price_config_rejects_unknown_fields_and_bad_values() {
        let unknown =
            toml::from_str::<PriceConfig>("input = \"1\"\noutput = \"2\"\ncache_read = \"1\"");
        assert!(unknown.unwrap_err().to_string().contains("cache_read"));
        assert!(toml::from_str::<PriceConfig>("input = \"cheap\"\noutput = \"2\"").is_err());
        assert!(toml::from_str::<PriceConfig>("input = \"1\"").is_err());

        let negative: PriceConfig = toml::from_str("input = \"1\"\noutput = \"-2\"").unwrap();
        let err = negative.validate("m").unwrap_err();
        assert!(
            matches!(
                err,
                PriceError::Negative {
                    field: "output",
                    ..
                }
            ),
            "{err}"
        );
        let zero: PriceConfig = toml::from_str("input = \"0\"\noutput = \"-0\"").unwrap();
        assert!(zero.validate("m").is_ok());
    }

    #[test]
    fn price_config_round_trips() {
        let config = PriceConfig {
            input: dec("0.15"),
            output: dec("0.60"),
            cached_input: Some(dec("0.075")),
            cache_write: None,
        };
        let text = toml::to_string(&config).unwrap();
        assert_eq!(
            text,
            "input = \"0.15\"\noutput = \"0.60\"\ncached_input = \"0.075\"\n"
        );
        assert_eq!(toml::from_str::<PriceConfig>(&text).unwrap(), config);
    }

    proptest::proptest! {
        #[test]
        fn lookup_never_panics(name in "[a-zA-Z0-9./:@_ -]{0,24}|\\PC{0,24}") {
            let _ = PriceTable::builtin().lookup(&name);
        }

        #[test]
        fn any_dated_snapshot_finds_its_base(
            base in proptest::sample::select(vec!["gpt-4o", "gpt-4.1-mini", "o3", "gemini-2.5-pro", "claude-opus-4-5"]),
            date in "20[0-9]{2}-?[01][0-9]-?[0-3][0-9]",
            sep in proptest::sample::select(vec!["-", "@"]),
        ) {
            let snapshot = format!("{base}{sep}{date}");
            proptest::prop_assert_eq!(PriceTable::builtin().lookup(&snapshot), PriceTable::builtin().lookup(base));
        }

        #[test]
        fn cost_is_bounded_by_the_dearest_rate(
            input in 0u64..=u64::from(u32::MAX),
            cached in 0u64..=u64::from(u32::MAX),
            write in 0u64..=u64::from(u32::MAX),
            output in 0u64..=u64::from(u32::MAX),
        ) {
            let p = builtin("claude-sonnet-4-5");
            let u = usage(input, cached, write, output);
            let c = cost(&p, &u);
            let all = Decimal::from(u.uncached_input() + cached + write);
            let dearest = Decimal::from(output) * p.output + all * p.cache_write.unwrap();
            let cheapest = Decimal::from(output) * p.output + all * p.cached_input.unwrap();
            proptest::prop_assert!(c * dec("1000000") <= dearest);
            proptest::prop_assert!(c * dec("1000000") >= cheapest);
        }
    }

    #[test]
    fn table_errors_are_reported() {
        let dup = "version = \"x\"\n[models]\n\"a\" = { input = \"1\", output = \"1\" }\n\"A\" = { input = \"1\", output = \"1\" }";
        assert!(matches!(
            PriceTable::from_toml(dup),
            Err(PriceError::Duplicate(_))
        ));
        let alias = "version = \"x\"\n[models]\n\"a\" = { input = \"1\", output = \"1\" }\n[aliases]\n\"b\" = \"c\"";
        assert!(matches!(
            PriceTable::from_toml(alias),
            Err(PriceError::UnknownAliasTarget { .. })
        ));
        let extra = "version = \"x\"\nvendor = \"y\"\n[models]";
        assert!(matches!(
            PriceTable::from_toml(extra),
            Err(PriceError::Toml(_))
        ));
        let negative = "version = \"x\"\n[models]\n\"a\" = { input = \"-1\", output = \"1\" }";
        assert!(matches!(
            PriceTable::from_toml(negative),
            Err(PriceError::Negative { field: "input", .. })
        ));
    }
}
