//! Regression gating: a current set of figures against a baseline.

use std::fmt::Write as _;

use crate::result::{Better, Figure};

/// One figure found in both the baseline and the current run.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparedFigure {
    pub name: String,
    pub unit: String,
    pub better: Better,
    pub baseline: f64,
    pub current: f64,
    /// `(current - baseline) / baseline` in percent (signed: + means the number grew).
    pub change_pct: f64,
    /// True when the change is in the bad direction by more than the allowed percentage.
    pub regressed: bool,
}

/// The outcome of comparing two figure lists.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub max_regression_pct: f64,
    pub figures: Vec<ComparedFigure>,
    /// Baseline figures the current run lacks: a figure that silently disappears could hide
    /// a regression, so these fail the gate too.
    pub missing: Vec<String>,
}

impl Comparison {
    /// Whether the gate passes.
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.figures.iter().all(|f| !f.regressed)
    }

    pub fn regressions(&self) -> impl Iterator<Item = &ComparedFigure> {
        self.figures.iter().filter(|f| f.regressed)
    }

    /// A Markdown table of every compared figure, regressions marked, then missing ones.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| figure | baseline | current | change | verdict |\n| --- | ---: | ---: | ---: | --- |"
        );
        for f in &self.figures {
            let verdict = if f.regressed {
                format!("REGRESSED (> {}% worse)", self.max_regression_pct)
            } else {
                "ok".to_string()
            };
            let _ = writeln!(
                out,
                "| {} | {} {} | {} {} | {:+.2}% | {} |",
                f.name,
                format_value(f.baseline),
                f.unit,
                format_value(f.current),
                f.unit,
                f.change_pct,
                verdict
            );
        }
        for name in &self.missing {
            let _ = writeln!(out, "| {name} | (in baseline) | missing | - | MISSING |");
        }
        out
    }
}

/// Compares `current` with `baseline`. A figure regresses when it moved in its bad direction
/// by more than `max_regression_pct` percent of the baseline. Figures only in `current`
/// are new and pass.
pub fn compare(baseline: &[Figure], current: &[Figure], max_regression_pct: f64) -> Comparison {
    let mut figures = Vec::new();
    let mut missing = Vec::new();
    for base in baseline {
        let Some(now) = current.iter().find(|f| f.name == base.name) else {
            missing.push(base.name.clone());
            continue;
        };
        let change_pct = if base.value == 0.0 {
            if now.value == 0.0 {
                0.0
            } else {
                f64::INFINITY * now.value.signum()
            }
        } else {
            (now.value - base.value) / base.value.abs() * 100.0
        };
        let worse_pct = match base.better {
            Better::Lower => change_pct,
            Better::Higher => -change_pct,
        };
        figures.push(ComparedFigure {
            name: base.name.clone(),
            unit: base.unit.clone(),
            better: base.better,
            baseline: base.value,
            current: now.value,
            change_pct,
            regressed: worse_pct > max_regression_pct || now.value.is_nan(),
        });
    }
    Comparison {
        max_regression_pct,
        figures,
        missing,
    }
}

/// Numbers as a person reads them: integers without decimals, small ones with a few.
pub fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 || value.fract() == 0.0 {
        group_thousands(value.round() as i128)
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn group_thousands(value: i128) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(name: &str, value: f64, better: Better) -> Figure {
        Figure::new(name, value, "u", better)
    }

    #[test]
    fn lower_is_better_regresses_when_it_grows_past_the_threshold() {
        let base = [figure("a", 100.0, Better::Lower)];
        assert!(compare(&base, &[figure("a", 109.9, Better::Lower)], 10.0).passed());
        let failed = compare(&base, &[figure("a", 120.0, Better::Lower)], 10.0);
        assert!(!failed.passed());
        assert_eq!(failed.regressions().count(), 1);
        assert!((failed.figures[0].change_pct - 20.0).abs() < 1e-9);
        // Getting faster never fails.
        assert!(compare(&base, &[figure("a", 10.0, Better::Lower)], 10.0).passed());
    }

    #[test]
    fn higher_is_better_regresses_when_it_drops_past_the_threshold() {
        let base = [figure("qps", 1000.0, Better::Higher)];
        assert!(compare(&base, &[figure("qps", 950.0, Better::Higher)], 10.0).passed());
        assert!(!compare(&base, &[figure("qps", 850.0, Better::Higher)], 10.0).passed());
        assert!(compare(&base, &[figure("qps", 5000.0, Better::Higher)], 10.0).passed());
    }

    #[test]
    fn a_missing_figure_fails_and_a_new_one_passes() {
        let base = [figure("a", 1.0, Better::Lower)];
        let missing = compare(&base, &[figure("b", 1.0, Better::Lower)], 10.0);
        assert!(!missing.passed());
        assert_eq!(missing.missing, vec!["a".to_string()]);
        assert!(missing.to_markdown().contains("MISSING"));
        let extra = compare(
            &base,
            &[
                figure("a", 1.0, Better::Lower),
                figure("b", 9.0, Better::Lower),
            ],
            10.0,
        );
        assert!(extra.passed());
    }

    #[test]
    fn markdown_lists_baseline_current_and_change() {
        let base = [figure("latency.total.p99_us", 2000.0, Better::Lower)];
        let now = [figure("latency.total.p99_us", 3000.0, Better::Lower)];
        let table = compare(&base, &now, 20.0).to_markdown();
        assert!(table.contains("2,000 u"), "{table}");
        assert!(table.contains("3,000 u"), "{table}");
        assert!(table.contains("+50.00%"), "{table}");
        assert!(table.contains("REGRESSED"), "{table}");
    }

    #[test]
    fn format_groups_large_numbers() {
        assert_eq!(format_value(1_234_567.0), "1,234,567");
        assert_eq!(format_value(-1000.0), "-1,000");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(0.5), "0.500");
    }
}
