//! What the PyTorch peer reads: the same state and traffic the suite ran, as `.npy` arrays
//! and JSON, plus an fp16 copy of the model directory small enough to carry to a GPU box.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use hyperrec_catalog::{ItemEmbeddings, UserTable};
use hyperrec_stage::{Context, Request};
use serde::Serialize;
use thiserror::Error;

use crate::suite::Traffic;

/// Why an export failed.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serializing {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("model weights {path}: {message}")]
    Weights { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Element types `.npy` files are written in.
pub trait NpyElement: Copy {
    /// NumPy's `descr` of the type (little-endian).
    const DESCR: &'static str;
    fn write_le(self, out: &mut Vec<u8>);
}

impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NpyElement for i32 {
    const DESCR: &'static str = "<i4";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl NpyElement for i64 {
    const DESCR: &'static str = "<i8";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// Encodes a C-order array in NumPy's `.npy` format, version 1.0.
pub fn npy_bytes<T: NpyElement>(shape: &[usize], data: &[T]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("{one},"),
        _ => shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': ({dims}), }}",
        T::DESCR
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &x in data {
        x.write_le(&mut out);
    }
    out
}

fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), ExportError> {
    std::fs::write(path, npy_bytes(shape, data)).map_err(io_error(path))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ExportError> {
    let file = std::fs::File::create(path).map_err(io_error(path))?;
    let mut writer = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut writer, value).map_err(|source| ExportError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    writer.flush().map_err(io_error(path))
}

/// The sizes and knobs the peer mirrors.
#[derive(Clone, Debug, Serialize)]
pub struct PeerConfig {
    pub alpha: f32,
    pub candidates: usize,
    pub history_len: usize,
    pub history_weight: f32,
    pub rerank_heads: usize,
    pub seed: u64,
}

/// One request as the peer sees it: users as table rows (-1: unknown).
#[derive(Clone, Debug, Serialize)]
struct PeerRequest {
    user_row: i64,
    companion_rows: Vec<i64>,
    query: String,
    context: Vec<String>,
    k: usize,
    exclude_seen: bool,
}

#[derive(Serialize)]
struct PeerBatches {
    size: usize,
    batches: Vec<Vec<PeerRequest>>,
}

#[derive(Serialize)]
struct PeerTraffic {
    cold: PeerRequest,
    warmup: Vec<PeerRequest>,
    latency: Vec<PeerRequest>,
    batches: Vec<PeerBatches>,
    encode_texts: Vec<String>,
}

/// Writes the peer's input to `dir`: `items.npy` `[n_items, dim]`, `users.npy`
/// `[n_users, dim]`, `history.npy` `[n_users, history_len]` (most recent last, padded with
/// -1 in front), `seen_offsets.npy` / `seen_items.npy` (CSR of each user's seen items),
/// `config.json` and `traffic.json`. `phrases` maps a request context to its context
/// phrases (the rerank's vocabulary rules).
pub fn write_peer_input(
    dir: &Path,
    items: &ItemEmbeddings,
    users: &UserTable,
    traffic: &Traffic,
    config: &PeerConfig,
    phrases: &dyn Fn(&Context) -> Vec<String>,
) -> Result<(), ExportError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let dim = items.dim();
    write_npy(
        &dir.join("items.npy"),
        &[items.len(), dim],
        items.as_slice(),
    )?;
    write_npy(
        &dir.join("users.npy"),
        &[users.len(), dim],
        users.embeddings(),
    )?;

    let h = config.history_len;
    let mut history = vec![-1i32; users.len() * h];
    let mut seen_offsets = Vec::with_capacity(users.len() + 1);
    let mut seen_items = Vec::new();
    seen_offsets.push(0i64);
    for user in 0..users.len() as u32 {
        let recent = users.recent(user, h);
        let row = &mut history[user as usize * h..(user as usize + 1) * h];
        for (slot, entry) in row[h - recent.len()..].iter_mut().zip(recent) {
            *slot = entry.item as i32;
        }
        seen_items.extend(users.seen(user).iter().map(|&i| i as i32));
        seen_offsets.push(seen_items.len() as i64);
    }
    write_npy(&dir.join("history.npy"), &[users.len(), h], &history)?;
    write_npy(
        &dir.join("seen_offsets.npy"),
        &[seen_offsets.len()],
        &seen_offsets,
    )?;
    write_npy(
        &dir.join("seen_items.npy"),
        &[seen_items.len()],
        &seen_items,
    )?;
    write_json(&dir.join("config.json"), config)?;

    let row = |id| users.index_of(id).map_or(-1, i64::from);
    let convert = |r: &Request| PeerRequest {
        user_row: row(r.user),
        companion_rows: r.context.companions.iter().map(|&c| row(c)).collect(),
        query: r.query.clone(),
        context: phrases(&r.context),
        k: r.k,
        exclude_seen: r.exclude_seen,
    };
    let peer_traffic = PeerTraffic {
        cold: convert(&traffic.cold),
        warmup: traffic.warmup.iter().map(convert).collect(),
        latency: traffic.latency.iter().map(convert).collect(),
        batches: traffic
            .batches
            .iter()
            .map(|(size, runs)| PeerBatches {
                size: *size,
                batches: runs
                    .iter()
                    .map(|b| b.iter().map(convert).collect())
                    .collect(),
            })
            .collect(),
        encode_texts: traffic.encode_texts.clone(),
    };
    write_json(&dir.join("traffic.json"), &peer_traffic)
}

/// Copies a model directory (config, tokenizer, safetensors weights) to `out`, with every
/// f32 tensor stored as f16: all-MiniLM-L6-v2 shrinks from 90 MB to 45 MB, under the
/// 64 MiB a device call may carry.
pub fn write_fp16_model(
    config: &Path,
    tokenizer: &Path,
    weights: &Path,
    out: &Path,
) -> Result<(), ExportError> {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};

    std::fs::create_dir_all(out).map_err(io_error(out))?;
    std::fs::copy(config, out.join("config.json")).map_err(io_error(config))?;
    std::fs::copy(tokenizer, out.join("tokenizer.json")).map_err(io_error(tokenizer))?;
    let bytes = std::fs::read(weights).map_err(io_error(weights))?;
    let weights_error = |message: String| ExportError::Weights {
        path: weights.to_path_buf(),
        message,
    };
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| weights_error(e.to_string()))?;
    let mut converted: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        let (dtype, data) = if view.dtype() == Dtype::F32 {
            let halves: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .flat_map(|b| {
                    half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
                })
                .collect();
            (Dtype::F16, halves)
        } else {
            (view.dtype(), view.data().to_vec())
        };
        converted.push((name, dtype, view.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView<'_>)> = converted
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| weights_error(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let path = out.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).map_err(|e| weights_error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_array() {
        let bytes = npy_bytes(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ascii header");
        assert!(header.contains("'descr': '<f4'"), "{header}");
        assert!(header.contains("'shape': (2, 3)"), "{header}");
        assert!(header.ends_with('\n'));
        let body = &bytes[10 + header_len..];
        assert_eq!(body.len(), 24);
        assert_eq!(&body[20..24], &6.0f32.to_le_bytes());
    }

    #[test]
    fn one_dimensional_shapes_keep_the_tuple_comma() {
        let bytes = npy_bytes(&[3], &[1i64, 2, 3]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ascii header");
        assert!(header.contains("'shape': (3,)"), "{header}");
        assert!(header.contains("'<i8'"), "{header}");
    }
}
