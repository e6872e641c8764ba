//! Generates the seed-scale synthetic dataset, reports how long it took, and optionally
//! writes it as MovieLens CSV files.
//!
//! `cargo run --release -p hyperrec-catalog --example generate -- [OUT_DIR] [SEED]`

use std::path::PathBuf;
use std::time::Instant;

use hyperrec_catalog::synthetic::{SyntheticConfig, generate, write_movielens};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().map(PathBuf::from);
    let mut config = SyntheticConfig::default();
    if let Some(seed) = args.next() {
        config.seed = seed.parse()?;
    }
    let started = Instant::now();
    let dataset = generate(&config);
    println!(
        "generated {} items, {} ratings, {} tag applications ({} rayon threads) in {:.2?}",
        dataset.catalog.len(),
        dataset.ratings.len(),
        dataset.tags.len(),
        rayon::current_num_threads(),
        started.elapsed()
    );
    println!("catalog fingerprint {}", dataset.fingerprint());
    if let Some(dir) = out {
        let started = Instant::now();
        write_movielens(&dir, &dataset)?;
        println!("wrote {} in {:.2?}", dir.display(), started.elapsed());
    }
    Ok(())
}
