//! `report.md`: the result as Markdown tables a person reads.

use std::fmt::Write as _;

use crate::compare::format_value;
use crate::result::{BenchResult, TOTAL};
use crate::stats::Summary;

/// Order in which stages are listed; unknown stages follow in name order, `total` last.
const STAGE_ORDER: [&str; 5] = ["encode", "fusion", "cache", "similarity", "rerank"];

/// Stage names of `keys` in pipeline order, `total` last.
pub fn ordered_stages<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut stages: Vec<String> = keys.filter(|k| *k != TOTAL).cloned().collect();
    stages.sort_by_key(|s| {
        (
            STAGE_ORDER
                .iter()
                .position(|known| known == s)
                .unwrap_or(STAGE_ORDER.len()),
            s.clone(),
        )
    });
    stages.push(TOTAL.to_string());
    stages
}

/// Renders the whole report. `plots` are file names (relative to the report) to embed.
pub fn render(result: &BenchResult, plots: &[String]) -> String {
    let mut out = String::new();
    let s = &result.settings;
    let _ = writeln!(
        out,
        "# hyperrec bench: `{}` scenario on {}{}\n",
        s.scenario,
        s.device,
        if s.quick { " (quick)" } else { "" }
    );
    let _ = writeln!(out, "- machine: {}", result.machine.headline());
    let _ = writeln!(out, "- os: {}", result.machine.os);
    let _ = writeln!(
        out,
        "- commit: `{}`{}",
        result.revision.commit,
        if result.revision.dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "- data: {} items, {} users with {}-item histories; item embeddings: {}; seed {}",
        group(s.items),
        group(s.users),
        s.history_len,
        s.item_embeddings,
        s.seed
    );
    let _ = writeln!(
        out,
        "- traffic: {} distinct queries timed one by one after {} warm-up queries; k = {}; batch sizes {:?}",
        s.latency_queries, s.warmup_queries, s.k, s.batch_sizes
    );
    let _ = writeln!(
        out,
        "- build (data, embeddings, users, cache): {:.1} s\n",
        result.build_seconds
    );

    latency_section(&mut out, result);
    batch_section(&mut out, result);
    encoding_and_cache_section(&mut out, result);
    memory_section(&mut out, result);
    peer_section(&mut out, result);

    if !plots.is_empty() {
        let _ = writeln!(out, "## Plots\n");
        for plot in plots {
            let _ = writeln!(out, "![{plot}]({plot})\n");
        }
    }
    out
}

fn latency_section(out: &mut String, result: &BenchResult) {
    let _ = writeln!(
        out,
        "## Single-query latency (us)\n\n| stage | min | median | p95 | p99 | max | first (cold) query |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for stage in ordered_stages(result.latency.keys()) {
        let Some(summary) = result.latency.get(&stage) else {
            continue;
        };
        let cold = result
            .cold_query
            .as_ref()
            .and_then(|c| c.get(&stage))
            .map_or_else(|| "-".to_string(), |v| format_value(*v));
        let name = if stage == TOTAL {
            "**end to end**".to_string()
        } else {
            stage.clone()
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {cold} |",
            format_value(summary.min),
            format_value(summary.median),
            format_value(summary.p95),
            format_value(summary.p99),
            format_value(summary.max),
        );
    }
    out.push('\n');
}

fn batch_section(out: &mut String, result: &BenchResult) {
    if result.batches.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Batch throughput\n\n| batch size | timed batches | median batch (ms) | queries/s |\n| ---: | ---: | ---: | ---: |"
    );
    for b in &result.batches {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            b.size,
            b.batches,
            format_value(b.median_batch_us / 1e3),
            format_value(b.queries_per_second)
        );
    }
    out.push('\n');
}

fn encoding_and_cache_section(out: &mut String, result: &BenchResult) {
    if let Some(e) = &result.encoding {
        let _ = writeln!(
            out,
            "## Catalog encoding\n\n{} item texts in {:.2} s: **{} texts/s**\n",
            e.texts,
            e.seconds,
            format_value(e.texts_per_second)
        );
    }
    if let Some(c) = &result.cache {
        let _ = writeln!(
            out,
            "## Temporal cache (\"items similar to X\", X drawn by Zipf popularity)\n\n| figure | value |\n| --- | ---: |"
        );
        let _ = writeln!(out, "| cached rows | {} |", group(c.rows));
        let _ = writeln!(
            out,
            "| lookups | {} ({} hits, {} misses) |",
            group(c.lookups),
            c.hits,
            c.misses
        );
        let _ = writeln!(out, "| hit rate | {:.1}% |", c.hit_rate * 100.0);
        let _ = writeln!(
            out,
            "| hit latency median / p99 (us) | {} |",
            pair(&c.hit_latency)
        );
        let _ = writeln!(
            out,
            "| miss latency median / p99 (us) | {} |",
            pair(&c.miss_latency)
        );
        let _ = writeln!(
            out,
            "| full rebuild (ms) | {} |\n",
            format_value(c.rebuild_ms)
        );
    }
}

fn memory_section(out: &mut String, result: &BenchResult) {
    if result.memory.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Memory\n\n| component | host | device |\n| --- | ---: | ---: |"
    );
    for m in &result.memory {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            m.name,
            bytes(m.host_bytes),
            bytes(m.device_bytes)
        );
    }
    let host: u64 = result.memory.iter().map(|m| m.host_bytes).sum();
    let device: u64 = result.memory.iter().map(|m| m.device_bytes).sum();
    let _ = writeln!(out, "| **total** | {} | {} |\n", bytes(host), bytes(device));
}

fn peer_section(out: &mut String, result: &BenchResult) {
    let Some(peer) = &result.peer else {
        return;
    };
    let _ = writeln!(
        out,
        "## Side by side: hyperrec ({}) vs PyTorch peer ({}, {})\n\nSame items, users and queries. Ratio = peer / hyperrec: above 1 means hyperrec is faster.\n",
        result.settings.device, peer.implementation, peer.device
    );
    let _ = writeln!(
        out,
        "| figure | hyperrec | PyTorch | ratio |\n| --- | ---: | ---: | ---: |"
    );
    for stage in ordered_stages(result.latency.keys()) {
        if let (Some(ours), Some(theirs)) = (result.latency.get(&stage), peer.latency.get(&stage)) {
            for (label, a, b) in [
                ("median", ours.median, theirs.median),
                ("p99", ours.p99, theirs.p99),
            ] {
                let _ = writeln!(
                    out,
                    "| {stage} latency {label} (us) | {} | {} | {} |",
                    format_value(a),
                    format_value(b),
                    ratio(b, a)
                );
            }
        }
    }
    for ours in &result.batches {
        if let Some(theirs) = peer.batches.iter().find(|b| b.size == ours.size) {
            let _ = writeln!(
                out,
                "| batch {} (queries/s) | {} | {} | {} |",
                ours.size,
                format_value(ours.queries_per_second),
                format_value(theirs.queries_per_second),
                ratio(ours.queries_per_second, theirs.queries_per_second)
            );
        }
    }
    if let (Some(ours), Some(theirs)) = (&result.encoding, &peer.encoding) {
        let _ = writeln!(
            out,
            "| catalog encoding (texts/s) | {} | {} | {} |",
            format_value(ours.texts_per_second),
            format_value(theirs.texts_per_second),
            ratio(ours.texts_per_second, theirs.texts_per_second)
        );
    }
    for note in &peer.notes {
        let _ = writeln!(out, "\n- peer: {note}");
    }
    out.push('\n');
}

fn ratio(numerator: f64, denominator: f64) -> String {
    if denominator > 0.0 && numerator.is_finite() {
        format!("{:.2}x", numerator / denominator)
    } else {
        "-".into()
    }
}

fn pair(summary: &Option<Summary>) -> String {
    summary.as_ref().map_or_else(
        || "-".into(),
        |s| format!("{} / {}", format_value(s.median), format_value(s.p99)),
    )
}

fn group(n: usize) -> String {
    format_value(n as f64)
}

/// Bytes in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_come_in_pipeline_order_with_total_last() {
        let keys: Vec<String> = ["total", "rerank", "zeta", "encode", "similarity"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            ordered_stages(keys.iter()),
            vec!["encode", "similarity", "rerank", "zeta", "total"]
        );
    }

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(95_879_168), "91.4 MiB");
    }
}
