use clap::Args;

/// Arguments are passed through to the `hyperrec-eval` binary, which owns the evaluation.
#[derive(Args)]
pub struct EvalArgs {
    /// Everything after `eval` (see `cargo xtask eval -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let mut cargo_args = vec!["run", "--release", "--quiet", "-p", "hyperrec-eval", "--"];
    cargo_args.extend(args.args.iter().map(String::as_str));
    crate::cargo(&cargo_args)
}
