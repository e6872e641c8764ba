//! `hyperrec demo`: the main job. Provisions model and data, builds the index, then shows
//! how two contrasting viewers get different lists for the same query, in three contexts.

use anyhow::Context as _;
use clap::Args;
use hyperrec_pipeline::{Pipeline, Response};
use hyperrec_stage::{Context, Event, Interaction, ItemId, Request, Social, TimeOfDay, UserId};
use serde::Serialize;

use crate::app::{self, CommonArgs};
use crate::commands::{print_memory, print_response};

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The query both viewers send.
    #[arg(long, default_value = "thriller movies")]
    pub query: String,
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// A demo viewer: a new user whose taste arrives as real-time rating events.
struct Profile {
    name: &'static str,
    user: UserId,
    /// (MovieLens movieId, rating): likes and a few dislikes.
    ratings: &'static [(u32, f32)],
}

const PROFILES: [Profile; 2] = [
    Profile {
        name: "action-thriller fan",
        user: UserId(900_001),
        ratings: &[
            (122882, 5.0), // Mad Max: Fury Road
            (115149, 5.0), // John Wick
            (111781, 4.5), // Mission: Impossible - Rogue Nation
            (1036, 4.5),   // Die Hard
            (59369, 4.0),  // Taken
            (8533, 1.0),   // The Notebook
            (60397, 1.0),  // Mamma Mia!
        ],
    },
    Profile {
        name: "psychological-thriller fan",
        user: UserId(900_002),
        ratings: &[
            (74458, 5.0),  // Shutter Island
            (112556, 5.0), // Gone Girl
            (104879, 4.5), // Prisoners
            (4226, 5.0),   // Memento
            (47, 4.5),     // Seven
            (4369, 1.0),   // The Fast and the Furious
            (45186, 1.5),  // Mission: Impossible III
        ],
    },
];

fn contexts() -> [(&'static str, Context); 3] {
    [
        (
            "evening, alone",
            Context {
                time_of_day: Some(TimeOfDay::Evening),
                social: Some(Social::Alone),
                ..Context::default()
            },
        ),
        (
            "afternoon, with a group",
            Context {
                time_of_day: Some(TimeOfDay::Afternoon),
                social: Some(Social::Group),
                ..Context::default()
            },
        ),
        (
            "morning",
            Context {
                time_of_day: Some(TimeOfDay::Morning),
                ..Context::default()
            },
        ),
    ]
}

#[derive(Serialize)]
struct Section {
    profile: &'static str,
    context: &'static str,
    response: Response,
}

#[derive(Serialize)]
struct DemoOutput {
    query: String,
    items_in_catalog: usize,
    device: String,
    sections: Vec<Section>,
}

/// Fixed time of the demo's rating events (2018-09-24, the end of the MovieLens data), so the
/// demo is reproducible.
const DEMO_TIMESTAMP: i64 = 1_537_800_000;

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut app = app::load(&args.common, !args.json)?;
    let pipeline = &mut app.pipeline;
    if !args.json {
        println!(
            "hyperrec demo: {} items from {}, model {}, device {}",
            pipeline.dataset().catalog.len(),
            app.data_dir.display(),
            app.model,
            pipeline.device()
        );
        println!(
            "item index: {} ({:.1}s)\n",
            if app.index.reused {
                "reused from disk"
            } else {
                "computed"
            },
            app.index.elapsed.as_secs_f64()
        );
    }
    for profile in &PROFILES {
        teach(pipeline, profile)?;
    }
    let mut sections = Vec::new();
    for profile in &PROFILES {
        if !args.json {
            println!("=== {} (user {}) ===", profile.name, profile.user);
            println!("    taste: {}", describe(pipeline, profile));
        }
        for (label, context) in contexts() {
            let request = Request {
                user: profile.user,
                query: args.query.clone(),
                context,
                k: args.k,
                exclude_seen: true,
            };
            let response = pipeline.recommend(&request)?;
            if !args.json {
                println!("--- \"{}\", {label}", args.query);
                print_response(&request, &response);
                println!();
            }
            sections.push(Section {
                profile: profile.name,
                context: label,
                response,
            });
        }
    }
    if args.json {
        let output = DemoOutput {
            query: args.query.clone(),
            items_in_catalog: pipeline.dataset().catalog.len(),
            device: pipeline.device().to_string(),
            sections,
        };
        println!("{}", serde_json::to_string_pretty(&output)?);
    } else {
        let stats = pipeline.cache().stats();
        if stats.hits + stats.misses == 0 {
            // Embedding rows are linear, so the history term was folded into the query and
            // no row was looked up; the rows serve `hyperrec similar`.
            println!(
                "temporal cache: {} hot rows (history term folded into the query: no row \
                 lookups; the rows serve `hyperrec similar`)",
                stats.hot_rows
            );
        } else {
            println!(
                "temporal cache: {} hot rows, hit rate {:.1}% ({} hits, {} misses)",
                stats.hot_rows,
                stats.hit_rate * 100.0,
                stats.hits,
                stats.misses
            );
        }
        print_memory(pipeline);
    }
    Ok(())
}

/// Sends the profile's ratings as real-time events (in memory only: the demo leaves the
/// event log alone).
fn teach(pipeline: &mut Pipeline, profile: &Profile) -> anyhow::Result<()> {
    for (offset, &(item, rating)) in profile.ratings.iter().enumerate() {
        let event = Event {
            user: profile.user,
            item: ItemId(item),
            interaction: Interaction::Rating(rating),
            timestamp: DEMO_TIMESTAMP + offset as i64,
        };
        pipeline
            .apply_event(&event)
            .with_context(|| format!("demo profile `{}`: item {item}", profile.name))?;
    }
    Ok(())
}

fn describe(pipeline: &Pipeline, profile: &Profile) -> String {
    let catalog = &pipeline.dataset().catalog;
    profile
        .ratings
        .iter()
        .filter_map(|&(id, rating)| {
            catalog
                .index_of(ItemId(id))
                .map(|i| format!("{} {rating}", catalog.item(i).title))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
