use clap::Args;

#[derive(Args)]
pub struct EmbedArgs {
    /// Texts to embed.
    pub texts: Vec<String>,
}

pub fn run(_args: EmbedArgs) -> anyhow::Result<()> {
    anyhow::bail!("embed: the encoder is being built")
}
