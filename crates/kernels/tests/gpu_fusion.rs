//! The GPU fusion stage against the CPU fusion stage, on fresh random inputs, for both of
//! its kernels (one warp per query where the width is whole 128-wide chunks up to 1024, one
//! block per query otherwise), and the fp16 copy it writes for the score GEMM. Skips with a
//! visible notice where there is no CUDA device.

#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use half::f16;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{cuda_or_skip, random_items, random_queries, random_requests, random_users, seed};
use hyperrec_fusion::{Fusion, FusionConfig};
use hyperrec_kernels::{CudaFusion, DeviceTables, TablesConfig};
use hyperrec_stage::{Batch, Cpu, Device, Stage};

#[test]
fn both_fusion_kernels_and_the_fp16_copy_match_the_cpu_stage() {
    let Some(cuda) = cuda_or_skip("both_fusion_kernels_and_the_fp16_copy_match_the_cpu_stage")
    else {
        return;
    };
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // 96 and 200: the block kernel; 384, 640 and 1024: the warp kernel.
    for dim in [96usize, 200, 384, 640, 1024] {
        let items = random_items(&mut rng, 700, dim);
        let users = random_users(&mut rng, &items, 300, 30);
        let tables = Arc::new(Mutex::new(
            DeviceTables::new(&cuda, &items, &users.read(), TablesConfig::default())
                .expect("device tables"),
        ));
        for n in [1usize, 7, 300] {
            let alpha = rng.random_range(0.0f32..1.0);
            let context = format!("seed {seed}, dim {dim}, n {n}, alpha {alpha}");
            // Unknown users, users without a profile and groups come from random_requests.
            let requests = random_requests(&mut rng, 300, n, 10);
            let queries = random_queries(&mut rng, n, dim);

            let mut cpu = Batch::new(&Cpu, dim).expect("cpu batch");
            cpu.reset(&Cpu, requests.clone()).expect("reset");
            cpu.query_embeddings.copy_from_slice(&queries);
            Fusion::new(users.clone(), FusionConfig { alpha })
                .expect("fusion")
                .run(&Cpu, &mut cpu)
                .expect("cpu fusion");

            let mut gpu = Batch::new(&cuda, dim).expect("gpu batch");
            gpu.reset(&cuda, requests).expect("reset");
            cuda.upload(&queries, &mut gpu.query_embeddings)
                .expect("upload");
            let mut fusion =
                CudaFusion::new(&cuda, users.clone(), tables.clone(), alpha).expect("fusion");
            // Poisoned, so a row the kernel did not write shows.
            let mut half = cuda.zeros::<u16>(n * dim).expect("alloc");
            cuda.upload(&vec![0x7e00u16; n * dim], &mut half)
                .expect("poison");
            fusion
                .run_with_half(&cuda, &mut gpu, &mut half)
                .expect("gpu fusion");
            let mut fused = Vec::new();
            cuda.download(&gpu.fused, &mut fused).expect("download");
            let mut fused_half = Vec::new();
            cuda.download(&half, &mut fused_half).expect("download");

            let mut largest = 0.0f32;
            for q in 0..n {
                let (want, got) = (
                    &cpu.fused[q * dim..(q + 1) * dim],
                    &fused[q * dim..(q + 1) * dim],
                );
                let diff = want
                    .iter()
                    .zip(got)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt();
                let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
                largest = largest.max(diff / norm.max(1.0));
                // The device sums the fp16 copies of the profiles (the CPU their fp32
                // originals): half-precision rounding, ~3e-4 of a unit row, not 1e-6.
                assert!(
                    diff <= 3e-3 * norm.max(1.0),
                    "{context}: fused row {q} differs by {diff} (norm {norm})"
                );
                assert_eq!(
                    cpu.notes[q].cold_start, gpu.notes[q].cold_start,
                    "{context}: cold start of query {q}"
                );
            }
            eprintln!("{context}: largest relative row difference {largest:.2e}");
            // The fp16 copy is the fp32 result rounded to nearest, bit for bit (what the
            // conversion pass it replaces writes).
            for (i, (&value, &bits)) in fused.iter().zip(&fused_half).enumerate() {
                assert_eq!(
                    bits,
                    f16::from_f32(value).to_bits(),
                    "{context}: fp16 copy of element {i} ({value})"
                );
            }
        }
    }
}
