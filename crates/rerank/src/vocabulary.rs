//! Context phrases: the finite set of sentences a request's context is described by, and
//! their embeddings.
//!
//! A request's [`Context`] becomes phrases by fixed rules ([`ContextVocabulary::phrases_for`]);
//! the pipeline encodes every phrase of [`ContextVocabulary::all_phrases`] once at start-up
//! and builds the vocabulary from them. Phrases are whole sentences rather than bare labels
//! ("watching in the evening", not "evening") because a sentence encoder places full
//! sentences more reliably, and `"<genre> movies"` is the same wording the evaluation queries
//! use. A genre hint outside the catalog's genres has no embedding yet: the stage skips it
//! (it never fails a request for it), and the pipeline can encode it and
//! [`ContextVocabulary::insert`] it before the batch runs ([`ContextVocabulary::missing_for`]).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};

use hyperrec_stage::{Context, Social, TimeOfDay};

use crate::RerankError;

/// Phrase of a time of day.
pub fn time_of_day_phrase(time: TimeOfDay) -> &'static str {
    match time {
        TimeOfDay::Morning => "watching in the morning",
        TimeOfDay::Afternoon => "watching in the afternoon",
        TimeOfDay::Evening => "watching in the evening",
        TimeOfDay::Night => "watching late at night",
    }
}

/// Phrase of watching alone or in company.
pub fn social_phrase(social: Social) -> &'static str {
    match social {
        Social::Alone => "watching alone",
        Social::Group => "watching with a group of friends",
    }
}

/// The phrase of a genre hint or catalog genre name: `"<genre> movies"`, lower-case and
/// trimmed. `None` for an empty name and for MovieLens' `(no genres listed)` placeholder.
pub fn genre_phrase(genre: &str) -> Option<String> {
    usable_genre(genre).map(|genre| format!("{} movies", genre.to_lowercase()))
}

/// The trimmed genre name, or `None` when it names no genre.
fn usable_genre(genre: &str) -> Option<&str> {
    let genre = genre.trim();
    (!genre.is_empty() && !genre.starts_with('(')).then_some(genre)
}

/// Every context phrase with its embedding, shared by the pipeline (which inserts phrases)
/// and the rerank stage (which reads them once per batch).
///
/// Rows are append-only: a phrase keeps its row for the vocabulary's lifetime (inserting it
/// again replaces its embedding in place), so a device copy of the table stays valid and
/// can be refreshed when [`PhraseTable::version`] changes. Embeddings are stored
/// L2-normalized.
#[derive(Debug)]
pub struct ContextVocabulary {
    table: RwLock<PhraseTable>,
}

/// The vocabulary's contents, read under its lock ([`ContextVocabulary::read`]).
#[derive(Clone, Debug)]
pub struct PhraseTable {
    dim: usize,
    /// Shared, so a request's explanation slots name a phrase without copying it.
    phrases: Vec<Arc<str>>,
    row_of: HashMap<String, u32>,
    /// `[phrases.len(), dim]`, row-major.
    embeddings: Vec<f32>,
    version: u64,
}

impl PhraseTable {
    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.phrases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phrases.is_empty()
    }

    /// Row of `phrase`, if it has an embedding.
    pub fn row_of(&self, phrase: &str) -> Option<u32> {
        self.row_of.get(phrase).copied()
    }

    /// The phrase of `row` (`row < len()`).
    pub fn phrase(&self, row: u32) -> &str {
        &self.phrases[row as usize]
    }

    /// The L2-normalized embedding of `row` (`row < len()`).
    pub fn embedding(&self, row: u32) -> &[f32] {
        let start = row as usize * self.dim;
        &self.embeddings[start..start + self.dim]
    }

    /// All embeddings, `[len(), dim]` row-major.
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    /// Changes on every insert; equal versions mean equal contents.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Calls `visit` with the row and (shared) phrase of every phrase of `context` found in
    /// the table, in [`ContextVocabulary::phrases_for`] order, reusing `scratch` for genre
    /// phrases: the rerank hot paths (this crate's and the GPU's) allocate nothing.
    #[doc(hidden)]
    pub fn visit_rows(
        &self,
        context: &Context,
        scratch: &mut String,
        mut visit: impl FnMut(u32, &Arc<str>),
    ) {
        visit_phrases(context, scratch, |phrase| {
            if let Some(row) = self.row_of(phrase) {
                visit(row, &self.phrases[row as usize]);
            }
        });
    }

    fn insert(&mut self, phrase: String, embedding: &[f32]) -> Result<u32, RerankError> {
        let invalid = |reason: String| RerankError::InvalidPhrase {
            phrase: phrase.clone(),
            reason,
        };
        if phrase.trim().is_empty() {
            return Err(invalid("the phrase is empty".into()));
        }
        if embedding.len() != self.dim {
            return Err(invalid(format!(
                "embedding has width {}, the vocabulary {}",
                embedding.len(),
                self.dim
            )));
        }
        let norm = embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm <= f32::EPSILON {
            return Err(invalid("embedding is zero or not finite".into()));
        }
        let row = match self.row_of(&phrase) {
            Some(row) => row,
            None => {
                let row = u32::try_from(self.phrases.len())
                    .map_err(|_| invalid("the vocabulary is full".into()))?;
                self.embeddings
                    .resize(self.embeddings.len() + self.dim, 0.0);
                self.row_of.insert(phrase.clone(), row);
                self.phrases.push(phrase.as_str().into());
                row
            }
        };
        let start = row as usize * self.dim;
        for (stored, x) in self.embeddings[start..start + self.dim]
            .iter_mut()
            .zip(embedding)
        {
            *stored = x / norm;
        }
        self.version += 1;
        Ok(row)
    }
}

impl ContextVocabulary {
    /// A vocabulary of the given phrases; the width is that of the first embedding and every
    /// other must match. A phrase listed twice keeps its last embedding. Use
    /// [`ContextVocabulary::empty`] for a vocabulary without phrases.
    pub fn new(entries: Vec<(String, Vec<f32>)>) -> Result<ContextVocabulary, RerankError> {
        let dim = entries
            .first()
            .map(|(_, embedding)| embedding.len())
            .ok_or_else(|| {
                RerankError::InvalidConfig(
                    "a context vocabulary needs at least one phrase; use ContextVocabulary::empty"
                        .into(),
                )
            })?;
        let vocabulary = ContextVocabulary::empty(dim);
        {
            let mut table = vocabulary.table.write();
            for (phrase, embedding) in entries {
                table.insert(phrase, &embedding)?;
            }
        }
        Ok(vocabulary)
    }

    /// A vocabulary with no phrases for `dim`-wide embeddings: the stage then attends over
    /// history items only.
    pub fn empty(dim: usize) -> ContextVocabulary {
        ContextVocabulary {
            table: RwLock::new(PhraseTable {
                dim,
                phrases: Vec::new(),
                row_of: HashMap::new(),
                embeddings: Vec::new(),
                version: 0,
            }),
        }
    }

    /// Adds `phrase` (or replaces its embedding) and returns its row. The embedding is
    /// L2-normalized; an empty phrase, a width other than the vocabulary's, or a zero or
    /// non-finite embedding is refused. The next batch the stage runs sees the phrase.
    pub fn insert(&self, phrase: impl Into<String>, embedding: &[f32]) -> Result<u32, RerankError> {
        self.table.write().insert(phrase.into(), embedding)
    }

    /// Read access to the table for as long as the guard lives; inserts wait meanwhile.
    pub fn read(&self) -> RwLockReadGuard<'_, PhraseTable> {
        self.table.read()
    }

    pub fn dim(&self) -> usize {
        self.table.read().dim
    }

    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.read().is_empty()
    }

    pub fn contains(&self, phrase: &str) -> bool {
        self.table.read().row_of(phrase).is_some()
    }

    /// A copy of the L2-normalized embedding of `phrase`, if it has one.
    pub fn get(&self, phrase: &str) -> Option<Vec<f32>> {
        let table = self.table.read();
        table
            .row_of(phrase)
            .map(|row| table.embedding(row).to_vec())
    }

    /// The phrases describing `context`, in slot order: time of day, then alone/group, then
    /// one `"<genre> movies"` per distinct genre hint (in the order given). Companions imply
    /// a group, whatever `social` says; an empty context has no phrases.
    pub fn phrases_for(context: &Context) -> Vec<String> {
        let mut phrases = Vec::new();
        visit_phrases(context, &mut String::new(), |phrase| {
            phrases.push(phrase.to_string())
        });
        phrases
    }

    /// The phrases of `context` that have no embedding yet: what the pipeline should encode
    /// and [`insert`](ContextVocabulary::insert) before running the batch.
    pub fn missing_for(&self, context: &Context) -> Vec<String> {
        let table = self.table.read();
        let mut missing = Vec::new();
        visit_phrases(context, &mut String::new(), |phrase| {
            if table.row_of(phrase).is_none() {
                missing.push(phrase.to_string());
            }
        });
        missing
    }

    /// Every phrase a context can produce for a catalog with these genre names: the four
    /// times of day, alone and group, and one phrase per distinct genre. The pipeline
    /// encodes these once at start-up.
    pub fn all_phrases(genres: &[String]) -> Vec<String> {
        let mut phrases: Vec<String> = TimeOfDay::ALL
            .iter()
            .map(|&time| time_of_day_phrase(time).to_string())
            .chain([Social::Alone, Social::Group].map(|s| social_phrase(s).to_string()))
            .collect();
        for phrase in genres.iter().filter_map(|genre| genre_phrase(genre)) {
            if !phrases.contains(&phrase) {
                phrases.push(phrase);
            }
        }
        phrases
    }
}

/// The phrase rules of [`ContextVocabulary::phrases_for`], as a visitor so the stage can
/// look phrases up without allocating. `scratch` holds the genre phrase being visited.
fn visit_phrases(context: &Context, scratch: &mut String, mut visit: impl FnMut(&str)) {
    if let Some(time) = context.time_of_day {
        visit(time_of_day_phrase(time));
    }
    let social = if context.companions.is_empty() {
        context.social
    } else {
        Some(Social::Group)
    };
    if let Some(social) = social {
        visit(social_phrase(social));
    }
    for (at, genre) in context.genres.iter().enumerate() {
        let Some(genre) = usable_genre(genre) else {
            continue;
        };
        let repeated = context.genres[..at].iter().any(|earlier| {
            let earlier = earlier.trim().chars().flat_map(char::to_lowercase);
            earlier.eq(genre.chars().flat_map(char::to_lowercase))
        });
        if repeated {
            continue;
        }
        // Same text as `genre_phrase`, built in the reused buffer.
        scratch.clear();
        scratch.extend(genre.chars().flat_map(char::to_lowercase));
        scratch.push_str(" movies");
        visit(scratch);
    }
}

#[cfg(test)]
mod tests {
    use hyperrec_stage::UserId;

    use super::*;

    fn context(genres: &[&str]) -> Context {
        Context {
            time_of_day: Some(TimeOfDay::Evening),
            social: Some(Social::Alone),
            companions: Vec::new(),
            genres: genres.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn phrases_follow_the_rules_in_slot_order() {
        let phrases =
            ContextVocabulary::phrases_for(&context(&["Thriller", " sci-fi ", "thriller"]));
        assert_eq!(
            phrases,
            [
                "watching in the evening",
                "watching alone",
                "thriller movies",
                "sci-fi movies"
            ]
        );
        assert!(ContextVocabulary::phrases_for(&Context::default()).is_empty());
    }

    #[test]
    fn companions_imply_a_group() {
        let mut ctx = context(&[]);
        ctx.companions = vec![UserId(3)];
        assert_eq!(
            ContextVocabulary::phrases_for(&ctx),
            [
                "watching in the evening",
                "watching with a group of friends"
            ]
        );
    }

    #[test]
    fn all_phrases_cover_every_context_of_the_catalog_genres() {
        let genres: Vec<String> = ["Thriller", "Sci-Fi", "(no genres listed)", "Film-Noir"]
            .map(String::from)
            .to_vec();
        let all = ContextVocabulary::all_phrases(&genres);
        assert_eq!(all.len(), 4 + 2 + 3);
        for time in TimeOfDay::ALL {
            for social in [Social::Alone, Social::Group] {
                let ctx = Context {
                    time_of_day: Some(time),
                    social: Some(social),
                    companions: Vec::new(),
                    genres: vec!["thriller".into(), "sci-fi".into(), "film-noir".into()],
                };
                for phrase in ContextVocabulary::phrases_for(&ctx) {
                    assert!(all.contains(&phrase), "{phrase} missing from {all:?}");
                }
            }
        }
    }

    #[test]
    fn insert_normalizes_keeps_rows_and_reports_missing() {
        let vocabulary =
            ContextVocabulary::new(vec![("watching alone".into(), vec![3.0, 4.0])]).expect("new");
        assert_eq!(vocabulary.get("watching alone"), Some(vec![0.6, 0.8]));
        let ctx = context(&["western"]);
        assert_eq!(
            vocabulary.missing_for(&ctx),
            ["watching in the evening", "western movies"]
        );
        let version = vocabulary.read().version();
        let row = vocabulary
            .insert("western movies", &[0.0, 2.0])
            .expect("insert");
        assert_eq!(row, 1);
        assert_ne!(vocabulary.read().version(), version);
        assert_eq!(
            vocabulary
                .insert("watching alone", &[1.0, 0.0])
                .expect("replace"),
            0
        );
        assert_eq!(vocabulary.get("watching alone"), Some(vec![1.0, 0.0]));
        assert_eq!(vocabulary.missing_for(&ctx), ["watching in the evening"]);
    }

    #[test]
    fn bad_phrases_are_refused() {
        let vocabulary = ContextVocabulary::empty(2);
        assert!(vocabulary.insert("", &[1.0, 0.0]).is_err());
        assert!(vocabulary.insert("x", &[1.0]).is_err());
        assert!(vocabulary.insert("x", &[0.0, 0.0]).is_err());
        assert!(vocabulary.insert("x", &[f32::NAN, 1.0]).is_err());
        assert!(vocabulary.is_empty());
        assert!(ContextVocabulary::new(Vec::new()).is_err());
        assert!(
            ContextVocabulary::new(vec![("a".into(), vec![1.0]), ("b".into(), vec![1.0, 0.0])])
                .is_err()
        );
    }
}
