//! A routing threshold calibrated from an index's own utterances: [`TopicIndex::calibrate`].
//!
//! Each sampled utterance is scored twice against the index it belongs to, as if it were a
//! prompt: once with **itself** left out (would a prompt like it reach its own route, and
//! with what score?) and once with **its whole route** left out (what does a prompt of a
//! subject this proxy does not route score against the rest?). The first scores stand for
//! in-scope prompts, the second for out-of-scope ones; the threshold is the one that
//! separates the two best (most in-scope samples routed right and at least the threshold,
//! plus most out-of-scope samples below it), at the middle of the widest such interval.
//!
//! Few utterances per topic make both kinds of scores low, thousands make them high, so the
//! threshold follows the configuration instead of being one fixed number.

use crate::encoder::l2_normalize;
use crate::index::TopicIndex;

/// At most this many utterances are scored to calibrate (spread evenly over the topics and
/// within each): enough for a stable quantile, cheap for thousands of utterances.
pub const MAX_CALIBRATION_SAMPLES: usize = 600;

/// The threshold used when an index gives nothing to calibrate from (a single topic with a
/// single utterance).
pub const FALLBACK_THRESHOLD: f32 = 0.5;

/// How [`Calibration::threshold`] was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationMethod {
    /// Best separation of left-one-out scores (in scope) from left-route-out scores (out of
    /// scope); the normal case.
    Separation,
    /// Only one route (or one topic): nothing stands for out-of-scope prompts, so the
    /// threshold keeps 90% of the left-one-out scores.
    InScopeOnly,
    /// Nothing to calibrate from: [`FALLBACK_THRESHOLD`].
    Fallback,
}

/// A threshold calibrated from an index's utterances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Route when the best topic's score is at least this.
    pub threshold: f32,
    /// How many utterances were scored to find it.
    pub samples: usize,
    /// How it was found.
    pub method: CalibrationMethod,
}

/// One utterance of the index scored as a prompt (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibrationSample {
    /// The topic it belongs to.
    pub topic: usize,
    /// With itself left out: the best topic's score, and whether that topic belongs to the
    /// utterance's own group (route). `None` if the index has nothing else.
    pub in_scope: Option<(f32, bool)>,
    /// With its whole group left out: the best remaining score; with a single group, the
    /// best score of the other topics; `None` with a single topic.
    pub out_of_scope: Option<f32>,
}

impl TopicIndex {
    /// Calibrates a routing threshold for this index (see the module docs), by its scoring
    /// rule and contrast. Topics of one group ([`TopicIndex::with_groups`], e.g. one route)
    /// never stand for out-of-scope prompts for each other.
    #[must_use]
    pub fn calibrate(&self) -> Calibration {
        let samples = self.calibration_samples(MAX_CALIBRATION_SAMPLES);
        Calibration::from_samples(&samples)
    }

    /// The utterances [`TopicIndex::calibrate`] scores, at most `max` of them, each scored
    /// as a prompt. Public for evaluation tools.
    #[must_use]
    pub fn calibration_samples(&self, max: usize) -> Vec<CalibrationSample> {
        let topics = self.topic_vectors();
        if topics.is_empty() || max == 0 {
            return Vec::new();
        }
        let group = |t: usize| self.group(t);
        let several_groups = (1..topics.len()).any(|t| group(t) != group(0));
        let per_topic = (max / topics.len()).max(1);
        let mut out = Vec::new();
        for (t, block) in topics.iter().enumerate() {
            let n = block.len();
            let take = n.min(per_topic);
            for i in 0..take {
                // Evenly spread over the topic's rows, first and last included.
                let row = if take > 1 {
                    i * (n - 1) / (take - 1)
                } else {
                    0
                };
                let Some(vector) = block.row(row) else {
                    continue;
                };
                let mut q = vector.to_vec();
                l2_normalize(&mut q);
                let raw = self.own_scores(&q, Some((t, row)));
                let scores = self.contrasted(&raw, |_| false);
                // As a prompt of a subject the index does not route: its own group (or
                // topic) removed altogether, from the competition too.
                let removed = |u: usize| {
                    if several_groups {
                        group(u) == group(t)
                    } else {
                        u == t
                    }
                };
                let without = self.contrasted(&raw, removed);
                let in_scope = scores
                    .iter()
                    .enumerate()
                    .filter_map(|(u, s)| s.map(|s| (u, s)))
                    .reduce(|a, b| if b.1 > a.1 { b } else { a })
                    .map(|(u, s)| (s, group(u) == group(t)));
                let out_of_scope = without.iter().filter_map(|s| *s).reduce(f32::max);
                out.push(CalibrationSample {
                    topic: t,
                    in_scope,
                    out_of_scope,
                });
            }
        }
        out
    }
}

impl Calibration {
    /// The threshold that best separates the samples' in-scope scores from their
    /// out-of-scope ones (see the module docs).
    #[must_use]
    pub fn from_samples(samples: &[CalibrationSample]) -> Calibration {
        let n = samples.len();
        // Routed right at or above the threshold: a success for in-scope samples.
        let positives: Vec<f32> = samples
            .iter()
            .filter_map(|s| s.in_scope.filter(|(_, right)| *right).map(|(v, _)| v))
            .collect();
        let negatives: Vec<f32> = samples.iter().filter_map(|s| s.out_of_scope).collect();
        if negatives.is_empty() {
            let mut scores: Vec<f32> = samples
                .iter()
                .filter_map(|s| s.in_scope.map(|(v, _)| v))
                .collect();
            if scores.is_empty() {
                return Calibration {
                    threshold: FALLBACK_THRESHOLD,
                    samples: n,
                    method: CalibrationMethod::Fallback,
                };
            }
            scores.sort_by(f32::total_cmp);
            let at = (scores.len() - 1) / 10;
            return Calibration {
                threshold: clamp(scores[at]),
                samples: n,
                method: CalibrationMethod::InScopeOnly,
            };
        }
        Calibration {
            threshold: clamp(best_separation(&positives, &negatives)),
            samples: n,
            method: CalibrationMethod::Separation,
        }
    }

    /// `"threshold 0.340, calibrated from 60 utterances"`-style explanation.
    #[must_use]
    pub fn describe(&self) -> String {
        match self.method {
            CalibrationMethod::Separation => format!(
                "threshold {:.3}, calibrated from {} utterances",
                self.threshold, self.samples
            ),
            CalibrationMethod::InScopeOnly => format!(
                "threshold {:.3}, calibrated from {} utterances of a single route (keeps 90% of them)",
                self.threshold, self.samples
            ),
            CalibrationMethod::Fallback => format!(
                "threshold {:.3}: too few utterances to calibrate from",
                self.threshold
            ),
        }
    }
}

fn clamp(t: f32) -> f32 {
    if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        FALLBACK_THRESHOLD
    }
}

/// The threshold `t` maximising `#{p >= t} + #{q < t}`, at the middle of the widest interval
/// reaching that maximum.
fn best_separation(positives: &[f32], negatives: &[f32]) -> f32 {
    // Events in ascending order; the count changes right after each distinct value.
    let mut values: Vec<(f32, bool)> = positives
        .iter()
        .map(|&v| (v, true))
        .chain(negatives.iter().map(|&v| (v, false)))
        .collect();
    values.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Threshold below every value: every positive counts, no negative does.
    let mut count = positives.len() as i64;
    let mut best = count;
    let lowest = values.first().map_or(0.0, |v| v.0);
    // Candidate intervals (lo, hi]: thresholds in it give `count`.
    let mut intervals: Vec<(f32, f32, i64)> = vec![(lowest - 0.1, lowest, count)];
    let mut i = 0;
    while i < values.len() {
        let v = values[i].0;
        while i < values.len() && values[i].0 == v {
            if values[i].1 {
                count -= 1;
            } else {
                count += 1;
            }
            i += 1;
        }
        let next = values.get(i).map_or(v + 0.1, |n| n.0);
        intervals.push((v, next, count));
        best = best.max(count);
    }
    intervals
        .into_iter()
        .filter(|(_, _, c)| *c == best)
        .max_by(|a, b| (a.1 - a.0).total_cmp(&(b.1 - b.0)))
        .map_or(FALLBACK_THRESHOLD, |(lo, hi, _)| (lo + hi) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Scoring, TopicIndex};

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        l2_normalize(&mut v);
        v
    }

    #[test]
    fn separation_sits_between_the_two_kinds_of_scores() {
        let t = best_separation(&[0.6, 0.7, 0.8], &[0.2, 0.3, 0.4]);
        assert!((t - 0.5).abs() < 1e-6, "{t}");
        // Overlap: one error is unavoidable, in (0.3, 0.45] or in (0.5, 0.6]; the middle
        // of the wider interval wins.
        let t = best_separation(&[0.45, 0.6, 0.7], &[0.3, 0.5, 0.2]);
        assert!((t - 0.375).abs() < 1e-6, "{t}");
        // Only positives: below them all.
        let t = best_separation(&[0.6, 0.7], &[]);
        assert!(t < 0.6, "{t}");
    }

    /// Two routes of two topics each on distinct axes: a left-out utterance stays near
    /// its own topic, and the other route is far, so the threshold lands in between.
    #[test]
    fn an_index_calibrates_from_its_own_utterances() {
        let mut b = TopicIndex::builder(4);
        let near = |axis: usize, wobble: f32| {
            let mut v = vec![wobble; 4];
            v[axis] = 1.0;
            unit(&v)
        };
        b.add_topic("a", &[near(0, 0.1), near(0, 0.2), near(0, 0.15)])
            .unwrap()
            .add_topic("b", &[near(1, 0.1), near(1, 0.2)])
            .unwrap()
            .add_topic("c", &[near(2, 0.1), near(2, 0.12)])
            .unwrap();
        // Routes: a and b together, c alone.
        let index = b
            .build()
            .with_scoring(Scoring::ROUTING_DEFAULT)
            .with_groups(&[0, 0, 1]);
        let c = index.calibrate();
        assert_eq!(c.method, CalibrationMethod::Separation);
        assert_eq!(c.samples, 7);
        assert!(c.threshold > 0.3 && c.threshold < 0.95, "{c:?}");
        let samples = index.calibration_samples(100);
        for s in &samples {
            let (own, right) = s.in_scope.unwrap();
            assert!(right, "{s:?}");
            assert!(own >= c.threshold, "{s:?} vs {c:?}");
            assert!(s.out_of_scope.unwrap() < c.threshold, "{s:?} vs {c:?}");
        }
        assert!(c.describe().contains("calibrated from 7 utterances"));

        // At most `max` samples, spread over the topics.
        assert_eq!(index.calibration_samples(3).len(), 3);

        // With contrast, the threshold still separates the two kinds of scores.
        let contrasted = index.with_contrast(0.5);
        let c = contrasted.calibrate();
        assert_eq!(c.method, CalibrationMethod::Separation);
        for s in contrasted.calibration_samples(100) {
            assert!(s.in_scope.unwrap().0 >= c.threshold, "{s:?} vs {c:?}");
            assert!(s.out_of_scope.unwrap() < c.threshold, "{s:?} vs {c:?}");
        }
    }

    #[test]
    fn degenerate_indexes_still_get_a_threshold() {
        let mut b = TopicIndex::builder(2);
        b.add_topic("only", &[unit(&[1.0, 0.1]), unit(&[1.0, 0.3])])
            .unwrap();
        let c = b.build().calibrate();
        assert_eq!(c.method, CalibrationMethod::InScopeOnly);
        assert!(c.threshold > 0.9 && c.threshold <= 1.0, "{c:?}");

        let mut b = TopicIndex::builder(2);
        b.add_topic("lone", &[unit(&[1.0, 0.0])]).unwrap();
        let c = b.build().calibrate();
        assert_eq!(c.method, CalibrationMethod::Fallback);
        assert_eq!(c.threshold, FALLBACK_THRESHOLD);
        assert!(c.describe().contains("too few"));

        assert_eq!(
            TopicIndex::builder(2).build().calibrate().method,
            CalibrationMethod::Fallback
        );
    }

    /// A duplicate of the left-out utterance is left out with it: otherwise every
    /// duplicated utterance would score 1 against its own topic.
    #[test]
    fn duplicates_of_the_left_out_utterance_do_not_count() {
        let mut b = TopicIndex::builder(2);
        let v = unit(&[1.0, 0.2]);
        b.add_topic("a", &[v.clone(), v.clone(), unit(&[1.0, 1.0])])
            .unwrap()
            .add_topic("b", &[unit(&[0.0, 1.0])])
            .unwrap();
        let samples = b.build().calibration_samples(100);
        let first = samples[0];
        let (own, _) = first.in_scope.unwrap();
        assert!(own < 0.99, "{first:?}");
    }
}
