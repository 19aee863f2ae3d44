//! The [`Encoder`] trait and small vector helpers shared by the encoders and the index.

use crate::error::EncodeError;

/// A sentence encoder: text in, one L2-normalised vector per text out.
///
/// Implementations are pure CPU work and may block for milliseconds; from async
/// code call them through [`crate::EmbeddingService`], which runs them on a
/// dedicated thread and batches concurrent requests.
pub trait Encoder: Send + Sync {
    /// A stable name for the model (e.g. `"all-MiniLM-L6-v2"`), used to keep
    /// vectors of different models apart (see [`crate::EmbeddingCache`]).
    fn name(&self) -> &str;

    /// Length of every vector this encoder returns.
    fn dim(&self) -> usize;

    /// Encodes `texts` into one vector each, in order.
    ///
    /// Every returned vector has [`Encoder::dim`] components and unit L2 norm
    /// (a text with no usable tokens may give the zero vector), so the dot
    /// product of two vectors is their cosine similarity. Encoding a text alone
    /// or inside a batch gives the same vector up to float rounding (≈1e-6).
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncodeError>;

    /// Encodes a single text; see [`Encoder::encode_batch`].
    fn encode(&self, text: &str) -> Result<Vec<f32>, EncodeError> {
        self.encode_batch(&[text])?
            .pop()
            .ok_or_else(|| EncodeError::Inference("encoder returned no vector".to_owned()))
    }
}

/// Dot product of two equally long slices (cosine similarity for unit vectors).
///
/// Only the common prefix is used if the lengths differ; callers check lengths.
/// Eight independent accumulators let the compiler vectorise the loop.
#[must_use]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_unrolled(a, b)
}

/// [`dot`], always inlined, so that inside a [`crate::simd::simd`] block it is compiled for
/// the CPU's widest vectors.
#[inline(always)]
pub(crate) fn dot_unrolled(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0_f32; 8];
    let mut a_chunks = a.chunks_exact(8);
    let mut b_chunks = b.chunks_exact(8);
    for (ca, cb) in a_chunks.by_ref().zip(b_chunks.by_ref()) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut tail = 0.0_f32;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

/// Scales `v` to unit L2 norm in place. A zero (or near-zero) vector is left
/// unchanged, matching `torch.nn.functional.normalize` (which divides by
/// `max(norm, 1e-12)`).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    let denom = norm.max(1e-12);
    for x in v.iter_mut() {
        *x /= denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_odd_lengths() {
        for n in [0, 1, 7, 8, 9, 17, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn normalize_gives_unit_norm_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        l2_normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = vec![0.0; 4];
        l2_normalize(&mut z);
        assert_eq!(z, vec![0.0; 4]);
    }
}
