//! Error types, one per boundary: loading a model, encoding text, building or
//! querying an index, and the async embedding service.

use std::path::PathBuf;

/// A model directory could not be loaded.
///
/// Every variant names the file involved so that an operator can tell a missing
/// download from a corrupt one.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model directory itself does not exist (or is not a directory).
    #[error("model directory {} does not exist or is not a directory", path.display())]
    MissingDir {
        /// The directory that was looked for.
        path: PathBuf,
    },
    /// A required file is absent from the model directory.
    #[error("model file {} is missing", path.display())]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("cannot read model file {}: {source}", path.display())]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its content is not what the encoder needs
    /// (truncated, not JSON, wrong tensor shapes, ...).
    #[error("invalid model file {}: {reason}", path.display())]
    Invalid {
        /// The file that is wrong.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The encoder's worker threads could not be started.
    #[error("cannot start encoder threads: {0}")]
    Threads(String),
}

/// Encoding text into vectors failed.
///
/// Cloneable so that one failed batch can be reported to every caller whose
/// text was in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The tokenizer rejected the input.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
    /// The model's forward pass failed.
    #[error("model inference failed: {0}")]
    Inference(String),
}

/// Building or querying a [`crate::TopicIndex`] failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    /// Encoding the utterances failed.
    #[error("encoding utterances failed: {0}")]
    Encode(#[from] EncodeError),
    /// A topic was given no utterances; it could never be matched.
    #[error("topic {label:?} has no utterances")]
    EmptyTopic {
        /// The topic's label.
        label: String,
    },
    /// Two topics share one label.
    #[error("topic label {label:?} is used more than once")]
    DuplicateTopic {
        /// The repeated label.
        label: String,
    },
    /// A vector's length differs from the index's dimension.
    #[error("vector has {got} dimensions, expected {expected}")]
    DimensionMismatch {
        /// The index's (or cache's) dimension.
        expected: usize,
        /// The offending vector's length.
        got: usize,
    },
    /// A vector contains NaN or infinity.
    #[error("vector contains a non-finite value")]
    NonFinite,
    /// An [`crate::EmbeddingCache`] filled by one encoder was used with another.
    #[error("embedding cache belongs to encoder {cache:?}, not {encoder:?}")]
    CacheEncoderMismatch {
        /// The encoder the cache was created for.
        cache: String,
        /// The encoder it was used with.
        encoder: String,
    },
}

/// An [`crate::EmbeddingService`] request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmbedError {
    /// The request queue is full: the encoder is saturated. Callers should
    /// shed load (e.g. skip semantic routing for this request) rather than wait.
    #[error("embedding queue is full ({capacity} requests waiting)")]
    QueueFull {
        /// The configured queue capacity.
        capacity: usize,
    },
    /// The service has been shut down, or its worker thread has stopped.
    #[error("embedding service is shut down")]
    ShutDown,
    /// The encoder failed on the batch holding this text.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}
