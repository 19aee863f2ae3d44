//! A model2vec-style static encoder (token embeddings, mean-pooled): about a
//! thousand times cheaper than MiniLM and less accurate.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use model2vec_rs::model::StaticModel;

use crate::encoder::{Encoder, l2_normalize};
use crate::error::{EncodeError, LoadError};
use crate::files;

/// Model name reported by [`StaticEncoder::name`].
pub const STATIC_NAME: &str = "model2vec-static";

/// Maximum tokens pooled per text (the value the model's Python package uses).
const MAX_TOKENS: usize = 512;

/// A static (model2vec) sentence encoder: each token has a fixed vector and a
/// text's vector is the normalised mean of its tokens' vectors.
///
/// Loads the model shipped in the PyPI package `tokenlearn-static-model`
/// (10k-token vocabulary, 64 dimensions, int8 weights) or any model2vec model
/// directory with `config.json`, `model.safetensors` and `tokenizer.json`.
/// Texts are cut to 512 tokens (keeping the start).
pub struct StaticEncoder {
    model: StaticModel,
}

impl std::fmt::Debug for StaticEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticEncoder")
            .field("dim", &self.model.dim())
            .finish_non_exhaustive()
    }
}

impl StaticEncoder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    ///
    /// # Errors
    /// [`LoadError`] naming the missing or invalid file.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        files::check_dir(dir)?;
        let (config_path, config) = files::read(dir, "config.json")?;
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&config)
            .map_err(|e| files::invalid(&config_path, format!("not a JSON object: {e}")))?;
        // tokenizer.json (10 MB) is parsed once, by model2vec-rs below.
        let (tok_path, tokenizer) = files::read(dir, "tokenizer.json")?;
        let (model_path, model) = files::read(dir, "model.safetensors")?;
        files::check_safetensors(&model_path, &model)?;

        let model =
            StaticModel::from_bytes(&tokenizer, &model, &config, Some(true)).map_err(|e| {
                // model2vec-rs reports with anyhow; attribute the message to a file.
                let msg = format!("{e:#}");
                let path = if msg.contains("tokenizer") {
                    &tok_path
                } else if msg.contains("config") {
                    &config_path
                } else {
                    &model_path
                };
                files::invalid(path, msg)
            })?;
        if model.dim() == 0 {
            return Err(files::invalid(&model_path, "embedding dimension is 0"));
        }
        tracing::debug!(dir = %dir.display(), dim = model.dim(), "loaded static encoder");
        Ok(Self { model })
    }
}

impl Encoder for StaticEncoder {
    fn name(&self) -> &str {
        STATIC_NAME
    }

    fn dim(&self) -> usize {
        self.model.dim()
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncodeError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let owned: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        // model2vec-rs panics (rather than returning an error) if its tokenizer
        // fails; keep such a failure inside this call.
        let mut vectors = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.model
                .encode_with_args(&owned, Some(MAX_TOKENS), owned.len())
        }))
        .map_err(|_| EncodeError::Tokenize("static model tokenizer failed".to_owned()))?;
        // The model already normalises (`normalize: true`); renormalising is
        // cheap and makes the unit-norm contract independent of its config.
        for v in &mut vectors {
            l2_normalize(v);
        }
        Ok(vectors)
    }
}
