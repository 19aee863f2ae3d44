//! The semantic cache's index: per proxy, the prompt vectors of stored answers, grouped by
//! the key of everything but the last user message (so only requests equal in all else are
//! ever compared), each pointing at the exact key its answer is stored under.
//!
//! How a lookup stays fast at 100,000 entries of one group (the worst case: one system
//! prompt, single-turn questions):
//!
//! - each vector is kept twice, compactly: its signs as bits (384 dimensions → 6 `u64`) and its
//!   values quantised to `i8` with one scale per vector (384 bytes): ~440 bytes an entry, 44 MB
//!   for 100,000;
//! - a group of up to [`EXACT_SCAN`] entries is scored exactly on the `i8` vectors;
//! - a larger group is first ranked by Hamming distance between sign bits (6 XOR + POPCNT per
//!   entry: 100,000 entries are 4.8 MB read once), and only the [`CANDIDATES`] nearest are
//!   scored on their `i8` vectors. Sign bits preserve angles (the fraction of differing bits
//!   estimates angle ÷ π), so a prompt at cosine 0.9 or more of the query (≤ 26° apart, ~55 of
//!   384 bits) ranks far ahead of unrelated ones (60° and more, ~128 bits).
//!
//! The similarity reported is the cosine on the quantised vectors (within ~0.005 of the
//! exact cosine).

use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};

use uuid::Uuid;

/// Groups up to this size are scanned exactly.
pub(crate) const EXACT_SCAN: usize = 1024;
/// How many Hamming-nearest entries of a large group are scored.
pub(crate) const CANDIDATES: usize = 64;
/// The most entries a node indexes per proxy (older ones expire; beyond it new ones are not
/// indexed until some do).
pub(crate) const MAX_PER_PROXY: usize = 200_000;

/// A vector as the index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Quantized {
    pub bits: Vec<u64>,
    pub values: Vec<i8>,
    /// `cos(a, b) = dot(a.values, b.values) × a.scale × b.scale`.
    pub scale: f32,
}

impl Quantized {
    /// Normalises and quantises `v`; `None` for an empty or zero vector.
    pub(crate) fn new(v: &[f32]) -> Option<Quantized> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if v.is_empty() || !norm.is_finite() || norm == 0.0 {
            return None;
        }
        let max = v.iter().fold(0.0f32, |m, x| m.max((x / norm).abs()));
        if max == 0.0 {
            return None;
        }
        let values: Vec<i8> = v
            .iter()
            .map(|x| (x / norm / max * 127.0).round().clamp(-127.0, 127.0) as i8)
            .collect();
        // The signs of the quantised values (what `from_bytes` sees too).
        let mut bits = vec![0u64; values.len().div_ceil(64)];
        for (i, x) in values.iter().enumerate() {
            if *x > 0 {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        // The quantised vector's own norm (so a vector's cosine with itself is 1).
        let qnorm = values
            .iter()
            .map(|x| f32::from(*x) * f32::from(*x))
            .sum::<f32>()
            .sqrt();
        Some(Quantized {
            bits,
            values,
            scale: 1.0 / qnorm,
        })
    }

    /// The stored form: the scale (f32, little-endian), then the values.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.values.len());
        out.extend_from_slice(&self.scale.to_le_bytes());
        out.extend(self.values.iter().map(|v| v.to_le_bytes()[0]));
        out
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Option<Quantized> {
        let (scale, values) = b.split_at_checked(4)?;
        let scale = f32::from_le_bytes(scale.try_into().ok()?);
        if values.is_empty() || !scale.is_finite() || scale <= 0.0 {
            return None;
        }
        let values: Vec<i8> = values.iter().map(|v| i8::from_le_bytes([*v])).collect();
        let mut bits = vec![0u64; values.len().div_ceil(64)];
        for (i, x) in values.iter().enumerate() {
            if *x > 0 {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        Some(Quantized {
            bits,
            values,
            scale,
        })
    }

    pub(crate) fn dim(&self) -> usize {
        self.values.len()
    }
}

fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

/// The entries of one group, column by column.
#[derive(Debug, Default)]
struct Group {
    dim: usize,
    words: usize,
    bits: Vec<u64>,
    values: Vec<i8>,
    scales: Vec<f32>,
    keys: Vec<Arc<str>>,
    expires: Vec<u64>,
    at: HashMap<Arc<str>, usize>,
}

impl Group {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn remove(&mut self, i: usize) {
        let last = self.len() - 1;
        self.at.remove(&self.keys[i]);
        if i != last {
            let (d, w) = (self.dim, self.words);
            self.bits.copy_within(last * w..(last + 1) * w, i * w);
            self.values.copy_within(last * d..(last + 1) * d, i * d);
            self.scales[i] = self.scales[last];
            self.keys.swap(i, last);
            self.expires[i] = self.expires[last];
            self.at.insert(Arc::clone(&self.keys[i]), i);
        }
        self.bits.truncate(last * self.words);
        self.values.truncate(last * self.dim);
        self.scales.truncate(last);
        self.keys.truncate(last);
        self.expires.truncate(last);
    }

    /// Drops expired entries; returns how many.
    fn sweep(&mut self, now_ms: u64) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.len() {
            if self.expires[i] <= now_ms {
                self.remove(i);
                removed += 1;
            } else {
                i += 1;
            }
        }
        removed
    }

    /// Adds (or renews) an entry; `false` when its dimension is not the group's.
    fn insert(&mut self, key: Arc<str>, q: &Quantized, expires_ms: u64) -> bool {
        if self.len() == 0 && self.dim == 0 {
            self.dim = q.dim();
            self.words = q.bits.len();
        }
        if q.dim() != self.dim {
            return false;
        }
        if let Some(&i) = self.at.get(&key) {
            self.expires[i] = self.expires[i].max(expires_ms);
            return true;
        }
        self.at.insert(Arc::clone(&key), self.len());
        self.bits.extend_from_slice(&q.bits);
        self.values.extend_from_slice(&q.values);
        self.scales.push(q.scale);
        self.keys.push(key);
        self.expires.push(expires_ms);
        true
    }

    /// The most similar live entry to `q`, with its similarity.
    fn best(&self, q: &Quantized, now_ms: u64) -> Option<(Arc<str>, f32)> {
        if q.dim() != self.dim || self.len() == 0 {
            return None;
        }
        let score = |i: usize| {
            let v = &self.values[i * self.dim..(i + 1) * self.dim];
            dot(&q.values, v) as f32 * q.scale * self.scales[i]
        };
        let mut best: Option<(usize, f32)> = None;
        let mut consider = |i: usize| {
            if self.expires[i] <= now_ms {
                return;
            }
            let s = score(i);
            if best.is_none_or(|(_, b)| s > b) {
                best = Some((i, s));
            }
        };
        if self.len() <= EXACT_SCAN {
            (0..self.len()).for_each(&mut consider);
        } else {
            // The CANDIDATES nearest by Hamming distance (a max-heap of the best so far).
            let mut heap: BinaryHeap<(u32, usize)> = BinaryHeap::with_capacity(CANDIDATES + 1);
            for (i, bits) in self.bits.chunks_exact(self.words).enumerate() {
                let d: u32 = bits
                    .iter()
                    .zip(&q.bits)
                    .map(|(a, b)| (a ^ b).count_ones())
                    .sum();
                if heap.len() < CANDIDATES {
                    heap.push((d, i));
                } else if heap.peek().is_some_and(|(top, _)| d < *top) {
                    heap.pop();
                    heap.push((d, i));
                }
            }
            heap.into_iter().for_each(|(_, i)| consider(i));
        }
        best.map(|(i, s)| (Arc::clone(&self.keys[i]), s.min(1.0)))
    }
}

#[derive(Debug, Default)]
struct ProxyIndex {
    groups: HashMap<String, Group>,
    len: usize,
    inserts: u64,
}

/// A node's semantic index, every proxy's.
#[derive(Debug, Default)]
pub(crate) struct SemanticIndex {
    proxies: RwLock<HashMap<Uuid, ProxyIndex>>,
}

impl SemanticIndex {
    /// The nearest live entry of `proxy`'s group `rest` to `q`: its exact key and similarity.
    pub(crate) fn nearest(
        &self,
        proxy: Uuid,
        rest: &str,
        q: &Quantized,
        now_ms: u64,
    ) -> Option<(Arc<str>, f32)> {
        let proxies = self
            .proxies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        proxies.get(&proxy)?.groups.get(rest)?.best(q, now_ms)
    }

    /// Indexes an entry (idempotent: a key already there has its expiry renewed). `false`
    /// when the proxy's index is full or the vector's dimension is not its group's.
    pub(crate) fn insert(
        &self,
        proxy: Uuid,
        rest: &str,
        key: Arc<str>,
        q: &Quantized,
        expires_ms: u64,
        now_ms: u64,
    ) -> bool {
        if expires_ms <= now_ms {
            return false;
        }
        let mut proxies = self
            .proxies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = proxies.entry(proxy).or_default();
        index.inserts += 1;
        if index.len >= MAX_PER_PROXY || index.inserts.is_multiple_of(4096) {
            let mut removed = 0;
            for g in index.groups.values_mut() {
                removed += g.sweep(now_ms);
            }
            index.groups.retain(|_, g| g.len() > 0);
            index.len -= removed;
        }
        if index.len >= MAX_PER_PROXY {
            return false;
        }
        let group = index.groups.entry(rest.to_owned()).or_default();
        let before = group.len();
        let ok = group.insert(key, q, expires_ms);
        index.len += group.len() - before;
        ok
    }

    /// Entries indexed for `proxy` (expired ones not yet swept included).
    #[cfg(test)]
    pub(crate) fn len(&self, proxy: Uuid) -> usize {
        self.proxies
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&proxy)
            .map_or(0, |p| p.len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_unit(rng: &mut impl Rng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    /// A unit vector at cosine `c` of unit vector `a`.
    fn at_cosine(rng: &mut impl Rng, a: &[f32], c: f32) -> Vec<f32> {
        let r = random_unit(rng, a.len());
        let along: f32 = r.iter().zip(a).map(|(x, y)| x * y).sum();
        let ortho: Vec<f32> = r.iter().zip(a).map(|(x, y)| x - along * y).collect();
        let n = ortho.iter().map(|x| x * x).sum::<f32>().sqrt();
        let s = (1.0 - c * c).sqrt();
        a.iter()
            .zip(&ortho)
            .map(|(x, o)| c * x + s * o / n)
            .collect()
    }

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn quantised_similarity_is_close_to_the_exact_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for c in [0.99f32, 0.95, 0.9, 0.7, 0.3, 0.0] {
            let a = random_unit(&mut rng, 384);
            let b = at_cosine(&mut rng, &a, c);
            assert!((cos(&a, &b) - c).abs() < 1e-4);
            let (qa, qb) = (Quantized::new(&a).unwrap(), Quantized::new(&b).unwrap());
            let q = dot(&qa.values, &qb.values) as f32 * qa.scale * qb.scale;
            assert!((q - c).abs() < 0.01, "{c}: {q}");
            let self_sim = dot(&qa.values, &qa.values) as f32 * qa.scale * qa.scale;
            assert!((self_sim - 1.0).abs() < 1e-5);
            assert_eq!(Quantized::from_bytes(&qa.to_bytes()).unwrap(), qa);
        }
        assert!(Quantized::new(&[0.0; 4]).is_none());
        assert!(Quantized::from_bytes(&[1, 2]).is_none());
    }

    #[test]
    fn only_the_same_group_is_compared_and_entries_expire() {
        let idx = SemanticIndex::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let (p, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let a = random_unit(&mut rng, 384);
        let qa = Quantized::new(&a).unwrap();
        assert!(idx.insert(p, "rest", Arc::from("k1"), &qa, 1_000, 0));
        assert!(
            idx.insert(p, "rest", Arc::from("k1"), &qa, 2_000, 0),
            "renewed"
        );
        assert_eq!(idx.len(p), 1);
        let near = Quantized::new(&at_cosine(&mut rng, &a, 0.96)).unwrap();
        let (k, s) = idx.nearest(p, "rest", &near, 10).unwrap();
        assert_eq!(&*k, "k1");
        assert!((s - 0.96).abs() < 0.01, "{s}");
        assert!(idx.nearest(p, "other-rest", &near, 10).is_none());
        assert!(idx.nearest(other, "rest", &near, 10).is_none());
        assert!(idx.nearest(p, "rest", &near, 2_000).is_none(), "expired");
        // Another dimension is not compared.
        let small = Quantized::new(&random_unit(&mut rng, 8)).unwrap();
        assert!(!idx.insert(p, "rest", Arc::from("k2"), &small, 3_000, 0));
        assert!(idx.nearest(p, "rest", &small, 10).is_none());
    }

    /// 100,000 entries in one group: the planted neighbour is found among decoys, and the
    /// lookup time is printed (run with `--release` to measure; the bound checked here is the
    /// debug build's).
    #[test]
    fn a_hundred_thousand_entries() {
        let idx = SemanticIndex::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = Uuid::from_u128(9);
        let n = 100_000;
        let mut planted = Vec::new();
        for i in 0..n {
            let v = random_unit(&mut rng, 384);
            let q = Quantized::new(&v).unwrap();
            assert!(idx.insert(p, "g", Arc::from(format!("k{i}")), &q, u64::MAX, 0));
            if i % 10_000 == 0 {
                planted.push((i, v));
            }
        }
        assert_eq!(idx.len(p), n);
        let mut worst = std::time::Duration::ZERO;
        for (i, v) in &planted {
            for c in [0.97f32, 0.9] {
                let q = Quantized::new(&at_cosine(&mut rng, v, c)).unwrap();
                let t = std::time::Instant::now();
                let (k, s) = idx.nearest(p, "g", &q, 1).unwrap();
                worst = worst.max(t.elapsed());
                assert_eq!(&*k, format!("k{i}").as_str(), "cosine {c}");
                assert!((s - c).abs() < 0.01, "{s} vs {c}");
            }
        }
        // An unrelated query finds only low similarities.
        let q = Quantized::new(&random_unit(&mut rng, 384)).unwrap();
        let (_, s) = idx.nearest(p, "g", &q, 1).unwrap();
        assert!(s < 0.5, "{s}");
        println!("semantic index: worst lookup over 100,000 entries: {worst:?}");
        assert!(
            worst < std::time::Duration::from_millis(if cfg!(debug_assertions) { 200 } else { 5 })
        );
    }
}
