//! `recommend`, `similar`, `event` and `index`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use hyperrec_pipeline::{MAX_K, Response};
use hyperrec_stage::{Context, Event, Interaction, ItemId, Request, Social, TimeOfDay, UserId};

use crate::app::{self, CommonArgs};

#[derive(Args)]
pub struct RecommendArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The user to recommend for (unknown users are served as a cold start).
    #[arg(long)]
    pub user: u32,
    /// What the user asks for, e.g. "thriller movies".
    #[arg(long)]
    pub query: String,
    /// Context tokens, comma-separated or repeated: morning|afternoon|evening|night,
    /// alone|group, with:USER (a companion), genre:NAME (a genre hint).
    #[arg(long, value_delimiter = ',')]
    pub context: Vec<String>,
    /// How many items to return (1..=1000).
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Keep items the user has already rated.
    #[arg(long)]
    pub include_seen: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SimilarArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The item (MovieLens movieId).
    #[arg(long)]
    pub item: u32,
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EventArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long)]
    pub user: u32,
    #[arg(long)]
    pub item: u32,
    /// An explicit rating, 0.5..=5.0.
    #[arg(long, conflicts_with_all = ["watch", "skip"])]
    pub rating: Option<f32>,
    /// The user watched the item (an implicit positive).
    #[arg(long, conflicts_with = "skip")]
    pub watch: bool,
    /// The user skipped the item (an implicit negative).
    #[arg(long)]
    pub skip: bool,
    /// Seconds since the Unix epoch (default: now).
    #[arg(long)]
    pub timestamp: Option<i64>,
}

#[derive(Args)]
pub struct IndexArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Parses context tokens (see `RecommendArgs::context`).
pub fn parse_context(tokens: &[String]) -> anyhow::Result<Context> {
    let mut context = Context::default();
    for raw in tokens {
        let token = raw.trim().to_lowercase();
        if token.is_empty() {
            continue;
        }
        if let Some(user) = token.strip_prefix("with:") {
            let id = user
                .parse::<u32>()
                .with_context(|| format!("context `{raw}`: `with:` takes a user id"))?;
            context.companions.push(UserId(id));
            context.social = Some(Social::Group);
        } else if let Some(genre) = token.strip_prefix("genre:") {
            if genre.trim().is_empty() {
                bail!("context `{raw}`: `genre:` takes a genre name");
            }
            context.genres.push(genre.trim().to_owned());
        } else if let Some(time) = TimeOfDay::ALL.iter().find(|t| t.as_str() == token) {
            context.time_of_day = Some(*time);
        } else if token == "alone" {
            context.social = Some(Social::Alone);
        } else if token == "group" {
            context.social = Some(Social::Group);
        } else {
            bail!(
                "unknown context `{raw}`: use morning, afternoon, evening, night, alone, group, with:USER or genre:NAME"
            );
        }
    }
    Ok(context)
}

pub fn recommend(args: RecommendArgs) -> anyhow::Result<()> {
    let context = parse_context(&args.context)?;
    if args.k == 0 || args.k > MAX_K {
        bail!("--k must be in 1..={MAX_K}, got {}", args.k);
    }
    if args.query.trim().is_empty() {
        bail!("--query is empty: say what you are looking for, e.g. \"thriller movies\"");
    }
    let mut app = app::load(&args.common, !args.json)?;
    let request = Request {
        user: UserId(args.user),
        query: args.query.clone(),
        context,
        k: args.k,
        exclude_seen: !args.include_seen,
    };
    let response = app.pipeline.recommend(&request)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
    } else {
        print_response(&request, &response);
    }
    Ok(())
}

/// A response as a person reads it.
pub fn print_response(request: &Request, response: &Response) {
    if response.cold_start {
        println!(
            "(cold start: no profile for user {}; query and context only)",
            request.user
        );
    }
    for (rank, item) in response.items.iter().enumerate() {
        println!(
            "{:>3}. {:<60} {:>7.3}  [{}]",
            rank + 1,
            truncate(&item.title, 60),
            item.score,
            item.genres.join("|")
        );
        if !item.explanation.is_empty() {
            let because: Vec<String> = item
                .explanation
                .iter()
                .map(|c| format!("{} \"{}\" {:.2}", c.kind, c.label, c.weight))
                .collect();
            println!("       because: {}", because.join(", "));
        }
    }
    let timings: Vec<String> = response
        .timings_us
        .iter()
        .map(|(stage, us)| format!("{stage} {us:.0}us"))
        .collect();
    println!("     timings ({}): {}", response.device, timings.join(", "));
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    }
}

pub fn similar(args: SimilarArgs) -> anyhow::Result<()> {
    if args.k == 0 || args.k > MAX_K {
        bail!("--k must be in 1..={MAX_K}, got {}", args.k);
    }
    let app = app::load(&args.common, !args.json)?;
    let (items, hit) = app.pipeline.similar(ItemId(args.item), args.k)?;
    if args.json {
        let out = serde_json::json!({ "item": args.item, "cache_hit": hit, "items": items });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let source = app.pipeline.item_index(ItemId(args.item))?;
        println!(
            "items similar to {} ({})",
            app.pipeline.dataset().catalog.item(source).title,
            if hit {
                "temporal cache hit"
            } else {
                "cache miss: computed"
            }
        );
        for (rank, item) in items.iter().enumerate() {
            println!(
                "{:>3}. {:<60} {:>7.3}",
                rank + 1,
                truncate(&item.title, 60),
                item.score
            );
        }
    }
    Ok(())
}

pub fn event(args: EventArgs) -> anyhow::Result<()> {
    let interaction = match (args.rating, args.watch, args.skip) {
        (Some(rating), _, _) => {
            if !(0.5..=5.0).contains(&rating) {
                bail!("--rating must be in 0.5..=5.0, got {rating}");
            }
            Interaction::Rating(rating)
        }
        (None, true, _) => Interaction::Watch,
        (None, _, true) => Interaction::Skip,
        (None, false, false) => bail!("say what happened: --rating R, --watch or --skip"),
    };
    let timestamp = match args.timestamp {
        Some(t) => t,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    let event = Event {
        user: UserId(args.user),
        item: ItemId(args.item),
        interaction,
        timestamp,
    };
    let mut app = app::load(&args.common, true)?;
    // Validate against the live state first, so the log only ever holds events that apply.
    app.pipeline.apply_event(&event)?;
    app.events.append(&event)?;
    println!(
        "recorded: user {} {:?} item {} at {}",
        args.user, interaction, args.item, timestamp
    );
    Ok(())
}

pub fn index(args: IndexArgs) -> anyhow::Result<()> {
    let app = app::load(&args.common, true)?;
    let report = &app.index;
    println!(
        "{} item embeddings {} in {:.1}s (fingerprint {})",
        report.items,
        if report.reused { "reused" } else { "computed" },
        report.elapsed.as_secs_f64(),
        report.fingerprint
    );
    print_memory(&app.pipeline);
    Ok(())
}

pub fn print_memory(pipeline: &hyperrec_pipeline::Pipeline) {
    let report = pipeline.memory_report();
    println!("memory ({}):", report.device);
    for component in &report.components {
        println!(
            "  {:<10} host {:>10.1} MiB  device {:>10.1} MiB",
            component.name,
            component.host_bytes as f64 / (1 << 20) as f64,
            component.device_bytes as f64 / (1 << 20) as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_tokens_parse_and_unknown_ones_are_rejected() {
        let context = parse_context(&["evening".into(), "with:12".into(), "genre:Thriller".into()])
            .expect("valid tokens");
        assert_eq!(context.time_of_day, Some(TimeOfDay::Evening));
        assert_eq!(context.companions, vec![UserId(12)]);
        assert_eq!(context.social, Some(Social::Group));
        assert_eq!(context.genres, vec!["thriller".to_owned()]);
        let error = parse_context(&["tuesday".into()]).expect_err("unknown token");
        assert!(error.to_string().contains("unknown context `tuesday`"));
        assert!(parse_context(&["with:bob".into()]).is_err());
    }
}
