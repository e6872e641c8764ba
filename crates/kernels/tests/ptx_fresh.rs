//! Fails when a CUDA source (or a local header it includes) changed without `cargo xtask
//! ptx` regenerating its PTX.

use std::path::{Path, PathBuf};

use hyperrec_kernels::ptx::{MODULES, local_includes, recorded_source_hash};
use sha2::{Digest, Sha256};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sources() -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("cuda"))
        .expect("crates/kernels/cuda exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "cu"))
        .collect();
    sources.sort();
    sources
}

fn stem(path: &Path) -> &str {
    path.file_stem()
        .and_then(|s| s.to_str())
        .expect("utf-8 file name")
}

#[test]
fn every_ptx_matches_its_source() {
    let sources = sources();
    assert!(!sources.is_empty(), "no CUDA sources found");
    for source in &sources {
        let name = stem(source);
        let text = std::fs::read(source).expect("readable source");
        let mut hasher = Sha256::new();
        hasher.update(&text);
        for header in local_includes(&String::from_utf8_lossy(&text)) {
            let path = crate_dir().join("cuda").join(header);
            hasher.update(
                std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{name}.cu includes {header}, unreadable: {e}")),
            );
        }
        let expected = hex::encode(hasher.finalize());
        let ptx_path = crate_dir().join("ptx").join(format!("{name}.ptx"));
        let ptx = std::fs::read_to_string(&ptx_path).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): run `cargo xtask ptx`",
                ptx_path.display()
            )
        });
        assert_eq!(
            recorded_source_hash(&ptx),
            Some(expected.as_str()),
            "{} is stale: cuda/{name}.cu changed; run `cargo xtask ptx {name}`",
            ptx_path.display()
        );
    }
}

#[test]
fn every_source_is_embedded_and_every_embedded_module_has_a_source() {
    let names: Vec<String> = sources().iter().map(|s| stem(s).to_string()).collect();
    for module in MODULES {
        assert!(
            names.iter().any(|n| n == module.name),
            "embedded module {} has no cuda/{}.cu",
            module.name,
            module.name
        );
        let on_disk =
            std::fs::read_to_string(crate_dir().join("ptx").join(format!("{}.ptx", module.name)))
                .expect("ptx on disk");
        assert_eq!(
            module.ptx, on_disk,
            "embedded {} differs from the file",
            module.name
        );
    }
    for name in &names {
        assert!(
            MODULES.iter().any(|m| m.name == name),
            "cuda/{name}.cu is not listed in hyperrec_kernels::ptx::MODULES"
        );
    }
}
