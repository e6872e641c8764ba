//! The on-disk embedding store: round trip, staleness, corruption, atomic writes.

use std::time::{SystemTime, UNIX_EPOCH};

use hyperrec_catalog::store::{self, combined_fingerprint};
use hyperrec_catalog::{CatalogError, ItemEmbeddings};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

fn random_embeddings(seed: u64, rows: usize, dim: usize) -> ItemEmbeddings {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..rows * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    ItemEmbeddings::new(dim, data).expect("shape")
}

#[test]
fn saved_embeddings_load_back_when_the_fingerprint_matches() {
    let seed = clock_seed();
    let embeddings = random_embeddings(seed, 257, 384);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested/items.safetensors");
    let fingerprint = combined_fingerprint("minilm-abc", "catalog-123");
    store::save(&path, &embeddings, &fingerprint).expect("save");
    let loaded = store::load_if_fresh(&path, &fingerprint).expect("load");
    assert_eq!(loaded.as_ref(), Some(&embeddings), "seed {seed}");
    // Nothing but the store is left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["items.safetensors"]);
}

#[test]
fn a_changed_model_or_catalog_makes_the_store_stale() {
    let embeddings = random_embeddings(clock_seed(), 10, 8);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("items.safetensors");
    store::save(&path, &embeddings, &combined_fingerprint("m1", "c1")).expect("save");
    for stale in [
        combined_fingerprint("m2", "c1"),
        combined_fingerprint("m1", "c2"),
    ] {
        assert_eq!(store::load_if_fresh(&path, &stale).expect("load"), None);
    }
    // Saving again with the new fingerprint replaces the file.
    let newer = random_embeddings(clock_seed().wrapping_add(1), 12, 8);
    store::save(&path, &newer, &combined_fingerprint("m2", "c1")).expect("save");
    let loaded = store::load_if_fresh(&path, &combined_fingerprint("m2", "c1")).expect("load");
    assert_eq!(loaded, Some(newer));
}

#[test]
fn a_missing_store_is_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let loaded = store::load_if_fresh(&dir.path().join("absent.safetensors"), "x").expect("ok");
    assert_eq!(loaded, None);
}

#[test]
fn a_corrupt_store_is_an_error_naming_the_file() {
    let embeddings = random_embeddings(clock_seed(), 20, 16);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("items.safetensors");
    store::save(&path, &embeddings, "fp").expect("save");
    let bytes = std::fs::read(&path).expect("read");

    let truncated = &bytes[..bytes.len() - 7];
    let garbage = b"definitely not safetensors".to_vec();
    let mut bad_header = bytes.clone();
    bad_header[9] = b'#';
    for (label, content) in [
        ("truncated", truncated.to_vec()),
        ("garbage", garbage),
        ("bad header", bad_header),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&path, &content).expect("write");
        match store::load_if_fresh(&path, "fp") {
            Err(error @ CatalogError::CorruptStore { .. }) => {
                assert!(
                    error.to_string().contains("items.safetensors"),
                    "{label}: {error}"
                );
            }
            other => panic!("{label}: expected a corrupt-store error, got {other:?}"),
        }
    }
}

#[test]
fn a_store_without_the_embedding_tensor_is_corrupt() {
    use safetensors::tensor::{Dtype, TensorView};
    use std::collections::HashMap;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("items.safetensors");
    let data = vec![0u8; 16];
    let view = TensorView::new(Dtype::F32, vec![2, 2], &data).expect("view");
    let metadata = HashMap::from([("fingerprint".to_string(), "fp".to_string())]);
    let bytes = safetensors::serialize([("something_else", view)], Some(metadata)).expect("ser");
    std::fs::write(&path, bytes).expect("write");
    let error = store::load_if_fresh(&path, "fp").expect_err("no tensor");
    assert!(error.to_string().contains("item_embeddings"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn any_embeddings_round_trip_bit_exactly(
        dim in 1usize..40,
        rows in 0usize..30,
        seed in any::<u64>(),
        fingerprint in "\\PC{0,40}",
    ) {
        let embeddings = random_embeddings(seed, rows, dim);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("e.safetensors");
        store::save(&path, &embeddings, &fingerprint).expect("save");
        let loaded = store::load_if_fresh(&path, &fingerprint).expect("load");
        prop_assert_eq!(loaded, Some(embeddings));
    }
}
