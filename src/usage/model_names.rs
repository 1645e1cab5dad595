//! How a model name a client or an upstream uses finds its entry in a built-in table (prices, context
//! windows): case and whitespace ignored; provider prefixes stripped (`openai/gpt-4o`,
//! `us.anthropic.claude-…`); a dated snapshot finds its base entry (`gpt-4o-2024-08-06` → `gpt-4o`),
//! but a short version number is a different model (`gpt-5` is not `gpt-5.1`'s base, nor `claude-opus-4`
//! that of `claude-opus-4-9`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// The entry of `model` in `table` (keys lower-case), by the rules above.
pub(crate) fn lookup<'t, V>(table: &'t HashMap<String, V>, model: &str) -> Option<&'t V> {
    let name = model.trim().to_ascii_lowercase();
    let names = unprefixed_names(&name);
    names
        .iter()
        .find_map(|n| table.get(*n))
        .or_else(|| names.iter().find_map(|n| longest_prefix(table, n)))
}

/// Inserts a lower-cased `name`; a second entry of the same name is an error carrying that name.
pub(crate) fn insert_new<V>(
    table: &mut HashMap<String, V>,
    name: &str,
    value: V,
) -> Result<(), String> {
    match table.entry(name.trim().to_ascii_lowercase()) {
        Entry::Occupied(e) => Err(e.key().clone()),
        Entry::Vacant(e) => {
            e.insert(value);
            Ok(())
        }
    }
}

/// The entry that `name` extends at a snapshot separator, longest first.
fn longest_prefix<'t, V>(table: &'t HashMap<String, V>, name: &str) -> Option<&'t V> {
    // The separators are ASCII, so `at + 1` is a char boundary.
    name.rmatch_indices(['-', '@', ':'])
        .filter(|&(at, sep)| at > 0 && is_snapshot_cut(sep, &name[at + 1..]))
        .find_map(|(at, _)| table.get(&name[..at]))
}

/// `name`, then `name` without each leading provider prefix: `a/b/c` gives `a/b/c`, `b/c`, `c`; a
/// last part such as `us.anthropic.claude-x` also gives `anthropic.claude-x` and `claude-x`.
fn unprefixed_names(name: &str) -> Vec<&str> {
    let mut names = vec![name];
    names.extend(name.match_indices('/').map(|(at, _)| &name[at + 1..]));
    let mut last = names.last().copied().unwrap_or(name);
    // Bedrock-style `region.vendor.model`: strip leading parts made of letters only.
    while let Some((head, rest)) = last.split_once('.')
        && !head.is_empty()
        && !rest.is_empty()
        && head.bytes().all(|b| b.is_ascii_lowercase())
    {
        names.push(rest);
        last = rest;
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Whether cutting a name before `sep` (with `rest` after it) leaves a base entry of the same model.
fn is_snapshot_cut(sep: &str, rest: &str) -> bool {
    match sep {
        "@" | ":" => true,
        "-" => !starts_with_short_version(rest),
        _ => false,
    }
}

/// True when `rest` starts with a version number such as `5`, `10` or `4.1` (not a date or `002`).
fn starts_with_short_version(rest: &str) -> bool {
    let segment = rest.split(['-', '@', ':']).next().unwrap_or(rest);
    !segment.is_empty()
        && segment.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && (segment.contains('.') || segment.len() <= 2)
}
