//! `cargo xtask gpu-bundle`: the GPU device tests and `gpu-bench`, built here (the device
//! machine has CUDA but no Rust) and packed into one archive with a script that runs them.
//!
//! The archive holds every `hyperrec-kernels` test binary that needs a GPU (`gpu_*`), the
//! `gpu-bench` binary, the CUDA sources and measurement tools (`crates/kernels/{cuda,tools}`,
//! for nvcc or ncu on the device), and `run.sh`: each test binary one test at a time, then
//! `gpu-bench` with the arguments given to the script. On the device, from the repository
//! root: `mkdir -p /tmp/b && tar xzf DIR/bundle.tgz -C /tmp/b && /tmp/b/run.sh --reps 30`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;

#[derive(Args)]
pub struct GpuBundleArgs {
    /// Folder for `bundle.tgz` (keep it git-ignored: `.device-carry/` is).
    #[arg(long, default_value = ".device-carry/gpu")]
    out: PathBuf,
}

/// The run script put beside the binaries.
const RUN_SCRIPT: &str = r#"#!/usr/bin/env bash
# Device tests (one test at a time: they share the GPU), then gpu-bench with this script's
# arguments. Exits non-zero when a test binary fails.
set -u
cd "$(dirname "$0")"
failed=0
for test in gpu_*; do
  echo "== $test"
  ./"$test" --test-threads=1 || failed=1
done
echo "== gpu-bench $*"
./gpu-bench "$@" || failed=1
exit $failed
"#;

pub fn run(args: GpuBundleArgs) -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let mut binaries = built_executables(&[
        "test",
        "--release",
        "-p",
        "hyperrec-kernels",
        "--features",
        "cuda",
        "--no-run",
    ])?;
    binaries.retain(|(name, _)| name.starts_with("gpu_"));
    if binaries.is_empty() {
        bail!("no gpu_* test binary was built");
    }
    let bench = built_executables(&[
        "build",
        "--release",
        "-p",
        "hyperrec-kernels",
        "--features",
        "cuda",
        "--bin",
        "gpu-bench",
    ])?;
    binaries.extend(bench.into_iter().filter(|(name, _)| name == "gpu-bench"));

    let out = root.join(&args.out);
    let staging = out.join("staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("clearing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    for (name, path) in &binaries {
        let target = staging.join(name);
        std::fs::copy(path, &target)
            .with_context(|| format!("copying {} to {}", path.display(), target.display()))?;
        // Debug info would take the archive past what travels to the device; `strip` may be
        // missing, and then the binaries go as they are.
        let _ = Command::new("strip").arg(&target).status();
    }
    for folder in ["cuda", "tools"] {
        copy_folder(
            &root.join("crates/kernels").join(folder),
            &staging.join(folder),
        )?;
    }
    let script = staging.join("run.sh");
    std::fs::write(&script, RUN_SCRIPT).with_context(|| format!("writing {}", script.display()))?;
    make_executable(&script)?;

    let archive = out.join("bundle.tgz");
    let status = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&staging)
        .arg(".")
        .status()
        .context("starting tar")?;
    if !status.success() {
        bail!("tar failed ({status})");
    }
    std::fs::remove_dir_all(&staging).ok();
    let bytes = std::fs::metadata(&archive)?.len();
    println!(
        "gpu-bundle: {} ({} binaries, {:.1} MiB)",
        archive.display(),
        binaries.len(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// Runs cargo with `--message-format=json` and returns (target name, path) of every
/// executable it reports.
fn built_executables(args: &[&str]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {cargo}"))?;
    if !output.status.success() {
        bail!("cargo {} failed ({})", args.join(" "), output.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let executable = message.get("executable").and_then(|e| e.as_str());
        let name = message
            .get("target")
            .and_then(|t| t.get("name"))
            .and_then(|n| n.as_str());
        if let (Some(executable), Some(name)) = (executable, name) {
            found.push((name.to_string(), PathBuf::from(executable)));
        }
    }
    Ok(found)
}

fn copy_folder(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.is_file() {
            let target = to.join(path.file_name().context("file name")?);
            std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path)?.permissions();
    permissions.set_mode(0o755);
    std::fs::set_permissions(path, permissions)
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}
