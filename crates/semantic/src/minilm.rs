//! all-MiniLM-L6-v2 (sentence-transformers) in process, on CPU: the `tokenizers` crate and
//! the packed-batch BERT forward pass of [`crate::bert`].

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use candle_transformers::models::bert::Config;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::bert::{self, Bert};
use crate::encoder::Encoder;
use crate::error::{EncodeError, LoadError};
use crate::files;

/// Model name reported by [`MiniLmEncoder::name`] with default options.
pub const MINILM_NAME: &str = "all-MiniLM-L6-v2";

/// Most tokens in one forward pass (bounds its working memory: a few MB per 1,000 tokens).
/// Sequences are packed end to end, so a pass costs what its tokens cost, padding-free.
const MAX_PASS_TOKENS: usize = 4096;

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
    /// Threads per forward pass. Each concurrent [`Encoder::encode_batch`] call runs in a
    /// private pool of this many threads (pools are made as concurrent callers appear, and
    /// reused): its matrix products, attention and elementwise work split across them.
    /// Default 1: on a small machine, one single-threaded pass per core (an
    /// [`crate::EmbeddingService`] with as many workers as cores) has no fork/join cost and
    /// gives the most decisions per second; more threads per pass cut the latency of a lone
    /// long prompt.
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
/// component. Concurrent texts are best encoded together: a batch is packed
/// (no padding) and costs what its tokens cost (see the crate README for
/// measured figures).
///
/// Long texts are truncated to [`MiniLmOptions::max_tokens`] tokens, keeping
/// the start by default ([`Truncation`]).
pub struct MiniLmEncoder {
    model: Bert,
    tokenizer: Tokenizer,
    dim: usize,
    options: MiniLmOptions,
    name: String,
    /// Idle forward-pass pools ([`MiniLmOptions::threads`] threads each), one per
    /// concurrent caller at most.
    pools: Mutex<Vec<rayon::ThreadPool>>,
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
        let vb = bert::var_builder(model_bytes)
            .map_err(|e| files::invalid(&model_path, format!("cannot read tensors: {e}")))?;
        let model = Bert::load(vb, &config).map_err(|e| {
            files::invalid(
                &model_path,
                format!("tensors do not match config.json: {e}"),
            )
        })?;

        let pool = build_pool(options.threads).map_err(|e| LoadError::Threads(e.to_string()))?;

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
            dim: model.hidden_size(),
            model,
            tokenizer,
            options,
            name,
            pools: Mutex::new(vec![pool]),
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
        let idle = self
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let pool = match idle {
            Some(pool) => pool,
            None => build_pool(self.options.threads)
                .map_err(|e| EncodeError::Inference(format!("cannot start a thread pool: {e}")))?,
        };
        let mut out = Vec::with_capacity(seqs.len());
        let result = plan_passes(&seqs).into_iter().try_for_each(|pass| {
            let batch: Vec<&[u32]> = seqs[pass].iter().map(Vec::as_slice).collect();
            let vectors = pool
                .install(|| self.model.embed(&batch))
                .map_err(|e| EncodeError::Inference(e.to_string()))?;
            out.extend(vectors);
            Ok(())
        });
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pool);
        result.map(|()| out)
    }
}

fn build_pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("switchyard-minilm-{i}"))
        .build()
}

/// Cuts `seqs` (in order) into consecutive passes of at most [`MAX_PASS_TOKENS`] tokens
/// (a longer sequence gets a pass of its own).
fn plan_passes(seqs: &[Vec<u32>]) -> Vec<std::ops::Range<usize>> {
    let mut passes = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, seq) in seqs.iter().enumerate() {
        if i > start && tokens + seq.len() > MAX_PASS_TOKENS {
            passes.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += seq.len();
    }
    if start < seqs.len() {
        passes.push(start..seqs.len());
    }
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
    fn passes_cover_every_sequence_once_in_order() {
        assert!(plan_passes(&[]).is_empty());
        assert_eq!(plan_passes(&vec![vec![1; 16]; 10]), vec![0..10]);
        let seqs: Vec<Vec<u32>> = [4000, 10, 100, 4096, 5, 5]
            .iter()
            .map(|&n| vec![1; n])
            .collect();
        assert_eq!(plan_passes(&seqs), vec![0..2, 2..3, 3..4, 4..6]);
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
