//! The encode stage of the pipeline.

use std::sync::Arc;

use hyperrec_stage::{Batch, Device, Stage, StageError};

use crate::{EncoderError, QueryEncoder};

/// Stage `"encode"`: turns each request's query into an L2-normalized embedding.
///
/// Reads `batch.requests[i].query`. Writes `seq_len`, `token_ids` and `attention_mask`
/// (`[n, seq_len]`, padded to the longest query) and `query_embeddings` (`[n, dim]`).
/// Queries in the LRU are served from it; the misses are encoded together in one forward
/// pass. The model runs on the CPU whatever the batch's device; the results are uploaded
/// to it, so the stage serves the CPU and GPU pipelines alike.
pub struct EncoderStage {
    queries: Arc<QueryEncoder>,
}

impl EncoderStage {
    /// The stage over a shared query encoder (its cache is shared with every holder).
    pub fn new(queries: Arc<QueryEncoder>) -> EncoderStage {
        EncoderStage { queries }
    }

    /// The query encoder, e.g. to read its cache counters.
    pub fn query_encoder(&self) -> &Arc<QueryEncoder> {
        &self.queries
    }
}

const NAME: &str = "encode";

fn stage_error(index: usize, error: EncoderError) -> StageError {
    match error {
        EncoderError::EmptyText | EncoderError::TextTooLong { .. } => {
            StageError::InvalidRequest(format!("request {index}: query: {error}"))
        }
        other => StageError::Failed {
            stage: NAME,
            message: other.to_string(),
        },
    }
}

impl<D: Device> Stage<D> for EncoderStage {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(&mut self, device: &D, batch: &mut Batch<D>) -> Result<(), StageError> {
        let dim = self.queries.dim();
        if batch.dim != dim {
            return Err(StageError::BatchShape {
                stage: NAME,
                expected: format!("embedding width {dim}"),
                found: format!("embedding width {}", batch.dim),
            });
        }
        let texts: Vec<&str> = batch.requests.iter().map(|r| r.query.as_str()).collect();
        let rows = self
            .queries
            .encoder()
            .tokenize_indexed(&texts)
            .map_err(|(index, error)| stage_error(index, error))?;
        let row_slices: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let tokens = self.queries.encoder().pad(&row_slices);
        let embeddings = self
            .queries
            .encode_with_rows(&texts, Some(&rows))
            .map_err(|(index, error)| stage_error(index, error))?;

        batch.seq_len = tokens.seq_len;
        device.resize(&mut batch.token_ids, tokens.ids.len())?;
        device.upload(&tokens.ids, &mut batch.token_ids)?;
        device.resize(&mut batch.attention_mask, tokens.attention_mask.len())?;
        device.upload(&tokens.attention_mask, &mut batch.attention_mask)?;
        device.resize(&mut batch.query_embeddings, embeddings.len())?;
        device.upload(&embeddings, &mut batch.query_embeddings)?;
        Ok(())
    }
}
