//! A deterministic fake encoder for unit tests (no model files needed).

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender};

use crate::encoder::{Encoder, l2_normalize};
use crate::error::EncodeError;

/// Reports batch entry on the first, waits for a release on the second.
type Gate = (Mutex<Sender<()>>, Mutex<Receiver<()>>);

/// Bag-of-words hashing encoder: each lowercase word adds 1 to one of `dim`
/// buckets. Texts sharing words are similar. `"FAIL"` gives an error and
/// `"PANIC"` panics. With a gate, every batch first reports on `entered` and
/// then waits for a message on `release`.
pub(crate) struct FakeEncoder {
    pub(crate) dim: usize,
    pub(crate) batches: Mutex<Vec<usize>>,
    gate: Option<Gate>,
}

impl FakeEncoder {
    pub(crate) fn new(dim: usize) -> Self {
        Self {
            dim,
            batches: Mutex::new(Vec::new()),
            gate: None,
        }
    }

    pub(crate) fn gated(dim: usize, entered: Sender<()>, release: Receiver<()>) -> Self {
        Self {
            gate: Some((Mutex::new(entered), Mutex::new(release))),
            ..Self::new(dim)
        }
    }

    pub(crate) fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }

    pub(crate) fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0; self.dim];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let h = word
                .to_lowercase()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
            v[(h % self.dim as u64) as usize] += 1.0;
        }
        l2_normalize(&mut v);
        v
    }
}

impl Encoder for FakeEncoder {
    fn name(&self) -> &str {
        "fake"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EncodeError> {
        self.batches.lock().unwrap().push(texts.len());
        if let Some((entered, release)) = &self.gate {
            // Either side may be gone once a test has what it needs.
            let _ = entered.lock().unwrap().send(());
            let _ = release.lock().unwrap().recv();
        }
        if texts.contains(&"PANIC") {
            panic!("fake encoder asked to panic");
        }
        if texts.contains(&"FAIL") {
            return Err(EncodeError::Inference("fake failure".to_owned()));
        }
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}
