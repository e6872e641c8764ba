//! The committed PTX of every kernel, and how to tell whether it is fresh.
//!
//! `cargo xtask ptx` compiles `cuda/<name>.cu` to `ptx/<name>.ptx` (compute capability 9.0)
//! and writes the sha256 of the source on the first line, after [`SOURCE_HASH_TAG`]. The
//! crate embeds the PTX with `include_str!`, so building it needs no CUDA toolkit; the
//! `ptx_fresh` test recomputes each source's hash and fails on a stale PTX file.

/// One CUDA source file compiled to PTX.
#[derive(Clone, Copy, Debug)]
pub struct PtxModule {
    /// File stem shared by `cuda/<name>.cu` and `ptx/<name>.ptx`.
    pub name: &'static str,
    /// The PTX text, header comments included (PTX accepts `//` comments).
    pub ptx: &'static str,
}

/// First-line tag of a generated PTX file, followed by the source's sha256 in hex.
pub const SOURCE_HASH_TAG: &str = "// hyperrec-source-sha256: ";

/// Every kernel module, in the order the CUDA device loads them.
pub const MODULES: &[PtxModule] = &[
    PtxModule {
        name: "fusion",
        ptx: include_str!("../ptx/fusion.ptx"),
    },
    PtxModule {
        name: "scores",
        ptx: include_str!("../ptx/scores.ptx"),
    },
    PtxModule {
        name: "similarity_one",
        ptx: include_str!("../ptx/similarity_one.ptx"),
    },
    PtxModule {
        name: "topk",
        ptx: include_str!("../ptx/topk.ptx"),
    },
    PtxModule {
        name: "cache",
        ptx: include_str!("../ptx/cache.ptx"),
    },
    PtxModule {
        name: "rerank",
        ptx: include_str!("../ptx/rerank.ptx"),
    },
];

/// The local headers a CUDA source includes (`#include "name.cuh"`, files beside it in
/// `cuda/`), in order. A module's recorded hash covers the source followed by each of these
/// files' bytes, so editing a shared header makes every PTX that includes it stale.
pub fn local_includes(source: &str) -> Vec<&str> {
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("#include"))
        .filter_map(|rest| rest.trim().strip_prefix('"')?.strip_suffix('"'))
        .collect()
}

/// The source hash a generated PTX file records, if its first line carries one.
pub fn recorded_source_hash(ptx: &str) -> Option<&str> {
    ptx.lines()
        .next()?
        .strip_prefix(SOURCE_HASH_TAG)
        .map(str::trim)
}

/// The module called `name`.
pub fn module(name: &str) -> Option<&'static PtxModule> {
    MODULES.iter().find(|m| m.name == name)
}
