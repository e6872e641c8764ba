//! `hyperrec`: the command line of the recommender.

mod app;
mod commands;
mod demo;
mod embed;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hyperrec",
    version,
    about = "Hyper-personalized recommendations on a GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: provision model and data, build the index, show personalized lists.
    Demo(demo::DemoArgs),
    /// Compute (or reuse) the item embeddings of a catalog.
    Index(commands::IndexArgs),
    /// Recommend items for a user, a query and a context.
    Recommend(commands::RecommendArgs),
    /// Items similar to an item (served by the temporal cache when the item is hot).
    Similar(commands::SimilarArgs),
    /// Record a real-time event (rating, watch, skip) in the durable event log.
    Event(commands::EventArgs),
    /// Print the embedding of each text (texts from stdin, one per line, when none are given).
    Embed(embed::EmbedArgs),
    /// Learn the pipeline's settings on a validation part of the training ratings.
    Train(train::TrainArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPERREC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Index(args) => commands::index(args),
        Command::Recommend(args) => commands::recommend(args),
        Command::Similar(args) => commands::similar(args),
        Command::Event(args) => commands::event(args),
        Command::Embed(args) => embed::run(args),
        Command::Train(args) => train::run(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
