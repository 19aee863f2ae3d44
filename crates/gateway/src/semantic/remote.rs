//! A remote OpenAI-compatible embeddings service (`POST {url}/embeddings`), used instead of
//! the node's in-process encoder by proxies that name one (`semantic_service`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderValue;
use serde::Deserialize;
use switchyard_model::SemanticService;
use switchyard_semantic::l2_normalize;

use crate::error::error_chain;

/// How long one embeddings call may take (prompt at request time, utterances at compile).
pub(crate) const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Utterance vectors already fetched, per (url, model): unchanged utterances are not sent
/// again when a new snapshot is compiled.
pub(crate) type RemoteCaches =
    Mutex<HashMap<(String, String), Arc<Mutex<HashMap<String, Vec<f32>>>>>>;

#[derive(Debug)]
pub(crate) struct RemoteEmbedder {
    client: reqwest::Client,
    /// The semantic service's name: what clients may see (never its URL).
    service: String,
    endpoint: String,
    model: String,
    authorization: Option<HeaderValue>,
    /// Utterance vectors of this (url, model), shared across snapshots.
    cache: Arc<Mutex<HashMap<String, Vec<f32>>>>,
}

#[derive(Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    embedding: Vec<f32>,
    #[serde(default)]
    index: Option<usize>,
}

impl RemoteEmbedder {
    pub(crate) fn new(
        client: reqwest::Client,
        service: &SemanticService,
        caches: &RemoteCaches,
    ) -> Result<RemoteEmbedder, String> {
        let authorization = match &service.api_key {
            None => None,
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
                    .map_err(|_| "the semantic service api_key is not a valid header value")?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        let cache = {
            let mut caches = caches
                .lock()
                .map_err(|_| "remote embedding cache poisoned")?;
            Arc::clone(
                caches
                    .entry((service.url.clone(), service.model.clone()))
                    .or_default(),
            )
        };
        Ok(RemoteEmbedder {
            client,
            service: service.name.clone(),
            endpoint: format!("{}/embeddings", service.url.trim_end_matches('/')),
            model: service.model.clone(),
            authorization,
            cache,
        })
    }

    /// How the dry run names this embedder: the service's name and model. The URL stays in
    /// the control plane's admin API and the node's log; clients of a proxy never see it.
    pub(crate) fn name(&self) -> String {
        format!("remote:{}/{}", self.service, self.model)
    }

    /// L2-normalised vectors of `texts`, in order, in one call.
    pub(crate) async fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let body = serde_json::json!({"model": self.model, "input": texts});
        let mut request = self
            .client
            .post(&self.endpoint)
            .timeout(REMOTE_TIMEOUT)
            .json(&body);
        if let Some(auth) = &self.authorization {
            request = request.header(axum::http::header::AUTHORIZATION, auth.clone());
        }
        let what = || format!("semantic service {}", self.endpoint);
        let response = request
            .send()
            .await
            .map_err(|e| format!("{}: {}", what(), error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{} answered {status}", what()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("{}: {}", what(), error_chain(&e)))?;
        let parsed: EmbeddingsResponse = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: not an embeddings response: {e}", what()))?;
        if parsed.data.len() != texts.len() {
            return Err(format!(
                "{}: {} embeddings for {} inputs",
                what(),
                parsed.data.len(),
                texts.len()
            ));
        }
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (i, item) in parsed.data.into_iter().enumerate() {
            let at = item.index.unwrap_or(i);
            let slot = out
                .get_mut(at)
                .ok_or_else(|| format!("{}: embedding index {at} out of range", what()))?;
            let mut v = item.embedding;
            if v.is_empty() || v.iter().any(|x| !x.is_finite()) {
                return Err(format!("{}: empty or non-finite embedding", what()));
            }
            l2_normalize(&mut v);
            *slot = Some(v);
        }
        let out: Option<Vec<Vec<f32>>> = out.into_iter().collect();
        let out = out.ok_or_else(|| format!("{}: missing embedding indices", what()))?;
        let dim = out.first().map(Vec::len).unwrap_or_default();
        if out.iter().any(|v| v.len() != dim) {
            return Err(format!("{}: embeddings of different sizes", what()));
        }
        Ok(out)
    }

    /// Vectors of utterances, fetching only those not seen before with this (url, model).
    pub(crate) async fn embed_utterances(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let missing: Vec<&str> = {
            let cache = self.cache.lock().map_err(|_| "remote cache poisoned")?;
            let mut seen = std::collections::HashSet::new();
            texts
                .iter()
                .copied()
                .filter(|t| !cache.contains_key(*t) && seen.insert(*t))
                .collect()
        };
        if !missing.is_empty() {
            let fetched = self.embed_batch(&missing).await?;
            let mut cache = self.cache.lock().map_err(|_| "remote cache poisoned")?;
            for (t, v) in missing.iter().zip(fetched) {
                cache.insert((*t).to_owned(), v);
            }
        }
        let cache = self.cache.lock().map_err(|_| "remote cache poisoned")?;
        texts
            .iter()
            .map(|t| {
                cache
                    .get(*t)
                    .cloned()
                    .ok_or_else(|| "utterance vector missing after fetch".to_owned())
            })
            .collect()
    }
}
