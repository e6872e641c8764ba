use clap::Args;

/// Arguments are passed through to the `hyperrec-bench` binary, which owns the suite.
#[derive(Args)]
pub struct BenchArgs {
    /// Everything after `bench` (see `cargo xtask bench -- --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut cargo_args = vec!["run", "--release", "--quiet", "-p", "hyperrec-bench", "--"];
    cargo_args.extend(args.args.iter().map(String::as_str));
    crate::cargo(&cargo_args)
}
