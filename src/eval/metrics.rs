//! The formulas, separate from the judge so they can be checked by hand. A `None` score means "not
//! defined for this sample" (e.g. an answer with no statements), which is not the same as 0.

/// Supported ÷ total, `None` when there is nothing to judge (Ragas faithfulness and context recall).
pub fn ratio(verdicts: &[bool]) -> Option<f64> {
    if verdicts.is_empty() {
        return None;
    }
    Some(count(verdicts) / len(verdicts.len()))
}

/// Rank-weighted average precision of per-chunk usefulness verdicts, in retrieval order (Ragas context
/// precision): `Σ_k precision@k · v_k ÷ Σ_k v_k`. `None` without chunks; 0 when no chunk is useful.
pub fn average_precision(verdicts: &[bool]) -> Option<f64> {
    if verdicts.is_empty() {
        return None;
    }
    let mut useful = 0.0;
    let mut sum = 0.0;
    for (k, &v) in verdicts.iter().enumerate() {
        if v {
            useful += 1.0;
            sum += useful / len(k + 1);
        }
    }
    if useful == 0.0 {
        return Some(0.0);
    }
    Some(sum / useful)
}

/// Mean of 0–`max` ratings scaled to 0–1 (TruLens groundedness and context relevance); `None` without
/// ratings.
pub fn normalized_mean(ratings: &[f64], max: f64) -> Option<f64> {
    if ratings.is_empty() || max <= 0.0 {
        return None;
    }
    Some(
        ratings
            .iter()
            .map(|r| (r / max).clamp(0.0, 1.0))
            .sum::<f64>()
            / len(ratings.len()),
    )
}

/// Ragas answer relevancy from the cosines between the question and each generated question: their
/// mean, or 0 when the judge found the answer noncommittal; `None` when no question was generated.
pub fn answer_relevancy(cosines: &[f64], noncommittal: bool) -> Option<f64> {
    if cosines.is_empty() {
        return None;
    }
    if noncommittal {
        return Some(0.0);
    }
    Some(mean(cosines))
}

/// Arithmetic mean (NaN for an empty slice; callers check).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / len(values.len())
}

/// Area under the ROC curve: the probability that a random positive scores above a random negative,
/// ties counting one half (the Mann–Whitney U statistic). `None` if either side is empty.
pub fn auc(positives: &[f64], negatives: &[f64]) -> Option<f64> {
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in positives {
        for n in negatives {
            if p > n {
                wins += 1.0;
            } else if (p - n).abs() < f64::EPSILON {
                wins += 0.5;
            }
        }
    }
    Some(wins / (len(positives.len()) * len(negatives.len())))
}

/// A 95% percentile-bootstrap confidence interval of the mean of `values`: `resamples` resamples with
/// a fixed-seed generator, so the same data always gives the same interval. `None` for no values.
pub fn bootstrap_mean_ci(values: &[f64], resamples: usize, seed: u64) -> Option<(f64, f64)> {
    if values.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = SplitMix64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            let sum: f64 = (0..n).map(|_| values[rng.below(n)]).sum();
            sum / len(n)
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short, non-empty vector"
        )]
        let i = ((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1);
        means[i]
    };
    Some((at(0.025), at(0.975)))
}

/// A small deterministic generator for the bootstrap (statistics, not secrets).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap_or(u64::MAX)).unwrap_or(0)
    }
}

fn count(verdicts: &[bool]) -> f64 {
    len(verdicts.iter().filter(|v| **v).count())
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts of statements and chunks are far below 2^52"
)]
fn len(n: usize) -> f64 {
    n as f64
}

/// Sentences of a text, for per-sentence judgments (groundedness, context recall): split after `.`, `!`
/// or `?` followed by whitespace, and at line breaks; empty pieces dropped.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        for (i, &(at, c)) in chars.iter().enumerate() {
            let next_is_space = chars.get(i + 1).is_none_or(|(_, n)| n.is_whitespace());
            if matches!(c, '.' | '!' | '?') && next_is_space {
                let end = at + c.len_utf8();
                push_trimmed(&mut out, &line[start..end]);
                start = end;
            }
        }
        push_trimmed(&mut out, &line[start..]);
    }
    out
}

fn push_trimmed(out: &mut Vec<String>, s: &str) {
    let s = s.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-4
    }

    #[test]
    fn average_precision_matches_the_worked_example() {
        // precision@3 = 1/3, precision@4 = 2/4; (1/3 + 1/2) / 2 = 0.41667.
        let v = [false, false, true, true, false];
        assert!(close(average_precision(&v).unwrap(), 0.4167));
        assert!(close(average_precision(&[true, true, false]).unwrap(), 1.0));
        assert!(close(average_precision(&[false, true]).unwrap(), 0.5));
        assert_eq!(average_precision(&[false, false]), Some(0.0));
        assert_eq!(average_precision(&[]), None);
    }

    #[test]
    fn ratios_are_null_without_statements_not_zero() {
        assert_eq!(ratio(&[]), None);
        assert_eq!(ratio(&[false]), Some(0.0));
        assert!(close(ratio(&[true, false, true]).unwrap(), 2.0 / 3.0));
    }

    #[test]
    fn groundedness_normalises_zero_to_three() {
        assert!(close(
            normalized_mean(&[3.0, 0.0, 3.0], 3.0).unwrap(),
            2.0 / 3.0
        ));
        assert!(close(normalized_mean(&[1.0], 3.0).unwrap(), 1.0 / 3.0));
        // Out-of-range ratings are clamped, never above 1.
        assert!(close(normalized_mean(&[9.0], 3.0).unwrap(), 1.0));
        assert_eq!(normalized_mean(&[], 3.0), None);
    }

    #[test]
    fn answer_relevancy_is_zero_when_noncommittal() {
        assert!(close(answer_relevancy(&[0.8, 0.6], false).unwrap(), 0.7));
        assert_eq!(answer_relevancy(&[0.8, 0.6], true), Some(0.0));
        assert_eq!(answer_relevancy(&[], false), None);
    }

    #[test]
    fn auc_counts_ties_as_half() {
        assert_eq!(auc(&[0.9, 0.8], &[0.1, 0.2]), Some(1.0));
        assert_eq!(auc(&[0.1], &[0.9]), Some(0.0));
        assert_eq!(auc(&[0.5], &[0.5]), Some(0.5));
        assert!(close(auc(&[0.9, 0.4], &[0.5]).unwrap(), 0.5));
        assert_eq!(auc(&[], &[0.5]), None);
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_reproducible() {
        let values: Vec<f64> = (0..50).map(|i| f64::from(i % 5) / 4.0).collect();
        let (lo, hi) = bootstrap_mean_ci(&values, 1000, 7).unwrap();
        let m = mean(&values);
        assert!(lo < m && m < hi, "{lo} {m} {hi}");
        assert!(hi - lo < 0.3);
        assert_eq!(bootstrap_mean_ci(&values, 1000, 7), Some((lo, hi)));
        // One value: no spread.
        assert_eq!(bootstrap_mean_ci(&[0.25], 100, 1), Some((0.25, 0.25)));
        assert_eq!(bootstrap_mean_ci(&[], 100, 1), None);
    }

    #[test]
    fn sentences_split_on_terminal_punctuation() {
        assert_eq!(
            sentences("Paris is in France. It has 2.1 million people!\nIs it big?  Yes"),
            [
                "Paris is in France.",
                "It has 2.1 million people!",
                "Is it big?",
                "Yes"
            ]
        );
        assert!(sentences("  \n ... ").is_empty());
    }
}
