//! all-MiniLM-L6-v2 (sentence-transformers) on candle's BERT, in process, on CPU.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::encoder::{Encoder, l2_normalize};
use crate::error::{EncodeError, LoadError};
use crate::files;

/// Model name reported by [`MiniLmEncoder::name`] with default options.
pub const MINILM_NAME: &str = "all-MiniLM-L6-v2";

/// Most sequences in one forward pass.
const MAX_SUB_BATCH: usize = 32;

/// Fixed cost of one forward pass, in tokens of compute: measured ~7 ms per
/// pass on top of ~0.3 ms per token on one core. Used to decide when padding
/// short sequences to a long one costs more than a separate pass.
const PASS_OVERHEAD_TOKENS: usize = 24;

/// Inputs longer than `max_tokens * CHARS_PER_TOKEN_BOUND` characters are cut
/// before tokenization, so a huge prompt costs no more than a 256-token one.
/// WordPiece tokens of natural text average about 4 characters, so the cut
/// never reaches the tokens that truncation keeps.
const CHARS_PER_TOKEN_BOUND: usize = 32;

/// Which part of a text longer than `max_tokens` is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep the first tokens (what sentence-transformers does; the parity
    /// reference is computed this way).
    #[default]
    KeepStart,
    /// Keep the last tokens: for chat prompts the latest text usually says
    /// most about intent, and an injection appended at the end is not cut off.
    KeepEnd,
}

/// Options for [`MiniLmEncoder::load_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MiniLmOptions {
    /// Maximum sequence length in tokens, including `[CLS]` and `[SEP]`.
    /// Default 256, the model's training length (`max_seq_length`).
    pub max_tokens: usize,
    /// Which end of a long text to keep. Default [`Truncation::KeepStart`].
    pub truncation: Truncation,
    /// Threads one forward pass may use (a private thread pool). Default 1.
    /// Batching, not intra-pass parallelism, is what buys throughput here:
    /// on the 2-vCPU machines measured, a 2-thread pass ran up to 3× slower
    /// than a 1-thread pass whenever other work shared the CPUs (parallel
    /// matrix products wait for each other's descheduled threads), and a
    /// gateway always has other work. Raise it on hosts with idle physical
    /// cores to cut single-request latency.
    pub threads: usize,
}

impl Default for MiniLmOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            truncation: Truncation::KeepStart,
            threads: 1,
        }
    }
}

/// The all-MiniLM-L6-v2 sentence encoder: 6-layer BERT, 384 dimensions, mean
/// pooling over the attention mask, L2-normalised.
///
/// Reproduces the Python sentence-transformers embeddings to about 1e-6 per
/// component. One short sentence takes ~20 ms on one CPU core; batches are
/// much cheaper per text (see the crate README for measured figures).
///
/// Long texts are truncated to [`MiniLmOptions::max_tokens`] tokens, keeping
/// the start by default ([`Truncation`]).
pub struct MiniLmEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    options: MiniLmOptions,
    name: String,
    /// Runs the forward pass, so candle's matrix products use
    /// `options.threads` threads instead of the global rayon pool.
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for MiniLmEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniLmEncoder")
            .field("name", &self.name)
            .field("dim", &self.dim)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl MiniLmEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`
    /// with default options (256 tokens, keep the start).
    ///
    /// # Errors
    /// [`LoadError`] naming the missing or invalid file.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        Self::load_with(dir, MiniLmOptions::default())
    }

    /// Like [`MiniLmEncoder::load`], with explicit options.
    ///
    /// # Errors
    /// [`LoadError`] naming the missing or invalid file, or
    /// [`LoadError::Invalid`] on `config.json` if `max_tokens` is below 2 or
    /// above the model's `max_position_embeddings`.
    pub fn load_with(dir: &Path, options: MiniLmOptions) -> Result<Self, LoadError> {
        files::check_dir(dir)?;

        let (config_path, config_bytes) = files::read(dir, "config.json")?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .map_err(|e| files::invalid(&config_path, format!("not a BERT config.json: {e}")))?;
        if options.max_tokens < 2 || options.max_tokens > config.max_position_embeddings {
            return Err(files::invalid(
                &config_path,
                format!(
                    "requested max_tokens {} must be between 2 and max_position_embeddings {}",
                    options.max_tokens, config.max_position_embeddings
                ),
            ));
        }

        let (tok_path, tok_bytes) = files::read(dir, "tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_bytes(&tok_bytes)
            .map_err(|e| files::invalid(&tok_path, format!("not a tokenizers JSON file: {e}")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: match options.truncation {
                    Truncation::KeepStart => TruncationDirection::Right,
                    Truncation::KeepEnd => TruncationDirection::Left,
                },
                max_length: options.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| files::invalid(&tok_path, format!("cannot set truncation: {e}")))?;
        // Padding is done per sub-batch below, to the longest sequence in it.
        tokenizer.with_padding(None);

        let (model_path, model_bytes) = files::read(dir, "model.safetensors")?;
        files::check_safetensors(&model_path, &model_bytes)?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(model_bytes, DType::F32, &device)
            .map_err(|e| files::invalid(&model_path, format!("cannot read tensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| {
            files::invalid(
                &model_path,
                format!("tensors do not match config.json: {e}"),
            )
        })?;

        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads.max(1))
            .thread_name(|i| format!("switchyard-minilm-{i}"))
            .build()
            .map_err(|e| LoadError::Threads(e.to_string()))?;

        let defaults = MiniLmOptions::default();
        let name = if (options.max_tokens, options.truncation)
            == (defaults.max_tokens, defaults.truncation)
        {
            MINILM_NAME.to_owned()
        } else {
            let keep = match options.truncation {
                Truncation::KeepStart => "start",
                Truncation::KeepEnd => "end",
            };
            format!(
                "{MINILM_NAME}[max_tokens={},keep={keep}]",
                options.max_tokens
            )
        };
        tracing::debug!(dir = %dir.display(), name = %name, "loaded minilm encoder");
        Ok(Self {
            model,
            tokenizer,
            device,
            dim: config.hidden_size,
            options,
            name,
            pool,
        })
    }

    /// The options this encoder was loaded with.
    #[must_use]
    pub fn options(&self) -> MiniLmOptions {
        self.options
    }

    /// Number of tokens (including `[CLS]`/`[SEP]`, after truncation) that
    /// `text` is encoded with. Useful for benchmarks and diagnostics.
    ///
    /// # Errors
    /// [`EncodeError::Tokenize`] if the tokenizer rejects the text.
    pub fn token_count(&self, text: &str) -> Result<usize, EncodeError> {
        Ok(self.tokenize(&[text])?.first().map_or(0, Vec::len))
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EncodeError> {
        let max_chars = self
            .options
            .max_tokens
            .saturating_mul(CHARS_PER_TOKEN_BOUND);
        // One text at a time: a few µs each, and the batch variant would wake
        // the global rayon pool for no gain.
        texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .encode_fast(precut(t, max_chars, self.options.truncation), true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| EncodeError::Tokenize(e.to_string()))
            })
            .collect()
    }

    /// One forward pass over sequences padded to the longest; returns pooled,
    /// normalised vectors in input order.
    fn forward(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let batch = seqs.len();
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = vec![0_u32; batch * len];
        let mut mask = vec![0_u32; batch * len];
        for (row, seq) in seqs.iter().enumerate() {
            ids[row * len..row * len + seq.len()].copy_from_slice(seq);
            mask[row * len..row * len + seq.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (batch, len), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (batch, len), &self.device)?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (batch, len, dim)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, len, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (batch, dim)
        let counts = mask.sum(1)?.clamp(1e-9_f32, f32::MAX)?; // (batch, 1)
        let mut rows = summed.broadcast_div(&counts)?.to_vec2::<f32>()?;
        for row in &mut rows {
            l2_normalize(row);
        }
        Ok(rows)
    }
}

impl Encoder for MiniLmEncoder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncodeError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = self.tokenize(texts)?;
        // Sort by length, then cut into passes that pad little.
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let lens: Vec<usize> = order.iter().map(|&i| seqs[i].len()).collect();
        let mut out = vec![Vec::new(); seqs.len()];
        for range in plan_passes(&lens) {
            let chunk = &order[range];
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            let vectors = self
                .pool
                .install(|| self.forward(&batch))
                .map_err(|e| EncodeError::Inference(e.to_string()))?;
            for (&i, v) in chunk.iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Splits sequences sorted by ascending length into consecutive groups, one
/// forward pass each, minimising total cost = per-pass overhead + padded
/// tokens (each group pads to its last, longest sequence). Dynamic programming
/// over at most `MAX_SUB_BATCH`-long groups: `O(n × MAX_SUB_BATCH)`.
fn plan_passes(sorted_lens: &[usize]) -> Vec<std::ops::Range<usize>> {
    let n = sorted_lens.len();
    let mut best = vec![usize::MAX; n + 1];
    let mut start = vec![0; n + 1];
    best[0] = 0;
    for end in 1..=n {
        let longest = sorted_lens[end - 1];
        for begin in end.saturating_sub(MAX_SUB_BATCH)..end {
            let cost = best[begin]
                .saturating_add(PASS_OVERHEAD_TOKENS)
                .saturating_add((end - begin).saturating_mul(longest));
            if cost < best[end] {
                best[end] = cost;
                start[end] = begin;
            }
        }
    }
    let mut passes = Vec::new();
    let mut end = n;
    while end > 0 {
        passes.push(start[end]..end);
        end = start[end];
    }
    passes.reverse();
    passes
}

/// Cuts `text` to at most `max_chars` characters from the kept end, on a char
/// boundary.
fn precut(text: &str, max_chars: usize, truncation: Truncation) -> &str {
    if text.len() <= max_chars {
        return text; // byte length bounds char count
    }
    match truncation {
        Truncation::KeepStart => text
            .char_indices()
            .nth(max_chars)
            .map_or(text, |(i, _)| &text[..i]),
        Truncation::KeepEnd => {
            let n = text.chars().count();
            if n <= max_chars {
                return text;
            }
            text.char_indices()
                .nth(n - max_chars)
                .map_or(text, |(i, _)| &text[i..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_pad_little_and_cover_everything_once() {
        assert!(plan_passes(&[]).is_empty());
        assert_eq!(plan_passes(&[16; 10]), vec![0..10]);
        assert_eq!(plan_passes(&[5, 5, 5, 100]), vec![0..3, 3..4]);
        assert_eq!(
            plan_passes(&[10; 40]).len(),
            2,
            "at most MAX_SUB_BATCH per pass"
        );
        let lens: Vec<usize> = (0..50).map(|i| 4 + i * i / 10).collect();
        let passes = plan_passes(&lens);
        let mut next = 0;
        for p in &passes {
            assert_eq!(p.start, next);
            assert!(p.end > p.start && p.len() <= MAX_SUB_BATCH);
            next = p.end;
        }
        assert_eq!(next, lens.len());
    }

    #[test]
    fn precut_respects_char_boundaries_and_side() {
        let text = "ééééé";
        assert_eq!(precut(text, 10, Truncation::KeepStart), text);
        assert_eq!(precut(text, 2, Truncation::KeepStart), "éé");
        assert_eq!(precut(text, 2, Truncation::KeepEnd), "éé");
        assert_eq!(precut("abcdef", 2, Truncation::KeepEnd), "ef");
        assert_eq!(precut("abcdef", 2, Truncation::KeepStart), "ab");
    }
}
