//! A deterministic stand-in embedder: each lower-cased word and each character trigram of a word is
//! hashed (FNV-1a) into one of `dims` buckets with a hashed sign, then the vector is normalised.
//! Texts that share words score high, whatever they mean: it is for tests and CI, where a real model
//! is not available, and as a baseline in the cache evaluation.

use futures_util::future::BoxFuture;

use super::{EmbedError, Embedder, normalize};

/// Feature-hashing embedder.
pub struct HashingEmbedder {
    dims: usize,
    id: String,
}

impl HashingEmbedder {
    /// An embedder of `dims` dimensions (at least 1).
    pub fn new(dims: usize) -> Self {
        let dims = dims.max(1);
        Self {
            dims,
            id: format!("hashing-{dims}"),
        }
    }

    /// The vector of one text.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0_f32; self.dims];
        let lower = text.to_lowercase();
        for word in lower
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            self.add(&mut v, word.as_bytes(), 1.0);
            let chars: Vec<char> = format!("#{word}#").chars().collect();
            for gram in chars.windows(3) {
                let gram: String = gram.iter().collect();
                self.add(&mut v, gram.as_bytes(), 0.5);
            }
        }
        normalize(&mut v);
        v
    }

    fn add(&self, v: &mut [f32], feature: &[u8], weight: f32) {
        let h = fnv1a(feature);
        let bucket = usize::try_from(h % (self.dims as u64)).unwrap_or(0);
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[bucket] += sign * weight;
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Embedder for HashingEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        let out = texts.iter().map(|t| self.vector(t)).collect();
        Box::pin(std::future::ready(Ok(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::cosine;

    #[test]
    fn same_text_same_vector_and_overlap_scores_higher() {
        let e = HashingEmbedder::new(256);
        let a = e.vector("What is the capital of Austria?");
        assert!((cosine(&a, &e.vector("what is the capital of austria")) - 1.0).abs() < 1e-5);
        let near = cosine(&a, &e.vector("What's the capital city of Austria?"));
        let far = cosine(&a, &e.vector("How do I reverse a list in Python?"));
        assert!(near > far + 0.3, "near {near} far {far}");
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }
}
