//! The in-process vector index of the semantic tier: cosine search within one scope, bounded by entry
//! count (oldest evicted first), with a TTL per entry and a threshold per entry that can only go up
//! ([`Index::raise_threshold`]).
//!
//! Why hand-written: the HNSW crates (hnsw_rs, instant-distance) support neither deletion nor TTL,
//! and a scope (tenant + model + parameters + system prompt) holds few entries in practice, where an
//! exact scan is both faster and never misses a neighbour. Vectors are stored as `i8` (each component
//! of a unit vector × 127): 4× less memory than `f32` and a scan that stays in cache; the similarity
//! error is below 0.005, far under the gap between the thresholds that matter. Scopes larger than
//! `EXACT_SCAN_LIMIT` entries are shortlisted by sign sketches first (see there). docs/BENCHMARKS.md has the
//! lookup latency and the memory at 100,000 entries (`examples/semantic_lookup.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;
use std::time::Instant;

/// Scale of the `i8` quantisation.
const SCALE: f32 = 127.0;

/// Candidates returned by a search, best first.
const TOP_K: usize = 4;

/// Scopes up to this many entries are scanned exactly. Larger ones are first shortlisted by the
/// Hamming distance of one-bit sign sketches (`dims / 8` bytes per entry, ~10× less memory traffic
/// than the `i8` vectors); the shortlist gets the exact comparison. A near duplicate (cosine ≥ 0.8)
/// differs from the query in far fewer signs than unrelated entries, so it makes the shortlist; the
/// shortlist can only cost a missed hit, never a wrong one (the decision uses the exact similarity).
const EXACT_SCAN_LIMIT: usize = 4096;

/// Entries of a large scope compared exactly.
const SHORTLIST: usize = 256;

/// The sign sketch of `v`: bit `i` set when component `i` is positive.
fn sketch(v: &[f32], out: &mut [u64]) {
    out.fill(0);
    for (i, x) in v.iter().enumerate() {
        if *x > 0.0 {
            out[i / 64] |= 1 << (i % 64);
        }
    }
}

/// A scope: only entries of the same scope are compared.
pub type Scope = [u8; 32];

/// One search result.
#[derive(Debug, Clone)]
pub struct Candidate<P> {
    /// The entry's id (stable, never reused).
    pub id: u64,
    /// Cosine similarity to the query.
    pub similarity: f32,
    /// The entry's own threshold.
    pub threshold: f32,
    /// What the entry carries.
    pub payload: P,
}

struct Slot<P> {
    id: u64,
    scope: Scope,
    expires_at: Instant,
    threshold: f32,
    payload: P,
}

struct Inner<P> {
    vectors: Vec<i8>,
    /// One sign bit per dimension, per slot: the shortlist of large scopes.
    sketches: Vec<u64>,
    slots: Vec<Option<Slot<P>>>,
    free: Vec<u32>,
    /// Insertion order, for eviction: (slot, entry id).
    order: VecDeque<(u32, u64)>,
    scopes: HashMap<Scope, Vec<u32>>,
    next_id: u64,
    len: usize,
}

/// A bounded vector index.
pub struct Index<P> {
    dims: usize,
    max_entries: usize,
    inner: RwLock<Inner<P>>,
}

fn quantize(v: &[f32], out: &mut [i8]) {
    for (q, x) in out.iter_mut().zip(v) {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "clamped to the i8 range first"
        )]
        {
            *q = (x * SCALE).round().clamp(-SCALE, SCALE) as i8;
        }
    }
}

/// Lanes of the dot product: fixed-size chunks with independent accumulators, a shape the compiler
/// turns into SIMD multiply-adds even for the baseline x86-64 target (SSE2 `pmaddwd`).
const LANES: usize = 32;

fn dot(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0_i32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    acc.iter().sum::<i32>() + tail
}

impl<P: Clone> Index<P> {
    /// An index of `dims`-dimensional vectors holding at most `max_entries`.
    pub fn new(dims: usize, max_entries: usize) -> Self {
        Self {
            dims,
            max_entries: max_entries.max(1),
            inner: RwLock::new(Inner {
                vectors: Vec::new(),
                sketches: Vec::new(),
                slots: Vec::new(),
                free: Vec::new(),
                order: VecDeque::new(),
                scopes: HashMap::new(),
                next_id: 1,
                len: 0,
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<P>> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<P>> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Entries held (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.read().len
    }

    /// Whether the index holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of vectors and sketches held (the arenas, including free slots).
    pub fn vector_bytes(&self) -> usize {
        let inner = self.read();
        inner.vectors.len() + inner.sketches.len() * 8
    }

    /// Adds an entry (a unit vector of `dims` floats) and returns its id; evicts the oldest entries
    /// (expired first) when full. A vector of the wrong length is not added (`None`).
    pub fn insert(
        &self,
        scope: Scope,
        vector: &[f32],
        threshold: f32,
        expires_at: Instant,
        payload: P,
    ) -> Option<u64> {
        if vector.len() != self.dims {
            return None;
        }
        let now = Instant::now();
        let mut inner = self.write();
        let inner = &mut *inner;
        // Expired entries at the front go first, then the oldest when full.
        while let Some(&(slot, id)) = inner.order.front() {
            let live = inner.slots[slot as usize]
                .as_ref()
                .filter(|s| s.id == id)
                .map(|s| s.expires_at > now);
            match live {
                None => {
                    inner.order.pop_front();
                }
                Some(false) => {
                    inner.order.pop_front();
                    inner.remove(slot);
                }
                Some(true) if inner.len >= self.max_entries => {
                    inner.order.pop_front();
                    inner.remove(slot);
                }
                Some(true) => break,
            }
        }
        let slot = if let Some(slot) = inner.free.pop() {
            slot
        } else {
            let slot = u32::try_from(inner.slots.len()).ok()?;
            inner.slots.push(None);
            inner.vectors.resize(inner.vectors.len() + self.dims, 0);
            inner
                .sketches
                .resize(inner.sketches.len() + self.sketch_words(), 0);
            slot
        };
        let start = slot as usize * self.dims;
        quantize(vector, &mut inner.vectors[start..start + self.dims]);
        let words = self.sketch_words();
        let start = slot as usize * words;
        sketch(vector, &mut inner.sketches[start..start + words]);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.slots[slot as usize] = Some(Slot {
            id,
            scope,
            expires_at,
            threshold,
            payload,
        });
        inner.scopes.entry(scope).or_default().push(slot);
        inner.order.push_back((slot, id));
        inner.len += 1;
        Some(id)
    }

    /// The live entries of `scope` most similar to `query` (best first, at most a few), whose
    /// similarity is at least `floor`.
    pub fn search(&self, scope: &Scope, query: &[f32], floor: f32) -> Vec<Candidate<P>> {
        if query.len() != self.dims {
            return Vec::new();
        }
        let mut q = vec![0_i8; self.dims];
        quantize(query, &mut q);
        let now = Instant::now();
        let inner = self.read();
        let Some(slots) = inner.scopes.get(scope) else {
            return Vec::new();
        };
        let shortlist;
        let slots: &[u32] = if slots.len() > EXACT_SCAN_LIMIT {
            shortlist = self.shortlist(&inner, slots, query);
            &shortlist
        } else {
            slots
        };
        let mut best: Vec<(f32, u32)> = Vec::with_capacity(TOP_K + 1);
        for &slot in slots {
            let start = slot as usize * self.dims;
            #[expect(
                clippy::cast_precision_loss,
                reason = "at most 127² × dims, exact in f32"
            )]
            let similarity =
                dot(&q, &inner.vectors[start..start + self.dims]) as f32 / (SCALE * SCALE);
            if similarity < floor || (best.len() == TOP_K && similarity <= best[TOP_K - 1].0) {
                continue;
            }
            if inner.slots[slot as usize]
                .as_ref()
                .is_none_or(|s| s.expires_at <= now)
            {
                continue;
            }
            let at = best.partition_point(|(s, _)| *s >= similarity);
            best.insert(at, (similarity, slot));
            best.truncate(TOP_K);
        }
        best.into_iter()
            .filter_map(|(similarity, slot)| {
                let s = inner.slots[slot as usize].as_ref()?;
                (s.expires_at > now).then(|| Candidate {
                    id: s.id,
                    similarity: similarity.min(1.0),
                    threshold: s.threshold,
                    payload: s.payload.clone(),
                })
            })
            .collect()
    }

    /// The `SHORTLIST` slots whose sign sketches are nearest (Hamming) to the query's: the candidates
    /// of a large scope that get the exact `i8` comparison.
    fn shortlist(&self, inner: &Inner<P>, slots: &[u32], query: &[f32]) -> Vec<u32> {
        let words = self.sketch_words();
        let mut q = vec![0_u64; words];
        sketch(query, &mut q);
        let mut heap: std::collections::BinaryHeap<(u32, u32)> =
            std::collections::BinaryHeap::with_capacity(SHORTLIST + 1);
        for &slot in slots {
            let start = slot as usize * words;
            let distance: u32 = inner.sketches[start..start + words]
                .iter()
                .zip(&q)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            if heap.len() < SHORTLIST {
                heap.push((distance, slot));
            } else if heap.peek().is_some_and(|(worst, _)| distance < *worst) {
                heap.pop();
                heap.push((distance, slot));
            }
        }
        heap.into_iter().map(|(_, slot)| slot).collect()
    }

    fn sketch_words(&self) -> usize {
        self.dims.div_ceil(64)
    }

    /// Raises entry `id`'s threshold to at least `threshold` (capped at 1); false when it is gone.
    pub fn raise_threshold(&self, id: u64, threshold: f32) -> bool {
        let mut inner = self.write();
        let found = inner.slots.iter_mut().flatten().find(|s| s.id == id);
        match found {
            Some(slot) => {
                slot.threshold = slot.threshold.max(threshold.min(1.0));
                true
            }
            None => false,
        }
    }

    /// Removes every entry whose payload matches; returns how many.
    pub fn remove_if(&self, mut matches: impl FnMut(&P) -> bool) -> usize {
        let mut inner = self.write();
        let doomed: Vec<u32> = inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                matches(&s.payload).then(|| u32::try_from(i).ok())?
            })
            .collect();
        for slot in &doomed {
            inner.remove(*slot);
        }
        doomed.len()
    }
}

impl<P> Inner<P> {
    fn remove(&mut self, slot: u32) {
        let Some(old) = self.slots[slot as usize].take() else {
            return;
        };
        if let Some(list) = self.scopes.get_mut(&old.scope) {
            if let Some(at) = list.iter().position(|s| *s == slot) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                self.scopes.remove(&old.scope);
            }
        }
        self.free.push(slot);
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::embed::normalize;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        normalize(&mut v);
        v
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_mins(1)
    }

    #[test]
    fn dot_matches_the_plain_sum_for_any_length() {
        for len in [0, 1, 31, 32, 33, 384, 1536] {
            let a: Vec<i8> = (0..len).map(|i| ((i * 37) % 255) as i8).collect();
            let b: Vec<i8> = (0..len).map(|i| ((i * 91) % 251) as i8).collect();
            let plain: i32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            assert_eq!(dot(&a, &b), plain, "length {len}");
        }
    }

    #[test]
    fn finds_the_nearest_in_its_scope_only() {
        let index = Index::new(3, 10);
        index.insert([1; 32], &unit(&[1.0, 0.0, 0.0]), 0.9, later(), "x");
        index.insert([1; 32], &unit(&[0.0, 1.0, 0.0]), 0.9, later(), "y");
        index.insert(
            [2; 32],
            &unit(&[1.0, 0.1, 0.0]),
            0.9,
            later(),
            "other scope",
        );
        let found = index.search(&[1; 32], &unit(&[1.0, 0.2, 0.0]), 0.5);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].payload, "x");
        assert!(
            (found[0].similarity - 0.98).abs() < 0.01,
            "{}",
            found[0].similarity
        );
        assert!(
            index
                .search(&[3; 32], &unit(&[1.0, 0.0, 0.0]), 0.0)
                .is_empty()
        );
    }

    #[test]
    fn bounded_oldest_evicted_and_expired_skipped() {
        let index = Index::new(2, 2);
        let v = unit(&[1.0, 1.0]);
        index.insert([0; 32], &v, 0.9, later(), 1);
        index.insert([0; 32], &v, 0.9, later(), 2);
        index.insert([0; 32], &v, 0.9, later(), 3);
        assert_eq!(index.len(), 2);
        let mut got: Vec<i32> = index
            .search(&[0; 32], &v, 0.0)
            .into_iter()
            .map(|c| c.payload)
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(index.vector_bytes(), 2 * (2 + 8), "slots are reused");
        let past = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        index.insert([9; 32], &v, 0.9, past, 4);
        assert!(index.search(&[9; 32], &v, 0.0).is_empty());
    }

    /// A deterministic pseudo-random unit vector.
    fn noise(seed: u64, dims: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..dims)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                f32::from(u16::try_from(x % 2001).unwrap()) / 1000.0 - 1.0
            })
            .collect();
        unit(&v)
    }

    #[test]
    fn a_large_scope_still_finds_near_duplicates_through_the_shortlist() {
        let dims = 384;
        let index = Index::new(dims, 20_000);
        for i in 0..(EXACT_SCAN_LIMIT as u64 * 3) {
            index.insert([0; 32], &noise(i, dims), 0.9, later(), i);
        }
        for target in [5_u64, 777, 12_000] {
            // The stored vector plus noise: cosine about 0.85 to 0.9.
            let query: Vec<f32> = noise(target, dims)
                .iter()
                .zip(noise(target + 1_000_000, dims))
                .map(|(a, b)| a + 0.5 * b)
                .collect();
            let query = unit(&query);
            let found = index.search(&[0; 32], &query, 0.0);
            assert_eq!(found[0].payload, target, "{:?}", found[0].similarity);
            assert!(found[0].similarity > 0.8, "{}", found[0].similarity);
        }
    }

    #[test]
    fn thresholds_only_rise_and_removal_by_payload() {
        let index = Index::new(2, 4);
        let v = unit(&[0.3, 1.0]);
        let id = index.insert([0; 32], &v, 0.9, later(), "a").unwrap();
        index.insert([0; 32], &v, 0.9, later(), "b");
        assert!(index.raise_threshold(id, 0.95));
        assert!(index.raise_threshold(id, 0.5));
        let found = index.search(&[0; 32], &v, 0.0);
        let a = found.iter().find(|c| c.payload == "a").unwrap();
        assert!((a.threshold - 0.95).abs() < 1e-6);
        assert_eq!(index.remove_if(|p| *p == "a"), 1);
        assert!(!index.raise_threshold(id, 0.99));
        assert_eq!(index.len(), 1);
        assert!(index.insert([0; 32], &[1.0], 0.9, later(), "bad").is_none());
    }
}
