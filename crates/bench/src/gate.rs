//! The CPU regression gate: instruction counts per stage under callgrind.
//!
//! Wall-clock time on a shared 2-core CI machine moves by tens of percent from run to run;
//! the number of instructions a fixed workload executes does not (callgrind simulates one
//! CPU, so the count depends on the code and the data, not on the neighbours). The gate
//! runs `hyperrec-bench gate-workload` under `valgrind --tool=callgrind
//! --instr-atstart=no`: setup runs uninstrumented, and the workload brackets every stage's
//! `run` with a zero-counters request before and a labelled dump after, so each dump holds
//! exactly one stage run (all threads, rayon workers included). Summed per stage, those are
//! the gated figures `gate.<stage>.instructions`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::result::{Better, Figure};

/// Label prefix of the dumps the gate workload writes (`stage:<name>`).
pub const DUMP_LABEL_PREFIX: &str = "stage:";

/// Environment variable that makes the gate workload do extra work in one stage
/// (`STAGE:PERCENT`, e.g. `similarity:20`), to show the gate catches a slowdown. Only the
/// gate workload of the bench binary reads it; no production code path does.
pub const SLOWDOWN_ENV: &str = "HYPERREC_GATE_SLOWDOWN";

/// Why the gate could not produce instruction counts.
#[derive(Debug, Error)]
pub enum GateError {
    #[error("cannot start valgrind ({0}); install it (apt-get install valgrind)")]
    ValgrindMissing(std::io::Error),
    #[error("the gate workload failed under valgrind ({status}); its log is {log}")]
    WorkloadFailed { status: String, log: PathBuf },
    #[error("reading callgrind output in {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "callgrind wrote no per-stage dumps in {0} (was the workload built with client requests?)"
    )]
    NoDumps(PathBuf),
    #[error("malformed callgrind output {file}: {message}")]
    Malformed { file: PathBuf, message: String },
    #[error("invalid slowdown `{0}`: expected STAGE:PERCENT, e.g. similarity:20")]
    InvalidSlowdown(String),
}

/// Extra work asked of one stage of the gate workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Slowdown {
    pub stage: String,
    pub percent: u32,
}

impl Slowdown {
    /// Parses `STAGE:PERCENT`.
    pub fn parse(text: &str) -> Result<Slowdown, GateError> {
        let invalid = || GateError::InvalidSlowdown(text.to_string());
        let (stage, percent) = text.split_once(':').ok_or_else(invalid)?;
        let percent: u32 = percent.trim().parse().map_err(|_| invalid())?;
        if stage.trim().is_empty() || percent == 0 || percent > 1000 {
            return Err(invalid());
        }
        Ok(Slowdown {
            stage: stage.trim().to_string(),
            percent,
        })
    }

    /// The slowdown asked for in [`SLOWDOWN_ENV`], if any.
    pub fn from_env() -> Result<Option<Slowdown>, GateError> {
        match std::env::var(SLOWDOWN_ENV) {
            Ok(text) if !text.trim().is_empty() => Slowdown::parse(&text).map(Some),
            _ => Ok(None),
        }
    }
}

/// Runs `exe gate-workload` under callgrind with its profiles in `out_dir`, passing
/// `slowdown` through the environment, and returns instructions per stage.
pub fn count_instructions(
    exe: &Path,
    out_dir: &Path,
    slowdown: Option<&Slowdown>,
) -> Result<BTreeMap<String, u64>, GateError> {
    let io = |source| GateError::Io {
        dir: out_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(io)?;
    // Stale profiles of an earlier run would be summed in.
    for entry in std::fs::read_dir(out_dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if is_profile(&path) {
            std::fs::remove_file(&path).map_err(io)?;
        }
    }
    let log = out_dir.join("valgrind.log");
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg("--instr-atstart=no")
        .arg("--dump-instr=no")
        .arg("--compress-strings=no")
        .arg(format!(
            "--callgrind-out-file={}",
            out_dir.join("callgrind.out.%p").display()
        ))
        .arg(format!("--log-file={}", log.display()))
        .arg(exe)
        .arg("gate-workload")
        // One rayon worker: the count then does not depend on how work splits over cores.
        .env("RAYON_NUM_THREADS", "1");
    match slowdown {
        Some(s) => command.env(SLOWDOWN_ENV, format!("{}:{}", s.stage, s.percent)),
        None => command.env_remove(SLOWDOWN_ENV),
    };
    let status = command.status().map_err(GateError::ValgrindMissing)?;
    if !status.success() {
        return Err(GateError::WorkloadFailed {
            status: status.to_string(),
            log,
        });
    }
    read_profiles(out_dir)
}

fn is_profile(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("callgrind.out."))
}

/// Sums the instruction counts of every labelled dump in `dir` per stage.
pub fn read_profiles(dir: &Path) -> Result<BTreeMap<String, u64>, GateError> {
    let io = |source| GateError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut per_stage: BTreeMap<String, u64> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !is_profile(&path) {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io)?;
        if let Some((stage, instructions)) =
            parse_profile(&text).map_err(|message| GateError::Malformed {
                file: path.clone(),
                message,
            })?
        {
            *per_stage.entry(stage).or_default() += instructions;
        }
    }
    if per_stage.is_empty() {
        return Err(GateError::NoDumps(dir.to_path_buf()));
    }
    Ok(per_stage)
}

/// The stage and instruction count of one profile; `None` for a profile that is not a
/// labelled stage dump (the final dump at exit, which holds the uncounted remainder).
pub fn parse_profile(text: &str) -> Result<Option<(String, u64)>, String> {
    let label = text
        .lines()
        .find_map(|l| l.strip_prefix("desc: Trigger: Client Request: "))
        .and_then(|l| l.trim().strip_prefix(DUMP_LABEL_PREFIX));
    let Some(stage) = label else {
        return Ok(None);
    };
    let events = text
        .lines()
        .find_map(|l| l.strip_prefix("events:"))
        .ok_or("no `events:` line")?;
    let column = events
        .split_whitespace()
        .position(|e| e == "Ir")
        .ok_or("no Ir event")?;
    let totals = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .ok_or("no `summary:` or `totals:` line")?;
    let instructions = totals
        .split_whitespace()
        .nth(column)
        .ok_or("short totals line")?
        .parse::<u64>()
        .map_err(|e| format!("instruction count: {e}"))?;
    Ok(Some((stage.to_string(), instructions)))
}

/// The gated figures of per-stage counts (and their sum).
pub fn figures(per_stage: &BTreeMap<String, u64>) -> Vec<Figure> {
    let mut figures: Vec<Figure> = per_stage
        .iter()
        .map(|(stage, n)| {
            Figure::new(
                format!("gate.{stage}.instructions"),
                *n as f64,
                "instructions",
                Better::Lower,
            )
        })
        .collect();
    figures.push(Figure::new(
        "gate.total.instructions",
        per_stage.values().sum::<u64>() as f64,
        "instructions",
        Better::Lower,
    ));
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "version: 1\ncreator: callgrind-3.19.0\npid: 42\ncmd: x\npart: 3\n\ndesc: I1 cache: \ndesc: Trigger: Client Request: stage:similarity\n\npositions: line\nevents: Ir\nsummary: 123456\n\nfn=(1) main\n0 5\ntotals: 123456\n";

    #[test]
    fn parses_a_labelled_dump() {
        assert_eq!(
            parse_profile(DUMP),
            Ok(Some(("similarity".to_string(), 123_456)))
        );
    }

    #[test]
    fn the_final_dump_is_not_a_stage() {
        let last = DUMP.replace("Client Request: stage:similarity", "Program termination");
        assert_eq!(parse_profile(&last), Ok(None));
    }

    #[test]
    fn a_dump_without_counts_is_malformed() {
        let broken = DUMP
            .replace("summary: 123456", "")
            .replace("totals: 123456", "");
        assert!(parse_profile(&broken).is_err());
    }

    #[test]
    fn dumps_of_one_stage_are_summed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("callgrind.out.1.1"), DUMP).expect("write");
        std::fs::write(
            dir.path().join("callgrind.out.1.2"),
            DUMP.replace("123456", "1000"),
        )
        .expect("write");
        std::fs::write(
            dir.path().join("callgrind.out.1.3"),
            DUMP.replace("stage:similarity", "stage:rerank"),
        )
        .expect("write");
        std::fs::write(dir.path().join("valgrind.log"), "noise").expect("write");
        let counts = read_profiles(dir.path()).expect("profiles");
        assert_eq!(counts["similarity"], 124_456);
        assert_eq!(counts["rerank"], 123_456);
        let figures = figures(&counts);
        assert_eq!(figures.last().map(|f| f.value), Some(247_912.0));
    }

    #[test]
    fn slowdown_parsing() {
        assert_eq!(
            Slowdown::parse("similarity:20").ok(),
            Some(Slowdown {
                stage: "similarity".into(),
                percent: 20
            })
        );
        for bad in [
            "similarity",
            ":20",
            "similarity:0",
            "similarity:x",
            "a:5000",
        ] {
            assert!(Slowdown::parse(bad).is_err(), "{bad}");
        }
    }
}
