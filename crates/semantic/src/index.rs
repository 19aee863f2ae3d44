//! [`TopicIndex`]: topic scoring over utterance vectors, and [`EmbeddingCache`]:
//! utterance vectors kept across index rebuilds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::encoder::{Encoder, dot_unrolled, l2_normalize};
use crate::error::IndexError;
use crate::scoring::{Scoring, TopN};
use crate::simd::simd;

/// Utterances encoded per [`Encoder::encode_batch`] call while building.
const BUILD_BATCH: usize = 64;

/// One topic's utterance vectors: unit-norm rows in one contiguous block.
///
/// Held behind an [`Arc`], so one block can serve several indexes: a gateway node encodes a
/// library topic used by a dozen proxies once and shares the block among their indexes
/// ([`TopicIndexBuilder::add_shared_topic`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicVectors {
    dim: usize,
    data: Vec<f32>,
}

impl TopicVectors {
    /// Copies `vectors` (each normalised to unit length) into one block.
    ///
    /// # Errors
    /// [`IndexError::DimensionMismatch`] or [`IndexError::NonFinite`].
    pub fn new<'v, V>(
        dim: usize,
        vectors: impl IntoIterator<Item = &'v V>,
    ) -> Result<Self, IndexError>
    where
        V: AsRef<[f32]> + ?Sized + 'v,
    {
        let mut data = Vec::new();
        for v in vectors {
            let v = v.as_ref();
            check_vector(dim, v)?;
            let start = data.len();
            data.extend_from_slice(v);
            l2_normalize(&mut data[start..]);
        }
        Ok(TopicVectors { dim, data })
    }

    /// Number of vectors.
    #[must_use]
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    /// Whether the block holds no vector.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Vector dimension.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes held by the vectors.
    #[must_use]
    pub fn memory_bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// The `i`-th vector, if there is one.
    #[must_use]
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        let dim = self.dim.max(1);
        self.data.get(i * dim..(i + 1) * dim)
    }

    fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim.max(1))
    }
}

/// A set of topics, each described by example utterances, scored against a
/// query vector by cosine similarity.
///
/// A topic's score combines the query's similarities with the topic's utterances by the
/// index's [`Scoring`] rule: [`Scoring::Nearest`] (the nearest example) by default, or the
/// mean of the nearest few ([`Scoring::NearestMean`], semantic routing's default). Either way
/// adding an utterance never lowers its topic's score.
///
/// # Layout and cost
/// Each topic's vectors live in one row-major block (`utterances × dim`), so a query is
/// scored in one sequential pass over memory: `O(utterances × dim)` multiply-adds, compiled
/// for the widest vector instructions of the CPU, plus an `O(topics log topics)` sort in
/// [`TopicIndex::score`]. 12,000 utterances of 384 dimensions are about 4.6M multiply-adds,
/// well under a millisecond here: negligible next to encoding the query with MiniLM.
/// (Beyond ~10⁵ utterances an approximate index would be worth it; routing configurations
/// are far smaller.)
///
/// An index is immutable once built; build a new one per configuration snapshot (cheaply,
/// with an [`EmbeddingCache`], sharing [`TopicVectors`] blocks) and swap it in.
#[derive(Debug, Clone)]
pub struct TopicIndex {
    dim: usize,
    labels: Vec<String>,
    topics: Vec<Arc<TopicVectors>>,
    scoring: Scoring,
    /// How much of the best competing topic's score is subtracted from each topic's.
    contrast: f32,
    /// `groups[t]`: the group (route) of topic `t`; topics of one group do not compete.
    groups: Vec<usize>,
}

/// One topic's score for a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopicScore<'a> {
    /// Position of the topic in the index (the order topics were added).
    pub topic: usize,
    /// The topic's label.
    pub label: &'a str,
    /// The topic's score by the index's [`Scoring`] rule: a cosine similarity (or a mean
    /// of some, less a penalty), at most 1.
    pub score: f32,
}

/// Every topic's score for one query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicScores<'a> {
    ranked: Vec<TopicScore<'a>>,
}

impl<'a> TopicScores<'a> {
    /// All topics, highest score first (ties keep insertion order).
    #[must_use]
    pub fn ranked(&self) -> &[TopicScore<'a>] {
        &self.ranked
    }

    /// The best-scoring topic, if the index has any.
    #[must_use]
    pub fn best(&self) -> Option<TopicScore<'a>> {
        self.ranked.first().copied()
    }

    /// The best topic if its score reaches `threshold`; `None` means "out of
    /// scope": fall back to the default route.
    #[must_use]
    pub fn best_above(&self, threshold: f32) -> Option<TopicScore<'a>> {
        self.best().filter(|s| s.score >= threshold)
    }
}

impl TopicIndex {
    /// Starts an index of `dim`-dimensional vectors, to be filled with
    /// pre-computed vectors. It scores with [`Scoring::Nearest`] unless
    /// [`TopicIndex::with_scoring`] says otherwise.
    #[must_use]
    pub fn builder(dim: usize) -> TopicIndexBuilder {
        TopicIndexBuilder {
            index: TopicIndex {
                dim,
                labels: Vec::new(),
                topics: Vec::new(),
                scoring: Scoring::Nearest,
                contrast: 0.0,
                groups: Vec::new(),
            },
            seen: HashSet::new(),
        }
    }

    /// Encodes every topic's utterances with `encoder` and builds the index.
    ///
    /// This blocks for as long as encoding takes (MiniLM: a few ms per
    /// utterance); from async code run it in `tokio::task::spawn_blocking`.
    ///
    /// `topics` yields `(label, utterances)` pairs, e.g.
    /// `[("billing", vec!["refund my card", "why was I charged twice"])]`.
    ///
    /// # Errors
    /// [`IndexError::EmptyTopic`], [`IndexError::DuplicateTopic`] or an
    /// encoder failure.
    pub fn encode<L, I, U>(
        encoder: &dyn Encoder,
        topics: impl IntoIterator<Item = (L, I)>,
    ) -> Result<Self, IndexError>
    where
        L: Into<String>,
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let mut cache = EmbeddingCache::for_encoder(encoder);
        Self::encode_cached(encoder, topics, &mut cache)
    }

    /// Like [`TopicIndex::encode`], but takes utterance vectors from `cache`
    /// when present and adds the ones it computes, so rebuilding an index for
    /// a new configuration snapshot only encodes new utterances.
    ///
    /// # Errors
    /// As [`TopicIndex::encode`], plus [`IndexError::CacheEncoderMismatch`] if
    /// `cache` was made for another encoder.
    pub fn encode_cached<L, I, U>(
        encoder: &dyn Encoder,
        topics: impl IntoIterator<Item = (L, I)>,
        cache: &mut EmbeddingCache,
    ) -> Result<Self, IndexError>
    where
        L: Into<String>,
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let topics: Vec<(String, Vec<U>)> = topics
            .into_iter()
            .map(|(label, utterances)| (label.into(), utterances.into_iter().collect()))
            .collect();
        cache.encode_missing(
            encoder,
            topics.iter().flat_map(|(_, u)| u.iter().map(AsRef::as_ref)),
        )?;
        let mut builder = Self::builder(encoder.dim());
        for (label, utterances) in &topics {
            let block = TopicVectors::from_cache(encoder.dim(), utterances, cache)?;
            builder.add_shared_topic(label.clone(), Arc::new(block))?;
        }
        Ok(builder.build())
    }

    /// The same index scoring by `scoring`.
    #[must_use]
    pub fn with_scoring(mut self, scoring: Scoring) -> Self {
        self.scoring = scoring;
        self
    }

    /// The same index with topics grouped: `groups[t]` is the group (e.g. the route) of
    /// topic `t`; missing entries make a topic its own group. Topics of one group do not
    /// compete in [`TopicIndex::with_contrast`] and do not stand for out-of-scope prompts
    /// for each other in [`TopicIndex::calibrate`].
    #[must_use]
    pub fn with_groups(mut self, groups: &[usize]) -> Self {
        self.groups = groups.to_vec();
        self
    }

    /// The same index, each topic's score lowered by `contrast` times the best score of the
    /// topics of other groups. Adding an utterance to a topic still never lowers that topic's
    /// score (only the others' subtracted part can grow).
    #[must_use]
    pub fn with_contrast(mut self, contrast: f32) -> Self {
        self.contrast = contrast;
        self
    }

    /// What [`TopicIndex::with_contrast`] set (0 by default).
    #[must_use]
    pub fn contrast(&self) -> f32 {
        self.contrast
    }

    /// The group of topic `t` (see [`TopicIndex::with_groups`]).
    pub(crate) fn group(&self, t: usize) -> usize {
        self.groups.get(t).copied().unwrap_or(usize::MAX - t)
    }

    /// The rule this index scores by.
    #[must_use]
    pub fn scoring(&self) -> Scoring {
        self.scoring
    }

    /// Vector dimension.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of topics.
    #[must_use]
    pub fn topic_count(&self) -> usize {
        self.labels.len()
    }

    /// Number of utterance vectors over all topics.
    #[must_use]
    pub fn utterance_count(&self) -> usize {
        self.topics.iter().map(|t| t.len()).sum()
    }

    /// Topic labels in index order.
    #[must_use]
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The vector blocks of the topics, in index order.
    #[must_use]
    pub fn topic_vectors(&self) -> &[Arc<TopicVectors>] {
        &self.topics
    }

    /// Scores every topic against `query` (normalised here, so any non-zero
    /// vector works; a zero vector scores 0 everywhere).
    ///
    /// # Errors
    /// [`IndexError::DimensionMismatch`] if `query.len() != dim`,
    /// [`IndexError::NonFinite`] if it holds NaN or infinity.
    pub fn score(&self, query: &[f32]) -> Result<TopicScores<'_>, IndexError> {
        let mut ranked = self.raw_scores(query)?;
        // Stable sort: equal scores keep insertion order.
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score));
        Ok(TopicScores { ranked })
    }

    /// The best topic for `query` without sorting the rest; `None` if the
    /// index is empty. Same errors as [`TopicIndex::score`].
    ///
    /// # Errors
    /// See [`TopicIndex::score`].
    pub fn best(&self, query: &[f32]) -> Result<Option<TopicScore<'_>>, IndexError> {
        let scores = self.raw_scores(query)?;
        Ok(scores
            .into_iter()
            .reduce(|best, s| if s.score > best.score { s } else { best }))
    }

    fn raw_scores(&self, query: &[f32]) -> Result<Vec<TopicScore<'_>>, IndexError> {
        check_vector(self.dim, query)?;
        let mut q = query.to_vec();
        l2_normalize(&mut q);
        let scores = self.topic_scores(&q, None);
        Ok(self
            .labels
            .iter()
            .zip(scores)
            .enumerate()
            .map(|(topic, (label, score))| TopicScore {
                topic,
                label,
                score: score.unwrap_or(f32::NEG_INFINITY),
            })
            .collect())
    }

    /// Every topic's score for the unit vector `q` by the index's rule, leaving out the row
    /// `skip` = `(topic, row)` and, in that topic, rows identical to `q` (its duplicates);
    /// `None` for a topic left without rows.
    pub(crate) fn topic_scores(&self, q: &[f32], skip: Option<(usize, usize)>) -> Vec<Option<f32>> {
        let raw = self.own_scores(q, skip);
        self.contrasted(&raw, |_| false)
    }

    /// `raw` scores with the contrast applied, as if the topics for which `removed` holds
    /// were not in the index (they get `None`).
    pub(crate) fn contrasted(
        &self,
        raw: &[Option<f32>],
        removed: impl Fn(usize) -> bool,
    ) -> Vec<Option<f32>> {
        (0..raw.len())
            .map(|t| {
                if removed(t) {
                    return None;
                }
                let own = raw[t]?;
                if self.contrast == 0.0 {
                    return Some(own);
                }
                let other = (0..raw.len())
                    .filter(|u| !removed(*u) && self.group(*u) != self.group(t))
                    .filter_map(|u| raw[u])
                    .reduce(f32::max);
                Some(match other {
                    Some(o) => own - self.contrast * o,
                    None => own,
                })
            })
            .collect()
    }

    pub(crate) fn own_scores(&self, q: &[f32], skip: Option<(usize, usize)>) -> Vec<Option<f32>> {
        let Scoring::Neighbours { k } = self.scoring else {
            return self
                .nearest(q, skip)
                .iter()
                .map(|top| {
                    let s = top.as_slice();
                    (!s.is_empty()).then(|| self.scoring.combine(s))
                })
                .collect();
        };
        let k = k.clamp(1, MAX_NEIGHBOURS);
        // The k nearest rows of the whole index, as (similarity, topic), best first.
        let mut nearest: Vec<(f32, usize)> = Vec::with_capacity(k + 1);
        let mut rows_left = vec![0usize; self.topics.len()];
        simd(|| {
            for (t, block) in self.topics.iter().enumerate() {
                let skip_row = skip.filter(|(st, _)| *st == t).map(|(_, r)| r);
                for (r, row) in block.rows().enumerate() {
                    let s = dot_unrolled(row, q);
                    if let Some(own) = skip_row
                        && (r == own || s >= DUPLICATE_SIMILARITY)
                    {
                        continue;
                    }
                    rows_left[t] += 1;
                    if nearest.len() == k && nearest.last().is_some_and(|l| s <= l.0) {
                        continue;
                    }
                    let at = nearest.partition_point(|x| x.0 >= s);
                    nearest.insert(at, (s, t));
                    nearest.truncate(k);
                }
            }
        });
        let mut sums = vec![0.0_f32; self.topics.len()];
        for (s, t) in nearest {
            sums[t] += s.max(0.0);
        }
        sums.into_iter()
            .zip(rows_left)
            .map(|(sum, n)| (n > 0).then_some(sum / k as f32))
            .collect()
    }

    /// Every topic's nearest similarities to the unit vector `q`, leaving out the row
    /// `skip` = `(topic, row)` and, in that topic, rows identical to `q` (its duplicates).
    fn nearest(&self, q: &[f32], skip: Option<(usize, usize)>) -> Vec<TopN> {
        let depth = self.scoring.depth();
        simd(|| {
            self.topics
                .iter()
                .enumerate()
                .map(|(t, block)| {
                    let mut top = TopN::new(depth);
                    let skip_row = skip.filter(|(st, _)| *st == t).map(|(_, r)| r);
                    for (r, row) in block.rows().enumerate() {
                        let s = dot_unrolled(row, q);
                        if let Some(own) = skip_row
                            && (r == own || s >= DUPLICATE_SIMILARITY)
                        {
                            continue;
                        }
                        top.push(s);
                    }
                    top
                })
                .collect()
        })
    }
}

/// The most neighbours [`Scoring::Neighbours`] takes.
const MAX_NEIGHBOURS: usize = 64;

/// Two unit vectors at least this similar are the same utterance (up to rounding).
const DUPLICATE_SIMILARITY: f32 = 0.999_99;

/// Fills a [`TopicIndex`] with pre-computed vectors; see [`TopicIndex::builder`].
#[derive(Debug)]
pub struct TopicIndexBuilder {
    index: TopicIndex,
    seen: HashSet<String>,
}

impl TopicIndexBuilder {
    /// Adds a topic with its utterance vectors (normalised on the way in).
    ///
    /// # Errors
    /// [`IndexError::DuplicateTopic`], [`IndexError::EmptyTopic`],
    /// [`IndexError::DimensionMismatch`] or [`IndexError::NonFinite`]; the
    /// builder is unchanged on error.
    pub fn add_topic<'v, V>(
        &mut self,
        label: impl Into<String>,
        vectors: impl IntoIterator<Item = &'v V>,
    ) -> Result<&mut Self, IndexError>
    where
        V: AsRef<[f32]> + ?Sized + 'v,
    {
        let block = TopicVectors::new(self.index.dim, vectors)?;
        self.add_shared_topic(label, Arc::new(block))
    }

    /// Adds a topic whose vectors are `block`, shared with whoever else holds it (e.g. the
    /// indexes of other proxies using the same library topic).
    ///
    /// # Errors
    /// [`IndexError::DuplicateTopic`], [`IndexError::EmptyTopic`] or
    /// [`IndexError::DimensionMismatch`] (the block's dimension is not the index's); the
    /// builder is unchanged on error.
    pub fn add_shared_topic(
        &mut self,
        label: impl Into<String>,
        block: Arc<TopicVectors>,
    ) -> Result<&mut Self, IndexError> {
        let label = label.into();
        if self.seen.contains(&label) {
            return Err(IndexError::DuplicateTopic { label });
        }
        if block.dim != self.index.dim {
            return Err(IndexError::DimensionMismatch {
                expected: self.index.dim,
                got: block.dim,
            });
        }
        if block.is_empty() {
            return Err(IndexError::EmptyTopic { label });
        }
        self.seen.insert(label.clone());
        self.index.labels.push(label);
        self.index.topics.push(block);
        Ok(self)
    }

    /// Finishes the index.
    #[must_use]
    pub fn build(self) -> TopicIndex {
        self.index
    }
}

impl TopicVectors {
    /// Encodes `utterances` (those `cache` does not hold yet, in batches) and copies their
    /// vectors into a block, in order.
    ///
    /// # Errors
    /// An encoder failure, [`IndexError::CacheEncoderMismatch`] if `cache` was made for
    /// another encoder.
    pub fn encode_cached<U: AsRef<str>>(
        encoder: &dyn Encoder,
        utterances: &[U],
        cache: &mut EmbeddingCache,
    ) -> Result<Self, IndexError> {
        cache.encode_missing(encoder, utterances.iter().map(AsRef::as_ref))?;
        Self::from_cache(encoder.dim(), utterances, cache)
    }

    /// The block of `utterances`' vectors, all of which `cache` must hold.
    fn from_cache<U: AsRef<str>>(
        dim: usize,
        utterances: &[U],
        cache: &EmbeddingCache,
    ) -> Result<Self, IndexError> {
        // A miss would be a bug, reported as a dimension error rather than a panic.
        let rows: Vec<&[f32]> = utterances
            .iter()
            .map(|u| cache.get(u.as_ref()).unwrap_or(&[]))
            .collect();
        TopicVectors::new(dim, rows)
    }
}

fn check_vector(dim: usize, v: &[f32]) -> Result<(), IndexError> {
    if v.len() != dim {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::NonFinite);
    }
    Ok(())
}

/// Utterance vectors keyed by exact utterance text, for one encoder.
///
/// Keep one per encoder across configuration snapshots and pass it to
/// [`TopicIndex::encode_cached`]: a snapshot that changes one route's
/// utterances then encodes only those. Call [`EmbeddingCache::retain_texts`]
/// with the current snapshot's utterances to drop the ones no longer used.
/// Not synchronised: wrap it in a `Mutex` to share it.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    encoder: String,
    dim: usize,
    map: HashMap<String, Vec<f32>>,
}

impl EmbeddingCache {
    /// An empty cache for vectors of encoder `encoder_name` with `dim` components.
    #[must_use]
    pub fn new(encoder_name: impl Into<String>, dim: usize) -> Self {
        Self {
            encoder: encoder_name.into(),
            dim,
            map: HashMap::new(),
        }
    }

    /// An empty cache for `encoder`'s vectors.
    #[must_use]
    pub fn for_encoder(encoder: &dyn Encoder) -> Self {
        Self::new(encoder.name(), encoder.dim())
    }

    /// Name of the encoder whose vectors this cache holds.
    #[must_use]
    pub fn encoder_name(&self) -> &str {
        &self.encoder
    }

    /// Vector dimension.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The cached vector of `text`, if any.
    #[must_use]
    pub fn get(&self, text: &str) -> Option<&[f32]> {
        self.map.get(text).map(Vec::as_slice)
    }

    /// Stores the vector of `text` (e.g. loaded from disk).
    ///
    /// # Errors
    /// [`IndexError::DimensionMismatch`] or [`IndexError::NonFinite`].
    pub fn insert(&mut self, text: String, vector: Vec<f32>) -> Result<(), IndexError> {
        check_vector(self.dim, &vector)?;
        self.map.insert(text, vector);
        Ok(())
    }

    /// Number of cached utterances.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All cached `(text, vector)` pairs, in no particular order (e.g. to
    /// persist them beside a snapshot cache and [`EmbeddingCache::insert`]
    /// them back at start-up).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.map.iter().map(|(t, v)| (t.as_str(), v.as_slice()))
    }

    /// Keeps only the given texts (e.g. the utterances of the current
    /// snapshot), dropping everything else.
    pub fn retain_texts<T: AsRef<str>>(&mut self, keep: impl IntoIterator<Item = T>) {
        let keep: HashSet<String> = keep.into_iter().map(|t| t.as_ref().to_owned()).collect();
        self.map.retain(|text, _| keep.contains(text));
    }

    /// Encodes the `texts` this cache does not hold yet with `encoder` (in batches, each
    /// distinct text once) and stores their vectors.
    ///
    /// # Errors
    /// An encoder failure, or [`IndexError::CacheEncoderMismatch`] if this cache was made
    /// for another encoder.
    pub fn encode_missing<'t>(
        &mut self,
        encoder: &dyn Encoder,
        texts: impl IntoIterator<Item = &'t str>,
    ) -> Result<usize, IndexError> {
        self.check_encoder(encoder)?;
        let mut missing: Vec<&str> = Vec::new();
        let mut queued: HashSet<&str> = HashSet::new();
        for t in texts {
            if self.get(t).is_none() && queued.insert(t) {
                missing.push(t);
            }
        }
        for chunk in missing.chunks(BUILD_BATCH) {
            let vectors = encoder.encode_batch(chunk)?;
            for (text, v) in chunk.iter().zip(vectors) {
                self.insert((*text).to_owned(), v)?;
            }
        }
        Ok(missing.len())
    }

    fn check_encoder(&self, encoder: &dyn Encoder) -> Result<(), IndexError> {
        if self.encoder != encoder.name() {
            return Err(IndexError::CacheEncoderMismatch {
                cache: self.encoder.clone(),
                encoder: encoder.name().to_owned(),
            });
        }
        if self.dim != encoder.dim() {
            return Err(IndexError::DimensionMismatch {
                expected: self.dim,
                got: encoder.dim(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EncodeError;
    use crate::testing::FakeEncoder;

    fn hand_made() -> TopicIndex {
        let mut b = TopicIndex::builder(3);
        b.add_topic("x", &[vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]])
            .unwrap()
            .add_topic("z", [&[0.0_f32, 0.0, 2.0][..]])
            .unwrap()
            .add_topic("xz", &[vec![1.0, 0.0, 1.0]])
            .unwrap();
        b.build()
    }

    #[test]
    fn topic_score_is_max_cosine_over_its_utterances() {
        let index = hand_made();
        assert_eq!(index.topic_count(), 3);
        assert_eq!(index.utterance_count(), 4);
        let scores = index.score(&[0.0, 1.0, 0.0]).unwrap();
        let by_label = |l: &str| scores.ranked().iter().find(|s| s.label == l).unwrap().score;
        assert!((by_label("x") - 1.0).abs() < 1e-6);
        assert!(by_label("z").abs() < 1e-6);
        assert!(by_label("xz").abs() < 1e-6);
        assert_eq!(scores.best().unwrap().label, "x");

        // Query not normalised: scores are cosines all the same.
        let scores = index.score(&[0.0, 0.0, 5.0]).unwrap();
        let ranked: Vec<_> = scores.ranked().iter().map(|s| (s.label, s.score)).collect();
        assert_eq!(ranked[0].0, "z");
        assert!((ranked[0].1 - 1.0).abs() < 1e-6);
        assert_eq!(ranked[1].0, "xz");
        assert!((ranked[1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(ranked[2].0, "x");
        assert_eq!(scores.ranked()[0].topic, 1);
    }

    #[test]
    fn ranking_is_sorted_and_best_agrees_with_score() {
        let index = hand_made();
        for q in [
            [1.0, 0.2, 0.9],
            [0.3, 1.0, 0.1],
            [-1.0, -1.0, -1.0],
            [0.5, 0.0, 0.6],
        ] {
            let scores = index.score(&q).unwrap();
            let s: Vec<f32> = scores.ranked().iter().map(|t| t.score).collect();
            assert!(s.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
            assert_eq!(index.best(&q).unwrap().unwrap().score, s[0]);
        }
    }

    #[test]
    fn threshold_gives_out_of_scope() {
        let index = hand_made();
        let scores = index.score(&[1.0, 1.0, 0.0]).unwrap();
        let best = scores.best().unwrap();
        assert!((best.score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(scores.best_above(0.7).unwrap().label, "x");
        assert!(scores.best_above(0.8).is_none());
    }

    #[test]
    fn zero_query_scores_zero_and_empty_index_has_no_best() {
        let index = hand_made();
        let scores = index.score(&[0.0, 0.0, 0.0]).unwrap();
        assert!(scores.ranked().iter().all(|s| s.score == 0.0));
        let empty = TopicIndex::builder(3).build();
        assert!(empty.score(&[1.0, 0.0, 0.0]).unwrap().best().is_none());
        assert!(empty.best(&[1.0, 0.0, 0.0]).unwrap().is_none());
    }

    #[test]
    fn builder_and_query_errors() {
        let mut b = TopicIndex::builder(2);
        b.add_topic("a", &[vec![1.0, 0.0]]).unwrap();
        assert_eq!(
            b.add_topic("a", &[vec![0.0, 1.0]]).unwrap_err(),
            IndexError::DuplicateTopic { label: "a".into() }
        );
        assert_eq!(
            b.add_topic("b", Vec::<&Vec<f32>>::new()).unwrap_err(),
            IndexError::EmptyTopic { label: "b".into() }
        );
        assert_eq!(
            b.add_topic("c", &[vec![0.0, 1.0], vec![1.0]]).unwrap_err(),
            IndexError::DimensionMismatch {
                expected: 2,
                got: 1
            }
        );
        assert_eq!(
            b.add_topic("d", &[vec![f32::NAN, 1.0]]).unwrap_err(),
            IndexError::NonFinite
        );
        // Failed additions left nothing behind.
        let index = b.build();
        assert_eq!(index.topic_count(), 1);
        assert_eq!(index.utterance_count(), 1);
        assert_eq!(
            index.score(&[1.0]).unwrap_err(),
            IndexError::DimensionMismatch {
                expected: 2,
                got: 1
            }
        );
        assert_eq!(
            index.score(&[f32::INFINITY, 0.0]).unwrap_err(),
            IndexError::NonFinite
        );
    }

    #[test]
    fn many_utterances_score_like_brute_force() {
        let dim = 32;
        let mut topics = Vec::new();
        let mut state = 0x1234_5678_u64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for t in 0..20 {
            let rows: Vec<Vec<f32>> = (0..100)
                .map(|_| {
                    let mut v: Vec<f32> = (0..dim).map(|_| next()).collect();
                    l2_normalize(&mut v);
                    v
                })
                .collect();
            topics.push((format!("t{t}"), rows));
        }
        let mut b = TopicIndex::builder(dim);
        for (label, rows) in &topics {
            b.add_topic(label.clone(), rows).unwrap();
        }
        let index = b.build();
        let mut q: Vec<f32> = (0..dim).map(|_| next()).collect();
        l2_normalize(&mut q);
        let scores = index.score(&q).unwrap();
        for s in scores.ranked() {
            let expected = topics[s.topic]
                .1
                .iter()
                .map(|r| r.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max);
            assert!((s.score - expected).abs() < 1e-5);
        }
    }

    /// Adding an utterance to a topic never lowers that topic's score for a prompt, under
    /// every rule, with and without contrast between routes.
    #[test]
    fn adding_an_utterance_never_lowers_its_topic_score() {
        let dim = 8;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut vector = || (0..dim).map(|_| next()).collect::<Vec<f32>>();
        let rules = [
            Scoring::Nearest,
            Scoring::ROUTING_DEFAULT,
            Scoring::NearestMean { k: 3, step: 0.05 },
            Scoring::Neighbours { k: 4 },
        ];
        for round in 0..300 {
            let topics: Vec<Vec<Vec<f32>>> = (0..4)
                .map(|t| (0..1 + (round + t) % 7).map(|_| vector()).collect())
                .collect();
            let groups = [0, 0, 1, 2];
            let target = round % 4;
            let extra = vector();
            let query = vector();
            let build = |with_extra: bool| {
                let mut b = TopicIndex::builder(dim);
                for (t, rows) in topics.iter().enumerate() {
                    let mut rows = rows.clone();
                    if with_extra && t == target {
                        rows.push(extra.clone());
                    }
                    b.add_topic(format!("t{t}"), &rows).unwrap();
                }
                b.build().with_groups(&groups)
            };
            for rule in rules {
                for contrast in [0.0, 0.5] {
                    let score = |index: TopicIndex| {
                        let index = index.with_scoring(rule).with_contrast(contrast);
                        let scores = index.score(&query).unwrap();
                        scores
                            .ranked()
                            .iter()
                            .find(|s| s.topic == target)
                            .unwrap()
                            .score
                    };
                    let (before, after) = (score(build(false)), score(build(true)));
                    assert!(
                        after >= before - 1e-6,
                        "{rule:?} contrast {contrast}: {before} -> {after}"
                    );
                }
            }
        }
    }

    #[test]
    fn encode_routes_by_shared_words() {
        let enc = FakeEncoder::new(64);
        let index = TopicIndex::encode(
            &enc,
            [
                (
                    "billing",
                    vec!["refund my card payment", "charged twice on card"],
                ),
                (
                    "weather",
                    vec!["rain forecast tomorrow", "sunny weather today"],
                ),
            ],
        )
        .unwrap();
        let q = enc.vector("card refund please");
        assert_eq!(index.score(&q).unwrap().best().unwrap().label, "billing");
        let q = enc.vector("weather forecast");
        assert_eq!(index.score(&q).unwrap().best().unwrap().label, "weather");
    }

    #[test]
    fn cache_avoids_reencoding_and_is_tied_to_one_encoder() {
        let enc = FakeEncoder::new(16);
        let mut cache = EmbeddingCache::for_encoder(&enc);
        let v1 = vec![("a", vec!["one", "two", "two"]), ("b", vec!["three"])];
        let first = TopicIndex::encode_cached(&enc, v1.clone(), &mut cache).unwrap();
        assert_eq!(enc.batch_sizes(), vec![3]); // "two" encoded once
        assert_eq!(cache.len(), 3);
        assert_eq!(first.utterance_count(), 4);

        let v2 = vec![("a", vec!["one", "two"]), ("b", vec!["three", "four"])];
        let second = TopicIndex::encode_cached(&enc, v2, &mut cache).unwrap();
        assert_eq!(enc.batch_sizes(), vec![3, 1]); // only "four" is new
        assert_eq!(second.utterance_count(), 4);
        assert_eq!(cache.get("two").unwrap(), enc.vector("two").as_slice());

        TopicIndex::encode_cached(&enc, v1, &mut cache).unwrap();
        assert_eq!(enc.batch_sizes(), vec![3, 1]); // all cached now

        let mut exported: Vec<(&str, usize)> = cache.iter().map(|(t, v)| (t, v.len())).collect();
        exported.sort_unstable();
        assert_eq!(
            exported,
            vec![("four", 16), ("one", 16), ("three", 16), ("two", 16)]
        );
        cache.retain_texts(["one", "four"]);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("two").is_none());

        let mut other = EmbeddingCache::new("other-model", 16);
        let err = TopicIndex::encode_cached(&enc, [("a", ["x"])], &mut other).unwrap_err();
        assert!(
            matches!(err, IndexError::CacheEncoderMismatch { .. }),
            "{err}"
        );
        let mut wrong_dim = EmbeddingCache::new("fake", 8);
        let err = TopicIndex::encode_cached(&enc, [("a", ["x"])], &mut wrong_dim).unwrap_err();
        assert!(matches!(err, IndexError::DimensionMismatch { .. }), "{err}");
        assert!(matches!(
            cache.insert("bad".into(), vec![0.0; 3]),
            Err(IndexError::DimensionMismatch { .. })
        ));
    }

    #[test]
    fn encoder_errors_surface() {
        let enc = FakeEncoder::new(8);
        let err = TopicIndex::encode(&enc, [("a", vec!["ok", "FAIL"])]).unwrap_err();
        assert_eq!(
            err,
            IndexError::Encode(EncodeError::Inference("fake failure".into()))
        );
        let err = TopicIndex::encode(&enc, [("a", Vec::<&str>::new())]).unwrap_err();
        assert_eq!(err, IndexError::EmptyTopic { label: "a".into() });
    }
}
