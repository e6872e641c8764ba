//! What a result was measured on: processor, GPU, commit.
//!
//! Every probe is best effort: a figure without its machine is still worth keeping, so a
//! missing `/proc/cpuinfo`, `git` or `nvidia-smi` leaves the field empty instead of failing.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The machine a run happened on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Processor model as the kernel names it.
    pub cpu_model: String,
    /// Logical cores this process may use.
    pub cores: usize,
    /// `uname -srm`.
    pub os: String,
    /// One entry per GPU `nvidia-smi` lists ("name, memory, driver"); empty without one.
    pub gpus: Vec<String>,
}

/// The source tree a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// `git rev-parse HEAD`, or "unknown" outside a checkout.
    pub commit: String,
    /// True when the working tree had uncommitted changes (the figures may not belong to
    /// `commit` exactly).
    pub dirty: bool,
}

impl Machine {
    /// Probes the current machine.
    pub fn probe() -> Machine {
        Machine {
            cpu_model: cpu_model().unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: command_line("uname", &["-srm"]).unwrap_or_else(|| std::env::consts::OS.into()),
            gpus: command_line(
                "nvidia-smi",
                &[
                    "--query-gpu=name,memory.total,driver_version",
                    "--format=csv,noheader",
                ],
            )
            .map(|out| out.lines().map(|l| l.trim().to_string()).collect())
            .unwrap_or_default(),
        }
    }

    /// One line for report headers: "Intel Xeon (2 cores), NVIDIA H100 80GB HBM3".
    pub fn headline(&self) -> String {
        let mut line = format!("{} ({} cores)", self.cpu_model, self.cores);
        for gpu in &self.gpus {
            line.push_str(", ");
            line.push_str(gpu);
        }
        line
    }
}

impl Revision {
    /// Reads the revision of the checkout the process runs in.
    pub fn probe() -> Revision {
        Revision {
            commit: command_line("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            dirty: command_line("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
        }
    }
}

/// Seconds since the Unix epoch, for the result's timestamp.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}

/// Trimmed stdout of a successful command; `None` when it is missing or fails.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_fills_what_every_linux_box_has() {
        let machine = Machine::probe();
        assert!(machine.cores >= 1);
        assert!(!machine.os.is_empty());
        assert!(machine.headline().contains("cores"));
    }
}
