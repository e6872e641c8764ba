//! Item embeddings on disk, reused while the model and the catalog are unchanged.
//!
//! The file is a safetensors file with one tensor, [`TENSOR_NAME`] (`F32`, shape
//! `[n_items, dim]`, little-endian), and one metadata entry, [`FINGERPRINT_KEY`], holding
//! [`combined_fingerprint`] of the encoder model and the catalog. A reader that computes a
//! different fingerprint treats the file as stale and re-embeds the catalog.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::CatalogError;
use crate::state::ItemEmbeddings;

/// Name of the embedding tensor in the file.
pub const TENSOR_NAME: &str = "item_embeddings";
/// Metadata key of the fingerprint.
pub const FINGERPRINT_KEY: &str = "fingerprint";

/// The fingerprint an embedding file is keyed by: the model's and the catalog's
/// (see `Catalog::fingerprint`), in a readable form.
pub fn combined_fingerprint(model: &str, catalog: &str) -> String {
    format!("model={model};catalog={catalog}")
}

/// Writes `embeddings` to `path` with `fingerprint`, atomically: the bytes go to a
/// temporary file in the same directory, which is synced and then renamed over `path`, so
/// a reader never sees a half-written store.
pub fn save(
    path: &Path,
    embeddings: &ItemEmbeddings,
    fingerprint: &str,
) -> Result<(), CatalogError> {
    let bytes: Vec<u8> = embeddings
        .as_slice()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::F32, vec![embeddings.len(), embeddings.dim()], &bytes)
        .map_err(|e| CatalogError::Serialize {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let metadata = HashMap::from([(FINGERPRINT_KEY.to_string(), fingerprint.to_string())]);
    let serialized =
        safetensors::serialize([(TENSOR_NAME, view)], Some(metadata)).map_err(|e| {
            CatalogError::Serialize {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;

    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| CatalogError::io("create", parent, e))?;
    }
    let temporary = temporary_path(path);
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serialized)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        // Best effort: the temporary file is ours and useless now.
        let _ = std::fs::remove_file(&temporary);
        return Err(CatalogError::io("write", temporary, e));
    }
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        CatalogError::io("rename to", path, e)
    })
}

/// A sibling of `path` that no concurrent writer (other process or thread) uses.
fn temporary_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// Reads the embeddings at `path` if they were saved with `fingerprint`.
///
/// `Ok(None)` when the file does not exist or is stale (another fingerprint, or none);
/// an error when it exists but cannot be read or is not a valid embedding store (bad
/// safetensors, missing tensor, wrong dtype or rank).
pub fn load_if_fresh(
    path: &Path,
    fingerprint: &str,
) -> Result<Option<ItemEmbeddings>, CatalogError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CatalogError::io("read", path, e)),
    };
    let corrupt = |message: String| CatalogError::CorruptStore {
        path: path.to_path_buf(),
        message,
    };
    let (_, metadata) =
        SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(format!("{e:?}")))?;
    let stored = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(FINGERPRINT_KEY));
    if stored.map(String::as_str) != Some(fingerprint) {
        return Ok(None);
    }
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("{e:?}")))?;
    let tensor = tensors
        .tensor(TENSOR_NAME)
        .map_err(|_| corrupt(format!("no tensor `{TENSOR_NAME}`")))?;
    if tensor.dtype() != Dtype::F32 {
        return Err(corrupt(format!("dtype {:?}, expected F32", tensor.dtype())));
    }
    let &[rows, dim] = tensor.shape() else {
        return Err(corrupt(format!(
            "shape {:?}, expected [n, dim]",
            tensor.shape()
        )));
    };
    let data: Vec<f32> = tensor
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if data.len() != rows * dim {
        return Err(corrupt(format!(
            "{} values for shape [{rows}, {dim}]",
            data.len()
        )));
    }
    ItemEmbeddings::new(dim, data)
        .map(Some)
        .ok_or_else(|| corrupt(format!("dimension {dim} is invalid")))
}
