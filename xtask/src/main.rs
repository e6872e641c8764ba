//! `cargo xtask`: every piece of project automation lives here.
//!
//! xtask itself stays light (it builds in seconds): heavy work runs in the crates that own
//! it, which xtask starts with `cargo run --release`.

mod bench;
mod eval;
mod gpu_bundle;
mod invariants;
mod ptx;

use std::path::PathBuf;
use std::process::{Command as Process, ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "hyperrec project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the workspace's architecture invariants (dependency rules between crates).
    CheckInvariants,
    /// Compile the CUDA kernels to PTX for sm_90 (needs nvcc 13.0).
    Ptx(ptx::PtxArgs),
    /// Run the latency/QPS suite (see crates/bench).
    Bench(bench::BenchArgs),
    /// Measure recommendation quality on MovieLens (see crates/eval).
    Eval(eval::EvalArgs),
    /// Build the GPU device tests and gpu-bench into one archive for a CUDA machine.
    GpuBundle(gpu_bundle::GpuBundleArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::CheckInvariants => invariants::run(),
        Command::Ptx(args) => ptx::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Eval(args) => eval::run(args),
        Command::GpuBundle(args) => gpu_bundle::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Root of the workspace (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `cargo <args>` in the workspace root, failing when it fails.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Process::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("starting {cargo}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
