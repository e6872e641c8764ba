//! `cargo xtask check-invariants`: the architecture rules of ARCHITECTURE.md, checked
//! against the real dependency graph (`cargo metadata`, `cargo tree`).

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// Crates that implement one stage of the path.
const STAGE_CRATES: [&str; 5] = [
    "hyperrec-encoder",
    "hyperrec-fusion",
    "hyperrec-similarity",
    "hyperrec-cache",
    "hyperrec-rerank",
];

/// The only crate allowed to compose stages.
const COMPOSER: &str = "hyperrec-pipeline";

/// What the Stage API crate may depend on, directly.
const STAGE_API_ALLOWED: [&str; 2] = ["serde", "thiserror"];

/// Heavy crates that must never reach the Stage API crate, even transitively.
const HEAVY: [&str; 8] = [
    "candle-core",
    "candle-nn",
    "candle-transformers",
    "cudarc",
    "tokenizers",
    "hf-hub",
    "rayon",
    "safetensors",
];

pub fn run() -> anyhow::Result<()> {
    let deps = workspace_dependencies()?;
    let mut violations = Vec::new();

    // 1. The Stage API crate is light.
    let stage_api = deps
        .get("hyperrec-stage")
        .context("hyperrec-stage is missing")?;
    for dep in stage_api {
        if !STAGE_API_ALLOWED.contains(&dep.as_str()) {
            violations.push(format!(
                "hyperrec-stage depends on `{dep}`; allowed: {STAGE_API_ALLOWED:?}"
            ));
        }
    }
    let tree = cargo_tree("hyperrec-stage")?;
    for heavy in HEAVY {
        if tree.iter().any(|name| name == heavy) {
            violations.push(format!(
                "hyperrec-stage pulls in `{heavy}` (through its dependency tree)"
            ));
        }
    }

    // 2. Stage crates depend on the Stage API, never on each other or on the pipeline.
    for stage in STAGE_CRATES {
        let Some(stage_deps) = deps.get(stage) else {
            violations.push(format!("stage crate {stage} is missing"));
            continue;
        };
        if !stage_deps.iter().any(|d| d == "hyperrec-stage") {
            violations.push(format!(
                "{stage} does not implement the Stage API (no hyperrec-stage dependency)"
            ));
        }
        for dep in stage_deps {
            if STAGE_CRATES.contains(&dep.as_str()) || dep == COMPOSER {
                violations.push(format!(
                    "{stage} depends on `{dep}`: stage crates must not depend on each other"
                ));
            }
        }
    }

    // 3. Only the pipeline composes stages: a crate that reaches into more than one stage
    //    crate is the pipeline or is built on it (the CLI, bench, eval and trainer use stage
    //    types through the pipeline's composition); no second composition layer beside it.
    for (krate, krate_deps) in &deps {
        let stages: Vec<&String> = krate_deps
            .iter()
            .filter(|d| STAGE_CRATES.contains(&d.as_str()))
            .collect();
        let above_pipeline = krate_deps.iter().any(|d| d == COMPOSER);
        if stages.len() > 1 && krate != COMPOSER && !above_pipeline {
            violations.push(format!(
                "{krate} composes stages {stages:?}: only {COMPOSER} may"
            ));
        }
    }

    // 4. The CUDA binding is optional: without the `cuda` feature no crate pulls it in.
    for krate in deps.keys() {
        if krate == "xtask" {
            continue;
        }
        let tree = cargo_tree(krate)?;
        if tree.iter().any(|name| name == "cudarc") {
            violations.push(format!(
                "{krate} pulls in cudarc without the `cuda` feature"
            ));
        }
    }

    if violations.is_empty() {
        println!(
            "architecture invariants hold ({} crates checked)",
            deps.len()
        );
        Ok(())
    } else {
        for violation in &violations {
            eprintln!("violation: {violation}");
        }
        bail!("{} architecture invariant(s) violated", violations.len())
    }
}

/// Normal (non-dev) dependencies of each workspace member, by package name.
fn workspace_dependencies() -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(crate::workspace_root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
    let mut deps = BTreeMap::new();
    for package in metadata["packages"]
        .as_array()
        .context("no packages in metadata")?
    {
        let name = package["name"].as_str().unwrap_or_default().to_owned();
        let normal = package["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["kind"].is_null() && !d["optional"].as_bool().unwrap_or(false))
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect();
        deps.insert(name, normal);
    }
    Ok(deps)
}

/// Every package name in `krate`'s normal dependency tree (default features).
fn cargo_tree(krate: &str) -> anyhow::Result<Vec<String>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(crate::workspace_root())
        .output()
        .context("running cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect())
}
