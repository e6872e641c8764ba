use clap::Args;

/// Arguments are passed through to the `hyperrec-eval` binary, which owns the evaluation.
#[derive(Args)]
pub struct EvalArgs {
    /// Everything after `eval` (see `cargo xtask eval -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Runs the evaluation. The `trained` variant needs the settings `hyperrec train` writes
/// (`target/train/trained.json`); when they are missing they are learned first, on the
/// training part only, so one command reproduces the whole table.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let trained = crate::workspace_root().join("target/train/trained.json");
    let explicit = args.args.iter().any(|a| a.starts_with("--trained"));
    if !explicit && !trained.exists() {
        eprintln!(
            "xtask eval: no {}; running `hyperrec train` first",
            trained.display()
        );
        crate::cargo(&[
            "run",
            "--release",
            "--quiet",
            "-p",
            "hyperrec-cli",
            "--",
            "train",
        ])?;
    }
    let mut cargo_args = vec!["run", "--release", "--quiet", "-p", "hyperrec-eval", "--"];
    cargo_args.extend(args.args.iter().map(String::as_str));
    crate::cargo(&cargo_args)
}
