//! Lexical guards against semantic-cache false hits, and [`decide`], the one matching rule.
//!
//! A sentence embedder places "What is the capital of Austria?" and "… of Australia?" next to each other: a
//! cosine threshold alone cannot tell a paraphrase from a near-miss that needs another answer. Before a stored
//! reply is served, the stored prompt and the new one must also agree on a cheap lexical [`Signature`]:
//!
//! | check | disagreement ([`Mismatch`]) | example of a near-miss it stops |
//! | --- | --- | --- |
//! | prompt language, requested output language | `language` | "… in French" / "… in German" |
//! | negation markers (en, fr, de, es) | `negation` | "with eggs" / "without eggs" |
//! | numbers (digits, decimals, number words), in order | `numbers`, `direction` | "in 2014" / "in 2018"; "7 minus 3" / "3 minus 7" |
//! | units and currencies, normalised; a unit asked for on one side only | `units` | "in Celsius" / "in Kelvin" |
//! | source and target of a conversion or a move | `direction` | "100 km to miles" / "100 miles to km" |
//! | antonym axes (buy/sell, before/after, min/max, first/last, …) | `polarity` | "before a workout" / "after a workout" |
//! | "all/every/whole" scope | `scope` | "delete a row" / "delete all rows" |
//! | named entities (capitalised, all-caps, camel-case words) | `entities` | "Austria" / "Australia" |
//! | a content word swapped in an otherwise identical prompt; different things asked "in/to X" | `substitution` | "gold" / "silver" |
//!
//! The signature is project-specific (it encodes what makes two *prompts* need different answers), so it is
//! written here by hand: no crate does this. It is deliberately conservative: when in doubt it refuses the
//! hit, which costs a cache miss (an upstream call) rather than a wrong answer. The lexicons are small and
//! English-centric with the basics of French, German and Spanish; they were tuned on
//! `tests/data/semantic_pairs.jsonl` and are measured in `docs/CACHE_EVALUATION.md`.
//!
//! Cost: one pass over the characters and a few small vectors; a prompt's signature takes microseconds.
//! It is a pure function of the text, so a stored entry can recompute it from the stored prompt.

use std::cmp::Ordering;

/// What the cache does for one stored entry and one query; see [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Serve the stored reply.
    Hit,
    /// Not similar enough (below the threshold, or the similarity is not a number).
    Miss,
    /// Similar enough, but the guards found a difference that needs another answer.
    Blocked(Mismatch),
}

/// Default similarity threshold for all-MiniLM-L6-v2 (`embed::minilm`) with the guards on.
///
/// Measured (docs/CACHE_EVALUATION.md, `bench/cache-eval.sh`): on the 369 labelled pairs, false-hit rate 0/194
/// and recall 139/175 (0.794); on the 60 held-out pairs 0/30 and 24/30 (0.800). Lower thresholds keep a 0% false-hit
/// rate on the labelled set (0.48 gives recall 0.977) only because the guards catch every near-miss there;
/// 0.85 is the lowest threshold at which every unlabelled cross pair of the set that the guards let through
/// is a true duplicate (at 0.80, "How tall is the Eiffel Tower?" / "When was the Eiffel Tower completed?" and
/// "Gold's chemical symbol is what?" / "… for silver?" hit), so the embedder still keeps different questions
/// apart where the lexical guards are blind.
pub const DEFAULT_THRESHOLD_MINILM: f32 = 0.85;

/// Default similarity threshold for the hashing stand-in (`embed::hashing`, 256 dimensions) with the guards on.
///
/// Measured (docs/CACHE_EVALUATION.md): on the labelled pairs false-hit rate 0/194 and recall 101/175 (0.577).
/// The stand-in measures word overlap, not meaning: this threshold is chosen so that CI exercises the guards on
/// most near-misses, not for serving (unrelated prompts that share words pass it).
pub const DEFAULT_THRESHOLD_HASHING: f32 = 0.50;

/// The matching rule of the semantic tier, used both by the request path and by the evaluation, so that what
/// is measured is what is served.
///
/// `similarity` is the cosine of the two prompts' embeddings, `threshold` the lowest cosine that may hit
/// (`similarity >= threshold`; NaN never hits). With `guards`, a similar pair must also [`agree`] on their
/// lexical signatures; `stored` is the cached prompt's signature and `query` the new prompt's.
pub fn decide(
    similarity: f32,
    threshold: f32,
    stored: &Signature,
    query: &Signature,
    guards: bool,
) -> Decision {
    if similarity
        .partial_cmp(&threshold)
        .is_none_or(Ordering::is_lt)
    {
        return Decision::Miss;
    }
    if guards && let Err(mismatch) = agree(stored, query) {
        return Decision::Blocked(mismatch);
    }
    Decision::Hit
}

/// Why two prompts need different answers although they look alike (the first check that failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mismatch {
    /// The prompts are in different languages, or ask for an answer in different languages.
    Language,
    /// One is negated ("not", "without", "sans", "kein", "sin", …) and the other is not.
    Negation,
    /// Different numbers.
    Numbers,
    /// Different units or currencies ("in Celsius" / "in Kelvin").
    Units,
    /// Same terms, opposite roles: "A to B" / "B to A", or the same numbers in another order.
    Direction,
    /// Opposite ends of an antonym axis (buy/sell, before/after, largest/smallest, min/max, first/last, …).
    Polarity,
    /// One asks about all/every/the whole, the other does not.
    Scope,
    /// A named entity of one prompt is absent from the other.
    Entities,
    /// The prompts are the same but for one content word ("gold" / "silver").
    Substitution,
}

impl Mismatch {
    /// Every variant, in check order.
    pub const ALL: [Self; 9] = [
        Self::Language,
        Self::Negation,
        Self::Numbers,
        Self::Units,
        Self::Direction,
        Self::Polarity,
        Self::Scope,
        Self::Entities,
        Self::Substitution,
    ];

    /// A short, stable label for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Language => "language",
            Self::Negation => "negation",
            Self::Numbers => "numbers",
            Self::Units => "units",
            Self::Direction => "direction",
            Self::Polarity => "polarity",
            Self::Scope => "scope",
            Self::Entities => "entities",
            Self::Substitution => "substitution",
        }
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The language a prompt is written in, when its function words make it clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// French.
    Fr,
    /// German.
    De,
    /// Spanish.
    Es,
}

/// Whether a term is the source or the target of a conversion, translation or move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Source,
    Target,
}

/// A term (canonical word, unit or language code) and its role.
type Term = (Box<str>, Role);

/// The lexical signature of one prompt: what must agree for a cached reply to be served ([`agree`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    /// The prompt's own language, when detected.
    lang: Option<Lang>,
    /// Numbers in order of appearance, canonical (thousands separators removed; "fifteen" is "15"; 1 is left
    /// out because "a"/"one" are interchangeable).
    numbers: Vec<Box<str>>,
    /// Any negation marker.
    negated: bool,
    /// Output languages named ("in French", "auf Deutsch"), as codes; sorted, unique.
    requested: Vec<&'static str>,
    /// Units and currencies, canonical; sorted, unique.
    units: Vec<&'static str>,
    /// Terms with a source or target role; sorted, unique.
    roles: Vec<Term>,
    /// Terms asked for by "in/to/into X" (the unit, language or format of the answer); sorted, unique.
    asked: Vec<Box<str>>,
    /// (axis, pole) of antonym words; sorted, unique.
    polarity: Vec<(&'static str, i8)>,
    /// Asks about all/every/the whole.
    all_scope: bool,
    /// Named entities, canonical; sorted, unique.
    entities: Vec<Box<str>>,
    /// Every word, canonical; sorted, unique (entities of the other prompt are looked up here).
    words: Vec<Box<str>>,
    /// Every word and number in order, canonical, with whether it is a content word (not a function word).
    seq: Vec<(Box<str>, bool)>,
}

impl Signature {
    /// The signature of `text`. Never panics; any input (empty, binary-looking, huge) gives a signature.
    pub fn of(text: &str) -> Self {
        let tokens = tokenize(text);
        let lang = detect_lang(text, &tokens);
        let mut sig = Self {
            lang,
            ..Self::default()
        };
        sig.numbers = numbers(&tokens, lang);
        let words: Vec<Word<'_>> = tokens.iter().enumerate().filter_map(Word::of).collect();
        // "United States" is "US": a few two-word names collapse to one canonical word (and are not entities
        // word by word).
        let mut joined_at: Vec<usize> = Vec::new();
        for pair in words.windows(2) {
            if let [a, b] = pair
                && let Some(joined) = two_word_alias(a.lower, b.lower)
            {
                sig.words.push(joined.into());
                if is_entity(a, lang) || is_entity(b, lang) {
                    sig.entities.push(joined.into());
                }
                joined_at.extend([a.index, b.index]);
            }
        }
        for t in &tokens {
            if let Kind::Sym(c) = t.kind
                && let Some(unit) = symbol_unit(c)
            {
                sig.units.push(unit);
            }
            match t.kind {
                Kind::Num => sig.seq.push((t.text.as_str().into(), true)),
                Kind::Word => sig.seq.push(match number_word(&t.text, lang) {
                    Some(n) => (n.to_string().into(), true),
                    None => (
                        canonical(&t.text).into(),
                        is_content(&t.text, t.after_number),
                    ),
                }),
                Kind::Sym(_) => {}
            }
        }
        for w in &words {
            let lower = w.lower.as_str();
            if is_negation(lower, lang) || (lower == "free" && w.tok.after_hyphen) {
                sig.negated = true;
            }
            if let Some(code) = language_name(lower, w.tok.shape) {
                sig.requested.push(code);
            }
            if let Some(unit) = unit_at(&tokens, w.index) {
                sig.units.push(unit);
            }
            if let Some(p) = polarity(lower) {
                sig.polarity.push(p);
            }
            if is_scope_all(lower) {
                sig.all_scope = true;
            }
            let canon = canonical(lower);
            if is_entity(w, lang) && !joined_at.contains(&w.index) {
                sig.entities.push(canon.clone().into());
            }
            sig.words.push(canon.into());
        }
        (sig.roles, sig.asked) = roles(&tokens, lang);
        sort_dedup(&mut sig.requested);
        sort_dedup(&mut sig.units);
        sort_dedup(&mut sig.polarity);
        sort_dedup(&mut sig.entities);
        sort_dedup(&mut sig.words);
        sort_dedup(&mut sig.roles);
        sort_dedup(&mut sig.asked);
        sig
    }

    /// The detected language of the prompt.
    pub fn lang(&self) -> Option<Lang> {
        self.lang
    }
}

fn sort_dedup<T: Ord>(v: &mut Vec<T>) {
    v.sort_unstable();
    v.dedup();
}

/// `Ok` when the two signatures agree on everything that changes the answer; else the first disagreement, in
/// the order of [`Mismatch::ALL`]. Symmetric in its arguments.
pub fn agree(a: &Signature, b: &Signature) -> Result<(), Mismatch> {
    if let (Some(x), Some(y)) = (a.lang, b.lang)
        && x != y
    {
        return Err(Mismatch::Language);
    }
    if a.requested != b.requested && implied_languages(a) != implied_languages(b) {
        return Err(Mismatch::Language);
    }
    if a.negated != b.negated {
        return Err(Mismatch::Negation);
    }
    if a.numbers != b.numbers {
        let mut x = a.numbers.clone();
        let mut y = b.numbers.clone();
        x.sort_unstable();
        y.sort_unstable();
        return Err(if x == y {
            Mismatch::Direction
        } else {
            Mismatch::Numbers
        });
    }
    // A unit on one side only ("how long" / "how many minutes") is a rewording; a unit swapped for another is not.
    if has_extra(&a.units, &b.units) && has_extra(&b.units, &a.units) {
        return Err(Mismatch::Units);
    }
    // The same term in a role on both sides, with no role in common: "100 km to miles" / "100 miles to km".
    let roles_of = |s: &Signature, term: &str| {
        s.roles
            .iter()
            .filter(|(t, _)| t.as_ref() == term)
            .fold((false, false), |(src, tgt), (_, r)| {
                (src || *r == Role::Source, tgt || *r == Role::Target)
            })
    };
    if a.roles.iter().any(|(term, _)| {
        let (a_src, a_tgt) = roles_of(a, term);
        let (b_src, b_tgt) = roles_of(b, term);
        (b_src || b_tgt) && !(a_src && b_src) && !(a_tgt && b_tgt)
    }) {
        return Err(Mismatch::Direction);
    }
    // A unit asked for on one side only: "How far is the Moon in miles?" / "How far is the Moon?".
    let unasked = |x: &Signature, y: &Signature| {
        x.asked
            .iter()
            .any(|t| x.units.iter().any(|u| **u == **t) && !y.units.iter().any(|u| **u == **t))
    };
    if unasked(a, b) || unasked(b, a) {
        return Err(Mismatch::Units);
    }
    // Each side asks for something the other does not mention: "convert a date string to a *datetime*" /
    // "convert a string to a *list*".
    let foreign = |x: &Signature, y: &Signature| {
        x.asked.iter().any(|t| {
            y.words.binary_search(t).is_err()
                && !y.units.iter().any(|u| **u == **t)
                && !y.requested.iter().any(|l| **l == **t)
        })
    };
    if foreign(a, b) && foreign(b, a) {
        return Err(Mismatch::Substitution);
    }
    for (axis, pole) in &a.polarity {
        let b_has_axis = b.polarity.iter().any(|(x, _)| x == axis);
        if b_has_axis && !b.polarity.contains(&(axis, *pole)) {
            return Err(Mismatch::Polarity);
        }
    }
    for (axis, pole) in &b.polarity {
        let a_has_axis = a.polarity.iter().any(|(x, _)| x == axis);
        if a_has_axis && !a.polarity.contains(&(axis, *pole)) {
            return Err(Mismatch::Polarity);
        }
    }
    if a.all_scope != b.all_scope {
        return Err(Mismatch::Scope);
    }
    let missing = |from: &Signature, other: &Signature| {
        from.entities
            .iter()
            .any(|e| other.words.binary_search(e).is_err())
    };
    if missing(a, b) || missing(b, a) {
        return Err(Mismatch::Entities);
    }
    if is_substitution(&a.seq, &b.seq) {
        return Err(Mismatch::Substitution);
    }
    Ok(())
}

/// The two prompts are the same word for word but for one short span (at most [`MAX_SWAP`] words each side)
/// in which a content word was swapped: "the chemical symbol for *gold*" / "… for *silver*". A rewording
/// changes the structure of the sentence; a near-miss keeps it and swaps the subject.
fn is_substitution(a: &[(Box<str>, bool)], b: &[(Box<str>, bool)]) -> bool {
    let prefix = a.iter().zip(b).take_while(|(x, y)| x.0 == y.0).count();
    let rest_a = a.get(prefix..).unwrap_or_default();
    let rest_b = b.get(prefix..).unwrap_or_default();
    let suffix = rest_a
        .iter()
        .rev()
        .zip(rest_b.iter().rev())
        .take_while(|(x, y)| x.0 == y.0)
        .count();
    let mid_a = rest_a.get(..rest_a.len() - suffix).unwrap_or_default();
    let mid_b = rest_b.get(..rest_b.len() - suffix).unwrap_or_default();
    if mid_a.is_empty() || mid_b.is_empty() || mid_a.len() > MAX_SWAP || mid_b.len() > MAX_SWAP {
        return false;
    }
    let new_content = |x: &[(Box<str>, bool)], y: &[(Box<str>, bool)]| {
        x.iter()
            .any(|(w, content)| *content && !y.iter().any(|(v, _)| v == w))
    };
    new_content(mid_a, mid_b) && new_content(mid_b, mid_a)
}

/// Longest swapped span that [`is_substitution`] considers ("a banana" / "an avocado" is two words).
const MAX_SWAP: usize = 2;

/// Does `x` hold an element that `y` does not (both sorted)?
fn has_extra<T: Ord>(x: &[T], y: &[T]) -> bool {
    x.iter().any(|u| y.binary_search(u).is_err())
}

/// Languages a reply must be in: the named ones, else the prompt's own (English when unknown).
fn implied_languages(s: &Signature) -> Vec<&'static str> {
    if !s.requested.is_empty() {
        return s.requested.clone();
    }
    vec![match s.lang {
        Some(Lang::Fr) => "fr",
        Some(Lang::De) => "de",
        Some(Lang::Es) => "es",
        Some(Lang::En) | None => "en",
    }]
}

// === Tokens ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// no capital letter
    Lower,
    /// "Austria"
    Initial,
    /// "USD", "API"
    AllCaps,
    /// "iPhone", "JavaScript", "macOS"
    Inner,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Word,
    /// canonical digits, e.g. "10000", "3.12"
    Num,
    Sym(char),
}

#[derive(Debug, Clone)]
struct Tok {
    /// lower-cased text of a word, canonical digits of a number, empty for a symbol
    text: String,
    kind: Kind,
    shape: Shape,
    sentence_start: bool,
    after_hyphen: bool,
    /// the previous token is a number ("10th", "3pm")
    after_number: bool,
}

/// French and Italian elisions: "l'Australie", "n'est", "qu'il".
const ELISIONS: &[&str] = &[
    "l", "d", "j", "n", "m", "c", "s", "t", "qu", "jusqu", "lorsqu", "puisqu",
];

fn shape_of(raw: &str) -> Shape {
    let mut letters = 0_usize;
    let mut upper = 0_usize;
    let mut inner_upper = false;
    for (i, c) in raw.chars().filter(|c| c.is_alphabetic()).enumerate() {
        letters += 1;
        if c.is_uppercase() {
            upper += 1;
            if i > 0 {
                inner_upper = true;
            }
        }
    }
    let first_upper = raw
        .chars()
        .find(|c| c.is_alphabetic())
        .is_some_and(char::is_uppercase);
    if letters >= 2 && upper == letters {
        Shape::AllCaps
    } else if inner_upper {
        Shape::Inner
    } else if first_upper {
        Shape::Initial
    } else {
        Shape::Lower
    }
}

/// Splits text into words (letters and digits, with inner apostrophes, dots and slashes: "don't", "Node.js",
/// "km/h"), numbers ("10,000", "3.12") and the symbols that matter ($ € £ ¥ ° %).
fn tokenize(text: &str) -> Vec<Tok> {
    let chars: Vec<char> = text.chars().collect();
    let mut out: Vec<Tok> = Vec::with_capacity(chars.len() / 4 + 1);
    let mut sentence_start = true;
    let mut after_hyphen = false;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let after_number = out.last().is_some_and(|t| t.kind == Kind::Num);
        if c.is_alphabetic() {
            let start = i;
            i += 1;
            while let Some(&d) = chars.get(i) {
                if d.is_alphanumeric() {
                    i += 1;
                } else if matches!(d, '\'' | '’' | '.' | '/')
                    && chars.get(i + 1).is_some_and(|n| n.is_alphabetic())
                {
                    i += 2;
                } else {
                    break;
                }
            }
            let raw: String = chars.get(start..i).unwrap_or_default().iter().collect();
            push_word(&mut out, &raw, sentence_start, after_hyphen, after_number);
            sentence_start = false;
            after_hyphen = false;
        } else if c.is_ascii_digit() {
            let start = i;
            i += 1;
            while let Some(&d) = chars.get(i) {
                if d.is_ascii_digit() {
                    i += 1;
                } else if matches!(d, '.' | ',')
                    && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                {
                    i += 2;
                } else {
                    break;
                }
            }
            let raw: String = chars.get(start..i).unwrap_or_default().iter().collect();
            out.push(Tok {
                text: canonical_number(&raw),
                kind: Kind::Num,
                shape: Shape::Lower,
                sentence_start,
                after_hyphen,
                after_number,
            });
            sentence_start = false;
            after_hyphen = false;
        } else {
            match c {
                '.' | '!' | '?' | ':' | ';' | '\n' | '¿' | '¡' => sentence_start = true,
                '-' | '‐' | '–' => after_hyphen = true,
                '$' | '€' | '£' | '¥' | '°' | '%' => out.push(Tok {
                    text: String::new(),
                    kind: Kind::Sym(c),
                    shape: Shape::Lower,
                    sentence_start: false,
                    after_hyphen: false,
                    after_number,
                }),
                _ => {}
            }
            i += 1;
        }
    }
    out
}

/// Pushes one word, splitting apostrophes: elisions ("l'Australie" → "l", "australie"), English negative
/// contractions ("don't" → "do", "not") and suffixes ("Austria's" → "austria", "I'm" → "i").
fn push_word(
    out: &mut Vec<Tok>,
    raw: &str,
    sentence_start: bool,
    after_hyphen: bool,
    after_number: bool,
) {
    let word = |text: &str, shape: Shape, sentence_start: bool| Tok {
        text: text.to_lowercase(),
        kind: Kind::Word,
        shape,
        sentence_start,
        after_hyphen,
        after_number,
    };
    if let Some((pre, post)) = raw.split_once(['\'', '’']) {
        let pre_lower = pre.to_lowercase();
        let post_lower = post.to_lowercase();
        if ELISIONS.contains(&pre_lower.as_str()) && !post.is_empty() {
            out.push(word(pre, shape_of(pre), sentence_start));
            out.push(word(post, shape_of(post), false));
        } else if post_lower == "t" && pre_lower.ends_with('n') && pre.len() > 1 {
            let stem: String = pre
                .chars()
                .take(pre.chars().count().saturating_sub(1))
                .collect();
            out.push(word(&stem, shape_of(&stem), sentence_start));
            out.push(word("not", Shape::Lower, false));
        } else if matches!(post_lower.as_str(), "s" | "m" | "re" | "ve" | "ll" | "d") {
            out.push(word(pre, shape_of(pre), sentence_start));
        } else {
            let joined: String = raw.chars().filter(|c| !matches!(c, '\'' | '’')).collect();
            out.push(word(&joined, shape_of(raw), sentence_start));
        }
    } else {
        out.push(word(raw, shape_of(raw), sentence_start));
    }
}

/// "10,000" → "10000" (thousands), "3,5" → "3.5" (decimal comma), "3.12" stays.
fn canonical_number(raw: &str) -> String {
    if raw.contains(',') {
        let mut groups = raw.split(',');
        let first_ok = groups.next().is_some_and(|g| !g.is_empty() && g.len() <= 3);
        let thousands = first_ok && !raw.contains('.') && groups.all(|g| g.len() == 3);
        if thousands {
            return raw.replace(',', "");
        }
        return raw.replace(',', ".");
    }
    raw.to_owned()
}

/// A word token with its index in the token list.
struct Word<'t> {
    tok: &'t Tok,
    lower: &'t String,
    index: usize,
}

impl<'t> Word<'t> {
    fn of((index, tok): (usize, &'t Tok)) -> Option<Self> {
        (tok.kind == Kind::Word).then_some(Self {
            tok,
            lower: &tok.text,
            index,
        })
    }
}

// === Language ===

/// Function words that make a prompt's language clear (en, fr, de, es).
const FUNCTION_WORDS: [&[&str]; 4] = [
    EN_FUNCTION_WORDS,
    FR_FUNCTION_WORDS,
    DE_FUNCTION_WORDS,
    ES_FUNCTION_WORDS,
];
const EN_FUNCTION_WORDS: &[&str] = &[
    "the", "is", "are", "what", "how", "do", "does", "i", "you", "of", "and", "to", "in", "my",
    "can", "for", "with", "which", "who", "this", "it", "an", "should", "why", "when", "a", "was",
    "there", "many", "much",
];
const FR_FUNCTION_WORDS: &[&str] = &[
    "le",
    "la",
    "les",
    "est",
    "des",
    "du",
    "une",
    "et",
    "quelle",
    "quel",
    "comment",
    "qui",
    "combien",
    "pour",
    "avec",
    "sans",
    "dans",
    "je",
    "mon",
    "ce",
    "que",
    "qu",
    "l",
    "d",
    "j",
    "c",
    "font",
    "convertir",
    "recette",
    "de",
    "en",
    "un",
    "ne",
    "pas",
    "ville",
];
const DE_FUNCTION_WORDS: &[&str] = &[
    "der", "die", "das", "ist", "und", "wie", "was", "ein", "eine", "ich", "mein", "mit", "ohne",
    "von", "im", "für", "nicht", "kein", "keine", "welche", "wer", "hat", "man", "zu", "dem",
    "den", "ins", "vor", "nach", "viele", "kann", "muss",
];
const ES_FUNCTION_WORDS: &[&str] = &[
    "el",
    "los",
    "las",
    "es",
    "que",
    "qué",
    "cómo",
    "cuál",
    "cuántos",
    "cuántas",
    "una",
    "y",
    "con",
    "sin",
    "mi",
    "por",
    "para",
    "se",
    "del",
    "de",
    "en",
    "un",
    "la",
    "convertir",
    "receta",
    "a",
    "quiero",
    "puedo",
    "tiene",
];

fn detect_lang(text: &str, tokens: &[Tok]) -> Option<Lang> {
    let mut score = [0_i32; 4]; // en fr de es
    for t in tokens.iter().filter(|t| t.kind == Kind::Word) {
        for (s, words) in score.iter_mut().zip(FUNCTION_WORDS) {
            if words.contains(&t.text.as_str()) {
                *s += 1;
            }
        }
    }
    for c in text.chars() {
        match c {
            'ñ' | '¿' | '¡' => score[3] += 2,
            'á' | 'í' | 'ó' | 'ú' => score[3] += 1,
            // é counts for French only: Spanish marks its stress with á í ó ú far more often.
            'é' | 'è' | 'ê' | 'ç' | 'à' | 'ù' | 'â' | 'î' | 'ô' | 'œ' => score[1] += 1,
            'ß' | 'ä' | 'ö' | 'ü' | 'Ä' | 'Ö' | 'Ü' => score[2] += 2,
            _ => {}
        }
    }
    let best = score.iter().copied().max().unwrap_or(0);
    if best < 2 || score.iter().filter(|&&s| s == best).count() > 1 {
        return None;
    }
    let langs = [Lang::En, Lang::Fr, Lang::De, Lang::Es];
    score
        .iter()
        .position(|&s| s == best)
        .and_then(|i| langs.get(i).copied())
}

/// An output language named by a word ("French", "français", "Französisch", "francés"), as a code.
fn language_name(w: &str, shape: Shape) -> Option<&'static str> {
    let code = match w {
        "english" | "anglais" | "inglés" | "ingles" => "en",
        "french" | "français" | "francais" | "française" | "francés" | "frances" => "fr",
        "german" | "allemand" | "alemán" | "aleman" => "de",
        "spanish" | "espagnol" | "español" | "espanol" | "castellano" => "es",
        "italian" | "italien" | "italiano" => "it",
        "portuguese" | "portugais" | "portugués" => "pt",
        "japanese" | "japonais" | "japonés" => "ja",
        "korean" | "coréen" | "coreano" => "ko",
        "chinese" | "mandarin" | "chinois" | "chino" => "zh",
        "cantonese" => "yue",
        "russian" | "russe" | "ruso" => "ru",
        "dutch" | "néerlandais" | "holandés" => "nl",
        "polish" if shape != Shape::Lower => "pl",
        "czech" => "cs",
        "hindi" => "hi",
        "arabic" | "arabe" | "árabe" => "ar",
        "turkish" => "tr",
        "greek" => "el",
        "swedish" => "sv",
        "norwegian" => "no",
        "danish" => "da",
        "finnish" => "fi",
        "hebrew" => "he",
        "vietnamese" => "vi",
        "ukrainian" => "uk",
        "indonesian" => "id",
        _ => return german_language_name(w),
    };
    Some(code)
}

/// German language adjectives, with their inflections: "Französisch", "ins Französische", "Deutsch".
fn german_language_name(w: &str) -> Option<&'static str> {
    const STEMS: &[(&str, &str)] = &[
        ("englisch", "en"),
        ("französisch", "fr"),
        ("deutsch", "de"),
        ("spanisch", "es"),
        ("italienisch", "it"),
        ("portugiesisch", "pt"),
        ("japanisch", "ja"),
        ("koreanisch", "ko"),
        ("chinesisch", "zh"),
        ("russisch", "ru"),
        ("niederländisch", "nl"),
        ("polnisch", "pl"),
        ("tschechisch", "cs"),
        ("arabisch", "ar"),
        ("türkisch", "tr"),
    ];
    STEMS.iter().find_map(|(stem, code)| {
        let rest = w.strip_prefix(stem)?;
        matches!(rest, "" | "e" | "en" | "er" | "es").then_some(*code)
    })
}

// === Numbers ===

fn number_word(w: &str, lang: Option<Lang>) -> Option<u64> {
    let en = match w {
        "two" => 2,
        "three" => 3,
        "four" => 4,
        "five" => 5,
        "six" => 6,
        "seven" => 7,
        "eight" => 8,
        "nine" => 9,
        "ten" => 10,
        "eleven" => 11,
        "twelve" | "dozen" => 12,
        "thirteen" => 13,
        "fourteen" => 14,
        "fifteen" => 15,
        "sixteen" => 16,
        "seventeen" => 17,
        "eighteen" => 18,
        "nineteen" => 19,
        "twenty" => 20,
        "thirty" => 30,
        "forty" => 40,
        "fifty" => 50,
        "sixty" => 60,
        "seventy" => 70,
        "eighty" => 80,
        "ninety" => 90,
        "hundred" => 100,
        "thousand" => 1000,
        "million" => 1_000_000,
        "billion" => 1_000_000_000,
        _ => 0,
    };
    if en > 0 {
        return Some(en);
    }
    let table: &[(&str, u64)] = match lang {
        Some(Lang::Fr) => FR_NUMBERS,
        Some(Lang::De) => DE_NUMBERS,
        Some(Lang::Es) => ES_NUMBERS,
        Some(Lang::En) | None => return None,
    };
    table.iter().find(|(word, _)| *word == w).map(|(_, n)| *n)
}

const FR_NUMBERS: &[(&str, u64)] = &[
    ("deux", 2),
    ("trois", 3),
    ("quatre", 4),
    ("cinq", 5),
    ("sept", 7),
    ("huit", 8),
    ("neuf", 9),
    ("dix", 10),
    ("onze", 11),
    ("douze", 12),
    ("quinze", 15),
    ("vingt", 20),
    ("trente", 30),
    ("cent", 100),
    ("mille", 1000),
];

const DE_NUMBERS: &[(&str, u64)] = &[
    ("zwei", 2),
    ("drei", 3),
    ("vier", 4),
    ("fünf", 5),
    ("sechs", 6),
    ("sieben", 7),
    ("acht", 8),
    ("neun", 9),
    ("zehn", 10),
    ("elf", 11),
    ("zwölf", 12),
    ("zwanzig", 20),
    ("hundert", 100),
    ("tausend", 1000),
];

const ES_NUMBERS: &[(&str, u64)] = &[
    ("dos", 2),
    ("tres", 3),
    ("cuatro", 4),
    ("cinco", 5),
    ("seis", 6),
    ("siete", 7),
    ("ocho", 8),
    ("nueve", 9),
    ("diez", 10),
    ("once", 11),
    ("doce", 12),
    ("veinte", 20),
    ("cien", 100),
    ("ciento", 100),
    ("mil", 1000),
];

/// Numbers in order: digits as written (canonical), number words combined ("twenty-five" → 25,
/// "three hundred" → 300, "3 million" → 3000000). The number 1 is left out: "a banana" and "one banana" agree.
fn numbers(tokens: &[Tok], lang: Option<Lang>) -> Vec<Box<str>> {
    let mut out: Vec<String> = Vec::new();
    // The value of the number being built from words (or digits followed by a multiplier word).
    let mut pending: Option<u64> = None;
    let mut prev_was_number = false;
    for t in tokens {
        let word_value = (t.kind == Kind::Word)
            .then(|| number_word(&t.text, lang))
            .flatten();
        match (&t.kind, word_value) {
            (Kind::Word, Some(v)) => {
                let multiplier = v >= 100;
                pending = Some(match pending {
                    Some(p) if prev_was_number && multiplier => p.saturating_mul(v),
                    Some(p) if prev_was_number && p >= 20 && p % 10 == 0 && v < 10 => p + v,
                    Some(p) => {
                        out.push(p.to_string());
                        v
                    }
                    None => v,
                });
                prev_was_number = true;
            }
            (Kind::Num, _) => {
                if let Some(p) = pending.take() {
                    out.push(p.to_string());
                }
                // Plain integers may take a multiplier word ("3 million"); others are kept as written.
                match t.text.parse::<u64>() {
                    Ok(v) if t.text.len() < 16 => pending = Some(v),
                    _ => out.push(t.text.clone()),
                }
                prev_was_number = true;
            }
            _ => {
                if let Some(p) = pending.take() {
                    out.push(p.to_string());
                }
                prev_was_number = false;
            }
        }
    }
    if let Some(p) = pending {
        out.push(p.to_string());
    }
    out.into_iter()
        .filter(|n| n != "1")
        .map(String::into_boxed_str)
        .collect()
}

// === Units ===

/// The canonical unit of the word at `index`, looking at its neighbours for symbols and compounds ("°C",
/// "$45", "100 m", "km/h").
fn unit_at(tokens: &[Tok], index: usize) -> Option<&'static str> {
    let tok = tokens.get(index)?;
    let prev = index.checked_sub(1).and_then(|i| tokens.get(i));
    let prev_is = |c: char| prev.is_some_and(|p| p.kind == Kind::Sym(c));
    let w = tok.text.as_str();
    if prev_is('°') {
        match w {
            "c" => return Some("celsius"),
            "f" => return Some("fahrenheit"),
            _ => {}
        }
    }
    // Single letters and ambiguous short words are units only right after a number or "per".
    let after_quantity =
        tok.after_number || prev.is_some_and(|p| matches!(p.text.as_str(), "per" | "a" | "an"));
    let unit = match w {
        "km" | "kms" | "kilometer" | "kilometers" | "kilometre" | "kilometres" | "kilomètre"
        | "kilomètres" | "kilómetro" | "kilómetros" | "kilometern" => "km",
        "meter" | "meters" | "metre" | "metres" | "mètre" | "mètres" | "metro" | "metros" => "m",
        "m" if after_quantity => "m",
        "cm" | "centimeter" | "centimeters" | "centimetre" | "centimetres" | "centímetros" => "cm",
        "mm" | "millimeter" | "millimeters" | "millimetre" | "millimetres" => "mm",
        "mile" | "miles" | "milla" | "millas" | "meile" | "meilen" => "mile",
        "ft" | "foot" | "feet" | "pies" => "ft",
        "inch" | "inches" | "pouce" | "pouces" | "pulgada" | "pulgadas" | "zoll" => "inch",
        "yard" | "yards" | "yd" => "yd",
        "mph" => "mph",
        "km/h" | "kmh" | "kph" => "km/h",
        "m/s" => "m/s",
        "knot" | "knots" => "knot",
        "kg" | "kilo" | "kilos" | "kilogram" | "kilograms" | "kilogramme" | "kilogrammes"
        | "kilogramo" | "kilogramos" => "kg",
        "gram" | "grams" | "gramme" | "grammes" | "gramo" | "gramos" | "gramm" => "g",
        "g" if after_quantity => "g",
        "lb" | "lbs" | "pound" | "pounds" | "libra" | "libras" => "lb",
        "oz" | "ounce" | "ounces" | "onza" | "onzas" => "oz",
        "ton" | "tons" | "tonne" | "tonnes" => "t",
        "stone" if after_quantity => "stone",
        "l" if after_quantity => "l",
        "liter" | "liters" | "litre" | "litres" | "litro" | "litros" => "l",
        "ml" | "milliliter" | "milliliters" | "millilitre" | "millilitres" | "mililitros" => "ml",
        "gallon" | "gallons" | "gal" => "gal",
        "quart" | "quarts" | "qt" => "qt",
        "pint" | "pints" => "pint",
        "cup" | "cups" | "tasse" | "tasses" | "taza" | "tazas" => "cup",
        "tablespoon" | "tablespoons" | "tbsp" => "tbsp",
        "teaspoon" | "teaspoons" | "tsp" => "tsp",
        "celsius" | "centigrade" => "celsius",
        "fahrenheit" => "fahrenheit",
        "kelvin" => "kelvin",
        "mark" if prev.is_some_and(|p| p.text == "gas") => "gas mark",
        "seconds" | "secs" | "sec" | "segundos" | "sekunden" => "s",
        "second" | "s" if after_quantity => "s",
        "minute" | "minutes" | "mins" | "minuto" | "minutos" | "minuten" => "min",
        "hour" | "hours" | "hr" | "hrs" | "heure" | "heures" | "hora" | "horas" | "stunde"
        | "stunden" => "h",
        "h" if after_quantity => "h",
        "day" | "days" | "jour" | "jours" | "día" | "días" | "tag" | "tage" | "tagen" => "day",
        "week" | "weeks" | "semaine" | "semaines" | "semana" | "semanas" | "woche" | "wochen" => {
            "week"
        }
        "month" | "months" | "mois" | "mes" | "meses" | "monat" | "monate" => "month",
        "year" | "years" | "yr" | "yrs" | "année" | "années" | "año" | "años" | "jahr"
        | "jahre" | "jahren" => "year",
        "byte" | "bytes" => "byte",
        "kb" | "kilobyte" | "kilobytes" => "kb",
        "mb" | "megabyte" | "megabytes" => "mb",
        "gb" | "gigabyte" | "gigabytes" => "gb",
        "tb" | "terabyte" | "terabytes" => "tb",
        "pascal" | "pascals" | "pa" | "kpa" => "pa",
        "psi" => "psi",
        "bar" if after_quantity => "bar",
        "atm" | "atmosphere" | "atmospheres" => "atm",
        "acre" | "acres" => "acre",
        "hectare" | "hectares" => "ha",
        "calorie" | "calories" | "kcal" | "calorías" | "kalorien" => "kcal",
        "joule" | "joules" => "j",
        "kwh" => "kwh",
        "usd" | "dollar" | "dollars" | "dólar" | "dólares" => "usd",
        "eur" | "euro" | "euros" => "eur",
        "gbp" | "sterling" => "gbp",
        "jpy" | "yen" => "jpy",
        "cny" | "rmb" | "yuan" => "cny",
        "chf" | "franc" | "francs" => "chf",
        "inr" | "rupee" | "rupees" => "inr",
        "cad" | "aud" | "mxn" | "brl" | "krw" | "sek" | "nok" | "dkk" | "pln" | "rub" => {
            return Some(currency_code(w));
        }
        "btc" | "bitcoin" | "bitcoins" => "btc",
        "eth" | "ether" => "eth",
        _ => return None,
    };
    Some(unit)
}

fn currency_code(w: &str) -> &'static str {
    match w {
        "cad" => "cad",
        "aud" => "aud",
        "mxn" => "mxn",
        "brl" => "brl",
        "krw" => "krw",
        "sek" => "sek",
        "nok" => "nok",
        "dkk" => "dkk",
        "pln" => "pln",
        _ => "rub",
    }
}

fn symbol_unit(c: char) -> Option<&'static str> {
    match c {
        '$' => Some("usd"),
        '€' => Some("eur"),
        '£' => Some("gbp"),
        '¥' => Some("jpy"),
        _ => None,
    }
}

// === Roles: source and target ===

/// Words skipped between a marker and the term it governs ("to *a* string", "in *square* miles").
fn is_filler(w: &str) -> bool {
    matches!(
        w,
        "a" | "an"
            | "the"
            | "my"
            | "your"
            | "our"
            | "this"
            | "that"
            | "its"
            | "their"
            | "le"
            | "la"
            | "les"
            | "l"
            | "un"
            | "une"
            | "des"
            | "du"
            | "der"
            | "die"
            | "das"
            | "dem"
            | "den"
            | "ein"
            | "eine"
            | "einen"
            | "el"
            | "los"
            | "las"
            | "mi"
            | "square"
            | "cubic"
            | "degrees"
            | "degree"
            | "degrés"
            | "grad"
            | "grados"
            | "local"
            | "new"
            | "remote"
    )
}

/// Terms that have a role: "from X" and the word before "to" are sources; "to/into/in X" and "how many X"
/// are targets; a unit right after a number is a source ("100 km"). Compared by [`agree`]: the same term as
/// source on one side and target on the other is a [`Mismatch::Direction`].
/// Also returns the terms asked for ("in miles", "to a string", "into Spanish").
fn roles(tokens: &[Tok], lang: Option<Lang>) -> (Vec<Term>, Vec<Box<str>>) {
    let mut out: Vec<Term> = Vec::new();
    let mut asked: Vec<Box<str>> = Vec::new();
    let term = |i: usize| -> Option<Box<str>> {
        let t = tokens.get(i)?;
        match &t.kind {
            Kind::Word if !is_stopword(&t.text) || unit_at(tokens, i).is_some() => {
                Some(term_key(tokens, i))
            }
            Kind::Sym(c) => symbol_unit(*c).map(Into::into),
            _ => None,
        }
    };
    // The first term after position `i`, skipping fillers.
    let next_term = |mut i: usize| -> Option<Box<str>> {
        loop {
            i += 1;
            let t = tokens.get(i)?;
            if t.kind == Kind::Word && is_filler(&t.text) {
                continue;
            }
            return if t.kind == Kind::Num { None } else { term(i) };
        }
    };
    for (i, t) in tokens.iter().enumerate() {
        match &t.kind {
            Kind::Word => {
                let w = t.text.as_str();
                let source_marker = matches!(w, "from" | "von" | "aus" | "desde" | "depuis");
                let target_marker = matches!(
                    w,
                    "to" | "into" | "in" | "nach" | "ins" | "auf" | "vers" | "en"
                ) || (w == "a" && lang == Some(Lang::Es));
                let before_marker = matches!(w, "to" | "into" | "en" | "nach" | "ins")
                    || (w == "a" && lang == Some(Lang::Es));
                if source_marker && let Some(x) = next_term(i) {
                    out.push((x, Role::Source));
                }
                if target_marker && let Some(x) = next_term(i) {
                    asked.push(x.clone());
                    out.push((x, Role::Target));
                }
                if before_marker && let Some(x) = i.checked_sub(1).and_then(term) {
                    out.push((x, Role::Source));
                }
                let how_many = matches!(
                    (
                        i.checked_sub(1)
                            .and_then(|j| tokens.get(j))
                            .map(|p| p.text.as_str()),
                        w
                    ),
                    (Some("how"), "many" | "much")
                        | (Some("combien"), "de")
                        | (Some("wie"), "viele")
                ) || matches!(w, "cuántos" | "cuántas");
                if how_many && let Some(x) = next_term(i) {
                    out.push((x, Role::Target));
                }
            }
            Kind::Num => {
                // "100 km", "30 degrees Celsius", "50 USD": the quantity given is in the source unit.
                let mut j = i + 1;
                while tokens
                    .get(j)
                    .is_some_and(|n| n.kind == Kind::Word && is_filler(&n.text))
                {
                    j += 1;
                }
                if unit_at(tokens, j).is_some()
                    && let Some(x) = term(j)
                {
                    out.push((x, Role::Source));
                }
                // "$45": the symbol precedes the number.
                if let Some(Kind::Sym(c)) = i
                    .checked_sub(1)
                    .and_then(|j| tokens.get(j))
                    .map(|p| &p.kind)
                    && let Some(u) = symbol_unit(*c)
                {
                    out.push((u.into(), Role::Source));
                }
            }
            Kind::Sym(_) => {}
        }
    }
    (out, asked)
}

/// How a term is compared across prompts: its unit or language code when it has one, else its canonical word.
fn term_key(tokens: &[Tok], i: usize) -> Box<str> {
    let Some(t) = tokens.get(i) else {
        return "".into();
    };
    if let Some(u) = unit_at(tokens, i) {
        return u.into();
    }
    if let Some(code) = language_name(&t.text, t.shape) {
        return code.into();
    }
    canonical(&t.text).into()
}

// === Polarity and scope ===

/// (axis, pole) of a word on an antonym axis.
fn polarity(w: &str) -> Option<(&'static str, i8)> {
    let p = match w {
        "buy" | "buying" | "bought" | "purchase" | "comprar" | "acheter" | "kaufen" => ("trade", 1),
        "sell" | "selling" | "sold" | "vender" | "vendre" | "verkaufen" => ("trade", -1),
        "before" | "prior" | "avant" | "vor" | "antes" => ("time", -1),
        "after" | "après" | "nach" | "después" => ("time", 1),
        "older" | "oldest" => ("age", 1),
        "younger" | "youngest" | "newer" | "newest" => ("age", -1),
        "import" | "imports" | "importing" | "imported" => ("trade-flow", 1),
        "export" | "exports" | "exporting" | "exported" => ("trade-flow", -1),
        "upload" | "uploading" | "push" | "pushing" => ("transfer", 1),
        "download" | "downloading" | "pull" | "pulling" => ("transfer", -1),
        "encrypt" | "encrypted" | "encryption" | "encode" | "encoding" | "encoded" | "zip"
        | "zipped" | "compress" | "compressed" | "serialize" | "serialise" => ("codec", 1),
        "decrypt" | "decrypted" | "decryption" | "decode" | "decoding" | "decoded" | "unzip"
        | "unzipped" | "decompress" | "uncompress" | "deserialize" | "deserialise" => ("codec", -1),
        "increase" | "increasing" | "raise" | "higher" | "upgrade" | "grow" | "more" | "plus" => {
            ("amount", 1)
        }
        "decrease" | "decreasing" | "reduce" | "lower" | "downgrade" | "shrink" | "less"
        | "fewer" => ("amount", -1),
        "largest" | "biggest" | "greatest" => ("size", 1),
        "smallest" | "tiniest" | "least" => ("size", -1),
        "highest" | "tallest" => ("height", 1),
        "lowest" => ("height", -1),
        "longest" => ("length", 1),
        "shortest" => ("length", -1),
        "hottest" | "warmest" => ("heat", 1),
        "coldest" | "coolest" => ("heat", -1),
        "earliest" => ("timing", -1),
        "latest" => ("timing", 1),
        "fastest" | "quickest" => ("speed", 1),
        "slowest" => ("speed", -1),
        "first" | "initial" | "premier" | "première" | "primer" | "primero" | "primera"
        | "erste" | "ersten" | "erster" | "erstes" => ("order", -1),
        "last" | "final" | "dernier" | "dernière" | "último" | "última" | "letzte" | "letzten"
        | "letzter" | "letztes" => ("order", 1),
        "min" | "minimum" | "minimal" | "mínimo" => ("extreme", -1),
        "max" | "maximum" | "maximal" | "máximo" => ("extreme", 1),
        "start" | "starting" | "begin" | "enable" | "enabled" => ("run", 1),
        "stop" | "stopping" | "disable" | "disabled" => ("run", -1),
        "add" | "adding" | "insert" => ("edit", 1),
        "remove" | "removing" | "delete" | "deleting" => ("edit", -1),
        "win" | "won" | "winning" | "winner" => ("outcome", 1),
        "lose" | "lost" | "losing" | "loser" => ("outcome", -1),
        "minus" | "subtract" => ("arith", -1),
        "times" | "multiplied" | "fois" | "mal" => ("arith", 2),
        "divided" | "divide" => ("arith", -2),
        _ => return None,
    };
    Some(p)
}

fn is_scope_all(w: &str) -> bool {
    matches!(
        w,
        "all"
            | "every"
            | "whole"
            | "entire"
            | "tous"
            | "toutes"
            | "alle"
            | "allen"
            | "alles"
            | "todos"
            | "todas"
    )
}

// === Negation, entities, content words ===

fn is_negation(w: &str, lang: Option<Lang>) -> bool {
    matches!(
        w,
        "not"
            | "no"
            | "never"
            | "without"
            | "none"
            | "cannot"
            | "except"
            | "excluding"
            | "non"
            | "nor"
            | "neither"
            | "sans"
            | "ne"
            | "pas"
            | "jamais"
            | "aucun"
            | "aucune"
            | "sauf"
            | "nicht"
            | "kein"
            | "keine"
            | "keinen"
            | "keinem"
            | "keiner"
            | "keines"
            | "ohne"
            | "nie"
            | "niemals"
            | "außer"
            | "sin"
            | "nunca"
            | "ni"
            | "excepto"
            | "salvo"
    ) || (w == "n" && lang == Some(Lang::Fr))
}

fn is_entity(w: &Word<'_>, lang: Option<Lang>) -> bool {
    let lower = w.lower.as_str();
    if lower.chars().count() < 2
        || language_name(lower, w.tok.shape).is_some()
        || unit_at_word(lower)
        || is_negation(lower, lang)
    {
        return false;
    }
    match w.tok.shape {
        Shape::AllCaps | Shape::Inner => true,
        // German capitalises every noun: only all-caps and camel-case words count there.
        Shape::Initial => !w.tok.sentence_start && lang != Some(Lang::De) && !is_stopword(lower),
        Shape::Lower => false,
    }
}

/// A unit word on its own (for excluding units such as "USD" or "Celsius" from entities).
fn unit_at_word(w: &str) -> bool {
    let tok = Tok {
        text: w.to_owned(),
        kind: Kind::Word,
        shape: Shape::Lower,
        sentence_start: false,
        after_hyphen: false,
        after_number: false,
    };
    unit_at(std::slice::from_ref(&tok), 0).is_some()
}

fn is_content(w: &str, after_number: bool) -> bool {
    w.chars().count() >= 2
        && !is_stopword(w)
        && !is_negation(w, None)
        && number_word(w, None).is_none()
        && !(after_number && matches!(w, "st" | "nd" | "rd" | "th" | "pm" | "am" | "s"))
}

/// Lower-cased word → the form compared across prompts: a few aliases ("JS" is "javascript", "America" is
/// "us"), then a light plural strip ("values" → "value").
fn canonical(w: &str) -> String {
    if let Some(a) = alias(w) {
        return a.to_owned();
    }
    let stem = light_stem(w);
    alias(stem).unwrap_or(stem).to_owned()
}

fn light_stem(w: &str) -> &str {
    if w.chars().count() > 3
        && w.ends_with('s')
        && !w.ends_with("ss")
        && !w.ends_with("us")
        && !w.ends_with("is")
    {
        w.strip_suffix('s').unwrap_or(w)
    } else {
        w
    }
}

fn alias(w: &str) -> Option<&'static str> {
    let a = match w {
        "js" => "javascript",
        "ts" => "typescript",
        "golang" => "go",
        "py" => "python",
        "dict" | "dicts" => "dictionary",
        "int" | "ints" => "integer",
        "str" => "string",
        "macos" | "osx" => "mac",
        "usa" | "america" | "american" => "us",
        "britain" => "uk",
        "world" => "earth",
        "biggest" => "largest",
        "quit" => "exit",
        _ => return None,
    };
    Some(a)
}

fn two_word_alias(a: &str, b: &str) -> Option<&'static str> {
    match (a, b) {
        ("united", "states") => Some("us"),
        ("united", "kingdom" | "kingdoms") => Some("uk"),
        ("most", "recent") => Some("latest"),
        _ => None,
    }
}

/// Function words of English, French, German and Spanish, plus instruction and filler words ("please",
/// "explain", "tell me"): they carry no answer-changing content.
fn is_stopword(w: &str) -> bool {
    matches!(
        w,
        // English
        "a" | "an" | "the" | "is" | "are" | "was" | "were" | "be" | "been" | "being" | "am" | "do" | "does"
            | "did" | "doing" | "done" | "i" | "me" | "my" | "mine" | "you" | "your" | "yours" | "we" | "our"
            | "us" | "he" | "she" | "it" | "its" | "they" | "them" | "their" | "this" | "that" | "these"
            | "those" | "what" | "whats" | "which" | "who" | "whom" | "whose" | "when" | "where" | "why"
            | "how" | "of" | "in" | "on" | "at" | "to" | "into" | "for" | "from" | "by" | "with" | "about"
            | "as" | "and" | "or" | "but" | "if" | "so" | "than" | "then" | "there" | "here" | "can" | "could"
            | "should" | "would" | "will" | "shall" | "may" | "might" | "must" | "have" | "has" | "had"
            | "please" | "hey" | "hi" | "hello" | "tell" | "give" | "show" | "explain" | "describe"
            | "define" | "get" | "getting" | "let" | "want" | "need" | "some" | "any" | "much" | "many"
            | "very" | "just" | "really" | "also" | "too" | "up" | "out" | "way" | "ways" | "able" | "okay"
            | "ok" | "know" | "help" | "like" | "one" | "r" | "u" | "im" | "ca" | "wo" | "thing" | "things"
            | "someone" | "something" | "mean" | "meaning" | "term" | "terms" | "make" | "use" | "using"
            | "via" | "per" | "vs" | "versus" | "own" | "most" | "best" | "good" | "simple" | "simply"
            | "usually" | "typical" | "normal"
            // French
            | "le" | "la" | "les" | "l" | "un" | "une" | "des" | "de" | "du" | "d" | "et" | "ou" | "est"
            | "sont" | "à" | "au" | "aux" | "en" | "dans" | "pour" | "par" | "avec" | "sur" | "ce" | "cette"
            | "ces" | "que" | "qu" | "qui" | "quoi" | "quel" | "quelle" | "quels" | "quelles" | "comment"
            | "combien" | "je" | "j" | "tu" | "il" | "elle"  | "nous" | "vous" | "ils" | "elles" | "mon"
            | "ma" | "mes" | "se" | "s" | "c" | "y" | "ça" | "font" | "fait"
            // German
            | "der" | "die" | "das" | "den" | "dem"  | "ein" | "eine" | "einen" | "einem" | "einer"
            | "und" | "oder" | "ist" | "sind" | "war" | "hat" | "haben" | "wie"  | "wer" 
            | "welche" | "welcher" | "welches" | "ich"  | "er" | "sie" | "es" | "wir" | "ihr"
            | "mein" | "meine" | "mir" | "mich" | "man"  | "ins"   | "auf" | "für" | "von"
            | "zu" | "zum" | "zur" | "bei" | "aus" | "damit" | "dass" | "kann" | "muss" | "soll" | "viele"
            // Spanish
            | "el" | "los" | "las" | "unos" | "unas" | "del"  | "o" | "son" | "al" | "por" | "para"
            | "qué" | "cómo" | "como" | "cuál" | "cuáles" | "cuánto" | "cuántos" | "cuántas" | "quién"
            | "mi" | "lo"  | "su" | "tiene" | "hace" | "hago" | "puedo" | "quiero"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(a: &str, b: &str) -> Result<(), Mismatch> {
        agree(&Signature::of(a), &Signature::of(b))
    }

    #[test]
    fn entity_swap_is_an_entities_mismatch() {
        assert_eq!(
            check(
                "What is the capital of Austria?",
                "What is the capital of Australia?"
            ),
            Err(Mismatch::Entities)
        );
        assert_eq!(
            check(
                "Quelle est la capitale de l'Autriche ?",
                "Quelle est la capitale de l'Australie ?"
            ),
            Err(Mismatch::Entities)
        );
    }

    #[test]
    fn paraphrases_agree() {
        for (a, b) in [
            (
                "What is the capital of Austria?",
                "Which city is Austria's capital?",
            ),
            (
                "Convert 100 km to miles",
                "How many miles is 100 kilometers?",
            ),
            (
                "How many ounces are in a cup?",
                "A cup equals how many ounces?",
            ),
            ("What's 15% of 80?", "Calculate fifteen percent of 80"),
            (
                "HOW DO I TURN OFF AUTOCORRECT ON IPHONE",
                "how do i turn off autocorrect on iphone",
            ),
            (
                "What is the capital of Australia?",
                "Australia's capital city is?",
            ),
            (
                "How do I unclog a drain without chemicals?",
                "Ways to clear a blocked drain without using chemicals",
            ),
            (
                "Translate 'good morning' into Spanish",
                "How do you say 'good morning' in Spanish?",
            ),
        ] {
            assert_eq!(check(a, b), Ok(()), "{a} | {b}");
            assert_eq!(check(b, a), Ok(()), "{b} | {a}");
        }
    }

    #[test]
    fn direction_units_numbers_negation_polarity_scope_language() {
        let cases = [
            (
                "Convert 100 km to miles",
                "Convert 100 miles to km",
                Mismatch::Direction,
            ),
            (
                "Convert 50 USD to EUR",
                "Convert 50 EUR to USD",
                Mismatch::Direction,
            ),
            (
                "What is 7 minus 3?",
                "What is 3 minus 7?",
                Mismatch::Direction,
            ),
            (
                "Convert 100 km to miles",
                "Convert 100 km to meters",
                Mismatch::Units,
            ),
            (
                "What's 30 degrees Celsius in Fahrenheit?",
                "What's 30 degrees Celsius in Kelvin?",
                Mismatch::Units,
            ),
            (
                "Convert 100 km to miles",
                "Convert 160 km to miles",
                Mismatch::Numbers,
            ),
            (
                "What's new in Python 3.12?",
                "What's new in Python 3.11?",
                Mismatch::Numbers,
            ),
            (
                "Chocolate cake recipe with eggs",
                "Chocolate cake recipe without eggs",
                Mismatch::Negation,
            ),
            (
                "Which planets have rings?",
                "Which planets don't have rings?",
                Mismatch::Negation,
            ),
            (
                "Welche Lebensmittel enthalten Gluten?",
                "Welche Lebensmittel enthalten kein Gluten?",
                Mismatch::Negation,
            ),
            (
                "How do I buy Bitcoin on Coinbase?",
                "How do I sell Bitcoin on Coinbase?",
                Mismatch::Polarity,
            ),
            (
                "Delete a row from a table in SQL",
                "Delete all rows from a table in SQL",
                Mismatch::Scope,
            ),
            (
                "How far is the Moon from Earth in miles?",
                "How far is the Moon from Earth?",
                Mismatch::Units,
            ),
            (
                "Convertir 30 degrés Celsius en Kelvin",
                "What's 30 degrees Celsius in Kelvin?",
                Mismatch::Language,
            ),
            (
                "Translate 'good morning' into French",
                "Translate 'good morning' into German",
                Mismatch::Language,
            ),
            (
                "What is the chemical symbol for gold?",
                "What is the chemical symbol for silver?",
                Mismatch::Substitution,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(check(a, b), Err(want), "{a} | {b}");
            assert_eq!(check(b, a), Err(want), "{b} | {a}");
        }
    }

    #[test]
    fn decide_applies_threshold_then_guards() {
        let a = Signature::of("What is the capital of Austria?");
        let b = Signature::of("What is the capital of Australia?");
        assert_eq!(decide(0.99, 0.9, &a, &b, false), Decision::Hit);
        assert_eq!(
            decide(0.99, 0.9, &a, &b, true),
            Decision::Blocked(Mismatch::Entities)
        );
        assert_eq!(decide(0.5, 0.9, &a, &a, true), Decision::Miss);
        assert_eq!(decide(f32::NAN, 0.9, &a, &a, true), Decision::Miss);
        assert_eq!(decide(0.9, 0.9, &a, &a, true), Decision::Hit);
    }

    #[test]
    fn numbers_are_canonical() {
        let s = Signature::of("Convert 10,000 yen, twenty-five items and 3 million 2nd 3,5");
        let got: Vec<&str> = s.numbers.iter().map(AsRef::as_ref).collect();
        assert_eq!(got, ["10000", "25", "3000000", "2", "3.5"]);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_agrees_with_itself(text in "\\PC{0,200}") {
            let s = Signature::of(&text);
            proptest::prop_assert_eq!(agree(&s, &s), Ok(()));
        }

        #[test]
        fn agree_is_symmetric(a in "[a-zA-Z0-9 ,.'$°%-]{0,60}", b in "[a-zA-Z0-9 ,.'$°%-]{0,60}") {
            let (x, y) = (Signature::of(&a), Signature::of(&b));
            proptest::prop_assert_eq!(agree(&x, &y).is_ok(), agree(&y, &x).is_ok());
        }
    }
}
