//! A BERT encoder forward pass for sentence embeddings, written for batches of short texts
//! on CPU.
//!
//! candle supplies the matrix products (its `gemm` kernels); everything else — embeddings,
//! fused QKV bias, attention, layer norm, GELU, pooling — runs here on plain slices. Two
//! choices make it fast where a general-purpose BERT is not:
//!
//! * **Packed batches.** The token rows of every sequence in a batch are laid end to end in
//!   one `(tokens, hidden)` matrix, so the linear layers (nearly all of the work) never
//!   compute padding, and a batch of mixed lengths costs what its tokens cost. Attention runs
//!   per sequence over its own rows, so no attention mask is needed.
//! * **No spinning thread pool.** The matrix products (candle's `gemm`), the attention (one
//!   task per sequence) and the elementwise work split across the rayon pool the caller runs
//!   in, whose idle threads sleep. A gateway shares its cores with request handling, and
//!   busy-waiting workers (candle's own elementwise pool) would take them.
//!
//! The arithmetic is BERT's: the same operations in the same order as the reference
//! implementation, in f32, except that `erf` is a rational approximation (absolute error
//! below 4e-7, a few f32 ulps).
//!
//! Speed comes from the instruction set as much as from the layout: candle's `gemm` is built
//! with its AVX-512 kernels (`x86-v4`, chosen at run time), and this module's own loops run
//! through [`simd`], compiled for the CPU's widest vectors rather than the SSE2 baseline.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

use crate::encoder::l2_normalize;
use crate::simd::simd;

/// One linear layer: `x · W + b`, with `W` stored transposed as `(in, out)` for the product.
struct Linear {
    weight: Tensor,
    bias: Vec<f32>,
    input: usize,
    output: usize,
}

impl Linear {
    fn load(vb: &VarBuilder, input: usize, output: usize) -> candle_core::Result<Self> {
        let weight = vb.get((output, input), "weight")?.t()?.contiguous()?;
        let bias = vb.get(output, "bias")?.to_vec1::<f32>()?;
        Ok(Self {
            weight,
            bias,
            input,
            output,
        })
    }

    /// Loads several linear layers over the same input as one, their outputs side by side
    /// (query, key and value: one product instead of three).
    fn load_fused(vbs: &[VarBuilder], input: usize, output: usize) -> candle_core::Result<Self> {
        let mut weights = Vec::with_capacity(vbs.len());
        let mut bias = Vec::with_capacity(vbs.len() * output);
        for vb in vbs {
            weights.push(vb.get((output, input), "weight")?);
            bias.extend(vb.get(output, "bias")?.to_vec1::<f32>()?);
        }
        let weight = Tensor::cat(&weights, 0)?.t()?.contiguous()?;
        Ok(Self {
            weight,
            bias,
            input,
            output: output * vbs.len(),
        })
    }

    /// `rows × input` in, `rows × output` out.
    fn forward(&self, x: &[f32], rows: usize) -> candle_core::Result<Vec<f32>> {
        let x = Tensor::from_slice(x, (rows, self.input), &Device::Cpu)?;
        let mut y = x.matmul(&self.weight)?.flatten_all()?.to_vec1::<f32>()?;
        simd(|| {
            for row in y.chunks_exact_mut(self.output) {
                add_in_place(row, &self.bias);
            }
        });
        Ok(y)
    }
}

struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(vb: &VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            gamma: vb.get(dim, "weight")?.to_vec1::<f32>()?,
            beta: vb.get(dim, "bias")?.to_vec1::<f32>()?,
            #[expect(clippy::cast_possible_truncation)]
            eps: eps as f32,
        })
    }

    /// Normalises every row of `x` in place.
    fn apply(&self, x: &mut [f32]) {
        let dim = self.gamma.len();
        #[expect(clippy::cast_precision_loss)]
        let n = dim as f32;
        x.par_chunks_mut(dim * ROWS_PER_TASK).for_each(|rows| {
            simd(|| {
                for row in rows.chunks_exact_mut(dim) {
                    let mean = row.iter().sum::<f32>() / n;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
                    let inv = 1.0 / (var + self.eps).sqrt();
                    for ((v, g), b) in row.iter_mut().zip(&self.gamma).zip(&self.beta) {
                        *v = (*v - mean) * inv * g + b;
                    }
                }
            });
        });
    }
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// A loaded BERT encoder (no pooler: sentence embeddings pool the last hidden states).
pub(crate) struct Bert {
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0 (single-segment input).
    token_type: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    vocab: usize,
    max_positions: usize,
    act: HiddenAct,
}

impl Bert {
    /// Loads the weights named as in Hugging Face's `BertModel` (with or without a `bert.`
    /// prefix).
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let hidden = config.hidden_size;
        if config.num_attention_heads == 0 || !hidden.is_multiple_of(config.num_attention_heads) {
            return Err(candle_core::Error::Msg(format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            )));
        }
        let eps = config.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let word = emb
            .get((config.vocab_size, hidden), "word_embeddings.weight")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let position = emb
            .get(
                (config.max_position_embeddings, hidden),
                "position_embeddings.weight",
            )?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let token_type = emb
            .get(
                (config.type_vocab_size, hidden),
                "token_type_embeddings.weight",
            )?
            .get(0)?
            .to_vec1::<f32>()?;
        let embedding_norm = LayerNorm::load(&emb.pp("LayerNorm"), hidden, eps)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let attn = l.pp("attention");
            let me = attn.pp("self");
            layers.push(Layer {
                qkv: Linear::load_fused(
                    &[me.pp("query"), me.pp("key"), me.pp("value")],
                    hidden,
                    hidden,
                )?,
                attention_out: Linear::load(&attn.pp("output.dense"), hidden, hidden)?,
                attention_norm: LayerNorm::load(&attn.pp("output.LayerNorm"), hidden, eps)?,
                intermediate: Linear::load(
                    &l.pp("intermediate.dense"),
                    hidden,
                    config.intermediate_size,
                )?,
                output: Linear::load(&l.pp("output.dense"), config.intermediate_size, hidden)?,
                output_norm: LayerNorm::load(&l.pp("output.LayerNorm"), hidden, eps)?,
            });
        }
        Ok(Self {
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            hidden,
            heads: config.num_attention_heads,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            act: config.hidden_act,
        })
    }

    pub(crate) fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Mean-pooled, L2-normalised embeddings of `seqs` (token ids, `[CLS]` … `[SEP]`), in
    /// order. Every sequence must be non-empty and at most `max_position_embeddings` long.
    pub(crate) fn embed(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let h = self.hidden;
        let mut spans = Vec::with_capacity(seqs.len());
        let mut rows = 0;
        for seq in seqs {
            if seq.is_empty() || seq.len() > self.max_positions {
                return Err(candle_core::Error::Msg(format!(
                    "a sequence of {} tokens (1 to {} allowed)",
                    seq.len(),
                    self.max_positions
                )));
            }
            spans.push((rows, seq.len()));
            rows += seq.len();
        }

        // Embeddings: word + position + token type 0, then layer norm.
        let mut x = vec![0.0_f32; rows * h];
        for (seq, &(start, _)) in seqs.iter().zip(&spans) {
            for (pos, &id) in seq.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    return Err(candle_core::Error::Msg(format!(
                        "token id {id} outside the vocabulary of {}",
                        self.vocab
                    )));
                }
                let out = &mut x[(start + pos) * h..(start + pos + 1) * h];
                let word = &self.word[id * h..(id + 1) * h];
                let position = &self.position[pos * h..(pos + 1) * h];
                for (((o, w), p), t) in out.iter_mut().zip(word).zip(position).zip(&self.token_type)
                {
                    *o = w + t + p;
                }
            }
        }
        self.embedding_norm.apply(&mut x);

        let mut context = vec![0.0_f32; rows * h];
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, rows)?;
            self.attention(&qkv, &spans, &mut context);
            let attended = layer.attention_out.forward(&context, rows)?;
            simd(|| add_in_place(&mut x, &attended));
            layer.attention_norm.apply(&mut x);

            let mut inner = layer.intermediate.forward(&x, rows)?;
            self.activate(&mut inner);
            let out = layer.output.forward(&inner, rows)?;
            simd(|| add_in_place(&mut x, &out));
            layer.output_norm.apply(&mut x);
        }

        // Mean pooling over each sequence's tokens (all of them: nothing is padded).
        Ok(spans
            .iter()
            .map(|&(start, len)| {
                let mut v = vec![0.0_f32; h];
                for row in x[start * h..(start + len) * h].chunks_exact(h) {
                    add_in_place(&mut v, row);
                }
                #[expect(clippy::cast_precision_loss)]
                let n = len as f32;
                for c in &mut v {
                    *c /= n;
                }
                l2_normalize(&mut v);
                v
            })
            .collect())
    }

    /// Multi-head self-attention of each sequence over its own rows: `qkv` holds query, key
    /// and value side by side per row; the heads' outputs go to `out` (`rows × hidden`).
    ///
    /// A batch of several sequences runs one task per sequence (each writes its own rows of
    /// `out`). A few sequences — a lone prompt above all — run one task per head instead, so
    /// a single long prompt's attention uses every thread of the pool; each head writes its
    /// own buffer, copied into its columns of `out` after.
    fn attention(&self, qkv: &[f32], spans: &[(usize, usize)], out: &mut [f32]) {
        let h = self.hidden;
        let stride = 3 * h;
        let d = h / self.heads;
        if spans.len() >= 2 * rayon::current_num_threads() {
            let mut chunks = Vec::with_capacity(spans.len());
            let mut rest = out;
            for &(_, len) in spans {
                let (mine, tail) = rest.split_at_mut(len * h);
                chunks.push(mine);
                rest = tail;
            }
            chunks
                .into_par_iter()
                .zip(spans.par_iter())
                .for_each(|(out, &(start, len))| {
                    let rows = &qkv[start * stride..(start + len) * stride];
                    for head in 0..self.heads {
                        Attend {
                            bert: self,
                            rows,
                            len,
                            head,
                            out: &mut out[head * d..],
                            out_stride: h,
                        }
                        .run();
                    }
                });
            return;
        }
        let heads: Vec<(usize, Vec<f32>)> = spans
            .par_iter()
            .enumerate()
            .flat_map(|(s, &(start, len))| {
                (0..self.heads).into_par_iter().map(move |head| {
                    let mut own = vec![0.0_f32; len * d];
                    Attend {
                        bert: self,
                        rows: &qkv[start * stride..(start + len) * stride],
                        len,
                        head,
                        out: &mut own,
                        out_stride: d,
                    }
                    .run();
                    (s * self.heads + head, own)
                })
            })
            .collect();
        for (task, own) in heads {
            let (s, head) = (task / self.heads, task % self.heads);
            let (start, _) = spans[s];
            for (i, row) in own.chunks_exact(d).enumerate() {
                let at = (start + i) * h + head * d;
                out[at..at + d].copy_from_slice(row);
            }
        }
    }

    /// One head of one sequence's attention: `rows` is the sequence's `len` rows of query,
    /// key and value side by side; row `i` of the head's output goes to
    /// `out[i * out_stride..][..head_dim]`.
    ///
    /// The loops are shaped for the vector unit: the head's keys are transposed once (padded
    /// to whole blocks of [`LANES`]), each query's scores are then accumulated a block at a
    /// time in a local array (kept in a register) over the head's dimensions, and its output
    /// likewise a block of dimensions at a time over the value rows.
    #[inline(always)]
    fn attend_head(
        &self,
        rows: &[f32],
        len: usize,
        head: usize,
        out: &mut [f32],
        out_stride: usize,
    ) {
        let h = self.hidden;
        let d = h / self.heads;
        #[expect(clippy::cast_precision_loss)]
        let scale = 1.0 / (d as f32).sqrt();
        let stride = 3 * h;
        let padded = len.div_ceil(LANES) * LANES;
        let mut keys_t = vec![0.0_f32; d * padded];
        let mut scores = vec![0.0_f32; padded];
        let mut query = vec![0.0_f32; d];
        let (q_at, k_at, v_at) = (head * d, h + head * d, 2 * h + head * d);
        for (j, row) in rows.chunks_exact(stride).enumerate() {
            for (c, &k) in row[k_at..k_at + d].iter().enumerate() {
                keys_t[c * padded + j] = k;
            }
        }
        for (i, row) in rows.chunks_exact(stride).enumerate() {
            for (q, &x) in query.iter_mut().zip(&row[q_at..q_at + d]) {
                *q = x * scale;
            }
            for (block, chunk) in scores.chunks_exact_mut(LANES).enumerate() {
                let mut acc = [0.0_f32; LANES];
                for (c, &q) in query.iter().enumerate() {
                    let at = c * padded + block * LANES;
                    for (a, k) in acc.iter_mut().zip(&keys_t[at..at + LANES]) {
                        *a += q * k;
                    }
                }
                chunk.copy_from_slice(&acc);
            }
            let scores = &mut scores[..len];
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            let o = &mut out[i * out_stride..i * out_stride + d];
            let whole = d / LANES * LANES;
            for (block, chunk) in o[..whole].chunks_exact_mut(LANES).enumerate() {
                let mut acc = [0.0_f32; LANES];
                let at = v_at + block * LANES;
                for (&p, value) in scores.iter().zip(rows.chunks_exact(stride)) {
                    for (a, v) in acc.iter_mut().zip(&value[at..at + LANES]) {
                        *a += p * v;
                    }
                }
                for (o, a) in chunk.iter_mut().zip(acc) {
                    *o = a * inv;
                }
            }
            // Head sizes that are not a multiple of LANES: the rest, one dimension at a time.
            for (c, o) in o.iter_mut().enumerate().skip(whole) {
                *o = scores
                    .iter()
                    .zip(rows.chunks_exact(stride))
                    .map(|(&p, value)| p * value[v_at + c])
                    .sum::<f32>()
                    * inv;
            }
        }
    }

    fn activate(&self, x: &mut [f32]) {
        let act = self.act;
        x.par_chunks_mut(ELEMENTS_PER_TASK).for_each(|x| {
            simd(|| match act {
                HiddenAct::Gelu => x
                    .iter_mut()
                    .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * FRAC_1_SQRT_2))),
                HiddenAct::GeluApproximate => x.iter_mut().for_each(|v| {
                    let u = SQRT_2_OVER_PI * (*v + 0.044_715 * *v * *v * *v);
                    *v = 0.5 * *v * (1.0 + u.tanh());
                }),
                HiddenAct::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            });
        });
    }
}

/// One head's attention as a [`pulp::WithSimd`] operation: its body is inlined into the
/// function compiled for the CPU's vector instructions (a closure that large would not be).
struct Attend<'a> {
    bert: &'a Bert,
    rows: &'a [f32],
    len: usize,
    head: usize,
    out: &'a mut [f32],
    out_stride: usize,
}

impl Attend<'_> {
    fn run(self) {
        simd(self);
    }
}

impl pulp::WithSimd for Attend<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        self.bert
            .attend_head(self.rows, self.len, self.head, self.out, self.out_stride);
    }
}

/// f32 lanes of a 512-bit vector: the block size of the attention loops.
const LANES: usize = 16;

/// Work split for the pool's threads: rows per layer-norm task, elements per activation task
/// (enough work per task that splitting pays).
const ROWS_PER_TASK: usize = 32;
const ELEMENTS_PER_TASK: usize = 16 * 1024;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// √(2/π), for the tanh approximation of GELU.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;

#[inline(always)]
fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// The error function as a rational function of `x` clamped to [-4, 4] (beyond which erf is
/// ±1 in f32): an odd degree-13 numerator over an even degree-8 denominator, within a few
/// f32 ulps (absolute error below 4e-7). Branch-free, so the GELU loop vectorises. Plain
/// multiply-adds: `mul_add` would be a libm call on targets built without FMA.
#[expect(clippy::excessive_precision, clippy::unreadable_literal)]
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.72614225801306e-10_f32;
    p = p * x2 + 2.77068142495902e-08;
    p = p * x2 + -2.10102402082508e-06;
    p = p * x2 + -5.69250639462346e-05;
    p = p * x2 + -7.34990630326855e-04;
    p = p * x2 + -2.95459980854025e-03;
    p = p * x2 + -1.60960333262415e-02;
    let mut q = -1.45660718464996e-05_f32;
    q = q * x2 + -2.13374055278905e-04;
    q = q * x2 + -1.68282697438203e-03;
    q = q * x2 + -7.37332916720468e-03;
    q = q * x2 + -1.42647390514189e-02;
    x * p / q
}

/// Loads the weights of a model directory's safetensors bytes.
pub(crate) fn var_builder(bytes: Vec<u8>) -> candle_core::Result<VarBuilder<'static>> {
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_the_series_to_a_few_ulps() {
        // erf by its Maclaurin series in f64 (converges fast for |x| <= 3), and the
        // complementary asymptotic limit beyond.
        fn reference(x: f64) -> f64 {
            if x.abs() > 3.5 {
                return x.signum()
                    * (1.0 - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt()));
            }
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                let n = f64::from(n);
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        let mut worst = 0.0_f64;
        for i in -6000..=6000 {
            #[expect(clippy::cast_precision_loss)]
            let x = i as f32 / 1000.0;
            worst = worst.max((f64::from(erf(x)) - reference(f64::from(x))).abs());
        }
        // A few f32 ulps near 1 (where erf's values are): the rounding of the arithmetic.
        assert!(worst < 4e-7, "worst absolute error {worst}");
        assert!((erf(0.5) - 0.520_499_9).abs() < 1e-6);
        assert_eq!(erf(0.0), 0.0);
        assert!(erf(-1.0) < 0.0 && (erf(-1.0) + erf(1.0)).abs() < 1e-7);
    }
}
