//! Embeddings from a model in `[models]`, through the same route, limits and telemetry as a client's
//! `POST /v1/embeddings` (the call is recorded under the route label `internal`, with its cost).

use std::sync::OnceLock;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::{EmbedError, Embedder, normalize};
use crate::protocol::openai::EmbeddingsRequest;
use crate::provider::CallContext;
use crate::state::{AppState, WeakState};
use crate::telemetry::call::{Call, Operation, RequestParams};

/// An embedder backed by a configured embeddings model.
pub struct ProviderEmbedder {
    model: String,
    dims: usize,
    id: String,
    state: OnceLock<WeakState>,
}

impl ProviderEmbedder {
    /// Embeds with `model`, whose vectors have `dims` dimensions. Call [`ProviderEmbedder::bind`] once
    /// the state exists.
    pub fn new(model: &str, dims: usize) -> Self {
        Self {
            model: model.to_owned(),
            dims,
            id: format!("model:{model}:{dims}"),
            state: OnceLock::new(),
        }
    }

    /// Connects the embedder to the gateway it belongs to.
    pub fn bind(&self, state: &AppState) {
        let _ = self.state.set(state.downgrade());
    }

    async fn call(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let state = self
            .state
            .get()
            .and_then(WeakState::upgrade)
            .ok_or_else(|| EmbedError::Call("the gateway is shutting down".to_owned()))?;
        let route = state
            .providers
            .route(&self.model)
            .map_err(|e| EmbedError::Call(e.to_string()))?
            .clone();
        let call = Call::internal("embed");
        call.begin(
            Operation::Embeddings,
            &self.model,
            false,
            RequestParams::default(),
        );
        let ctx = CallContext {
            call: std::sync::Arc::clone(&call),
            ..CallContext::default()
        };
        let req = EmbeddingsRequest {
            model: self.model.clone(),
            input: Value::Array(texts.iter().cloned().map(Value::String).collect()),
            extra: crate::protocol::openai::Extra::new(),
        };
        let result = route.embeddings(req, ctx).await;
        let status = match &result {
            Ok(_) => 200,
            Err(e) => {
                call.fail(e);
                e.status().as_u16()
            }
        };
        call.finish(status, true, &state.obs);
        let reply = result.map_err(|e| EmbedError::Call(e.to_string()))?;
        parse(&reply.data, texts.len(), self.dims)
    }
}

/// The vectors of an OpenAI embeddings reply (`data[].embedding` float arrays, ordered by `index`).
fn parse(data: &[Value], count: usize, dims: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
    if data.len() != count {
        return Err(EmbedError::Malformed(format!(
            "{} vectors for {count} texts",
            data.len()
        )));
    }
    let mut out = vec![Vec::new(); count];
    for (position, item) in data.iter().enumerate() {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(position);
        let vector: Vec<f32> = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| EmbedError::Malformed("`embedding` is not a float array".to_owned()))?
            .iter()
            .map(|x| {
                #[expect(clippy::cast_possible_truncation, reason = "vectors are kept as f32")]
                x.as_f64().map(|f| f as f32)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| EmbedError::Malformed("`embedding` holds a non-number".to_owned()))?;
        if vector.len() != dims {
            return Err(EmbedError::Malformed(format!(
                "{} dimensions, expected {dims}",
                vector.len()
            )));
        }
        let slot = out
            .get_mut(index)
            .ok_or_else(|| EmbedError::Malformed(format!("index {index} out of range")))?;
        *slot = vector;
    }
    for v in &mut out {
        if v.is_empty() {
            return Err(EmbedError::Malformed("a text got no vector".to_owned()));
        }
        normalize(v);
    }
    Ok(out)
}

impl Embedder for ProviderEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, EmbedError>> {
        Box::pin(self.call(texts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_in_index_order_and_rejects_bad_replies() {
        let data = [
            json!({"index": 1, "embedding": [0.0, 2.0]}),
            json!({"index": 0, "embedding": [3.0, 4.0]}),
        ];
        let v = parse(&data, 2, 2).unwrap();
        assert_eq!(v, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        assert!(matches!(parse(&data, 3, 2), Err(EmbedError::Malformed(_))));
        assert!(matches!(parse(&data, 2, 3), Err(EmbedError::Malformed(_))));
        let text = [json!({"index": 0, "embedding": "AAAA"})];
        assert!(matches!(parse(&text, 1, 2), Err(EmbedError::Malformed(_))));
    }
}
