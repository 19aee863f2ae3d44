//! How a topic's utterance similarities become one topic score: [`Scoring`].

/// The rule that turns a query's similarities with a topic's utterances into the topic's
/// score.
///
/// Both rules keep one property routing relies on: **adding an utterance to a topic never
/// lowers that topic's score for any query** (so curating more examples can only pull
/// prompts towards a topic, never push them away).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scoring {
    /// The similarity of the single nearest utterance (the textbook nearest-neighbour rule,
    /// and Switchyard's rule before the topic library). Used by the prompt guard, whose
    /// contract is "at least this similar to a deny-list utterance".
    Nearest,
    /// The mean similarity of the `k` nearest utterances, which a lone look-alike utterance
    /// cannot carry on its own. A topic with fewer than `k` utterances, or whose nearest
    /// utterances are far better than the rest, scores the mean of its `j` nearest (`j < k`)
    /// minus `step` for every missing one: the score is
    /// `max over j in 1..=min(k, n) of (mean of the j nearest − (k − j) · step)`.
    ///
    /// Each term can only grow when an utterance is added (the `j` nearest of a larger set
    /// are each at least as near), and a new term appears when `n` reaches `j`; so the
    /// maximum never drops. With `step = 0` this is [`Scoring::Nearest`]; with a large
    /// `step` it is the plain mean of the `k` nearest.
    NearestMean {
        /// How many nearest utterances are averaged (at least 1).
        k: usize,
        /// What each of the `k` that a shorter mean leaves out costs.
        step: f32,
    },
    /// A vote of the query's `k` nearest utterances over the whole index: a topic scores
    /// the sum of the (non-negative) similarities of its utterances among them, over `k`.
    /// A prompt whose neighbours all belong to one topic scores their mean; one whose
    /// neighbours are split between topics (typical of a prompt about none of them) scores
    /// less for each.
    ///
    /// Adding an utterance to a topic either leaves the `k` nearest unchanged or puts the new
    /// one in place of the farthest of them, which was no nearer: the topic's sum cannot
    /// drop.
    Neighbours {
        /// How many nearest utterances vote (at least 1).
        k: usize,
    },
}

impl Scoring {
    /// Switchyard's routing default, chosen on held-out intent data (see the crate README,
    /// "Scoring and calibration"): the mean of the 5 nearest utterances, a shorter mean
    /// costing 0.02 per missing utterance; used with [`Scoring::ROUTING_CONTRAST`].
    pub const ROUTING_DEFAULT: Scoring = Scoring::NearestMean { k: 5, step: 0.02 };

    /// The contrast semantic routing uses with [`Scoring::ROUTING_DEFAULT`]
    /// ([`crate::TopicIndex::with_contrast`]): half the best other route's score.
    pub const ROUTING_CONTRAST: f32 = 0.5;

    /// How many nearest similarities this rule looks at.
    #[must_use]
    pub fn depth(self) -> usize {
        match self {
            Scoring::Nearest => 1,
            Scoring::NearestMean { k, .. } | Scoring::Neighbours { k } => k.max(1),
        }
    }

    /// A short description for logs and the dry run, e.g. `"mean of the 3 nearest"`.
    #[must_use]
    pub fn describe(self) -> String {
        match self {
            Scoring::Nearest => "nearest utterance".to_owned(),
            Scoring::NearestMean { k, step } => {
                format!("mean of the {k} nearest utterances (-{step} per missing one)")
            }
            Scoring::Neighbours { k } => format!("vote of the {k} nearest utterances"),
        }
    }

    /// The score of a topic whose nearest similarities are `nearest`, sorted best first
    /// (at most [`Scoring::depth`] of them; fewer when the topic has fewer utterances).
    /// `NEG_INFINITY` for an empty slice. (For [`Scoring::Neighbours`] the slice is the
    /// topic's share of the index-wide nearest.)
    #[must_use]
    pub fn combine(self, nearest: &[f32]) -> f32 {
        match self {
            Scoring::Nearest => nearest.first().copied().unwrap_or(f32::NEG_INFINITY),
            Scoring::Neighbours { k } => {
                nearest.iter().map(|s| s.max(0.0)).sum::<f32>() / k.max(1) as f32
            }
            Scoring::NearestMean { k, step } => {
                let k = k.max(1);
                let mut best = f32::NEG_INFINITY;
                let mut sum = 0.0_f32;
                for (i, s) in nearest.iter().take(k).enumerate() {
                    sum += s;
                    let j = i + 1;
                    let term = sum / j as f32 - (k - j) as f32 * step;
                    best = best.max(term);
                }
                best
            }
        }
    }
}

/// The `depth` largest values seen, best first: a tiny insertion-sorted buffer (depth is a
/// handful), so a topic of thousands of utterances is scored in one pass without sorting.
#[derive(Debug, Clone)]
pub(crate) struct TopN {
    values: [f32; TopN::MAX],
    len: usize,
    depth: usize,
}

impl TopN {
    /// The deepest rule supported; deeper `k`s are clamped.
    pub(crate) const MAX: usize = 16;

    pub(crate) fn new(depth: usize) -> Self {
        TopN {
            values: [f32::NEG_INFINITY; TopN::MAX],
            len: 0,
            depth: depth.clamp(1, TopN::MAX),
        }
    }

    #[inline(always)]
    pub(crate) fn push(&mut self, v: f32) {
        if self.len == self.depth {
            if v <= self.values[self.len - 1] {
                return;
            }
            self.len -= 1;
        }
        let mut i = self.len;
        while i > 0 && self.values[i - 1] < v {
            self.values[i] = self.values[i - 1];
            i -= 1;
        }
        self.values[i] = v;
        self.len += 1;
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.values[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_desc(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        v.sort_by(|a, b| b.total_cmp(a));
        v
    }

    fn score(rule: Scoring, sims: &[f32]) -> f32 {
        let mut top = TopN::new(rule.depth());
        for s in sims {
            top.push(*s);
        }
        rule.combine(top.as_slice())
    }

    #[test]
    fn top_n_keeps_the_largest_best_first() {
        let mut t = TopN::new(3);
        for v in [0.1, 0.5, -0.2, 0.9, 0.5, 0.3] {
            t.push(v);
        }
        assert_eq!(t.as_slice(), &[0.9, 0.5, 0.5]);
        let mut t = TopN::new(4);
        t.push(0.2);
        assert_eq!(t.as_slice(), &[0.2]);
        assert_eq!(TopN::new(100).depth, TopN::MAX);
    }

    #[test]
    fn nearest_is_the_max_and_nearest_mean_averages_the_k_best() {
        let sims = [0.2, 0.8, 0.5, 0.6, 0.1];
        assert_eq!(score(Scoring::Nearest, &sims), 0.8);
        // Mean of the 3 nearest (0.8, 0.6, 0.5) beats 0.8 - 2 * 0.1 and (0.8 + 0.6) / 2 - 0.1.
        let rule = Scoring::NearestMean { k: 3, step: 0.1 };
        assert!((score(rule, &sims) - (0.8 + 0.6 + 0.5) / 3.0).abs() < 1e-6);
        // One outstanding utterance: its own similarity minus the steps wins.
        let lone = [0.95, 0.3, 0.2];
        assert!((score(rule, &lone) - (0.95 - 0.2)).abs() < 1e-6);
        // Fewer utterances than k.
        assert!((score(rule, &[0.7]) - 0.5).abs() < 1e-6);
        assert!((score(rule, &[0.7, 0.6]) - 0.55).abs() < 1e-6);
        // A step of 0 is the nearest rule; a huge step the plain mean.
        let flat = Scoring::NearestMean { k: 3, step: 0.0 };
        assert_eq!(score(flat, &sims), 0.8);
        let plain = Scoring::NearestMean { k: 3, step: 10.0 };
        assert!((score(plain, &sims) - (0.8 + 0.6 + 0.5) / 3.0).abs() < 1e-6);
        assert_eq!(score(rule, &[]), f32::NEG_INFINITY);
        assert_eq!(Scoring::Nearest.combine(&[]), f32::NEG_INFINITY);
    }

    /// The property the rule was chosen to keep: adding an utterance never lowers the
    /// score, whatever the similarities and wherever the new one ranks.
    #[test]
    fn adding_an_utterance_never_lowers_the_score() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let rules = [
            Scoring::Nearest,
            Scoring::ROUTING_DEFAULT,
            Scoring::NearestMean { k: 5, step: 0.0 },
            Scoring::NearestMean { k: 2, step: 1.0 },
            Scoring::NearestMean { k: 16, step: 0.02 },
        ];
        for _ in 0..2000 {
            let n = (next().abs() * 12.0) as usize;
            let mut sims: Vec<f32> = (0..n).map(|_| next()).collect();
            for rule in rules {
                let before = score(rule, &sims);
                let added = next();
                sims.push(added);
                let after = score(rule, &sims);
                sims.pop();
                assert!(
                    after >= before,
                    "{rule:?}: {sims:?} + {added} went from {before} to {after}"
                );
                assert_eq!(
                    score(rule, &sims),
                    rule.combine(&sorted_desc(&sims)[..n.min(rule.depth())])
                );
            }
        }
    }
}
