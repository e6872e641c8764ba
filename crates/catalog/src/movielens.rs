//! Loading MovieLens-format directories (`movies.csv`, `ratings.csv`, optional `tags.csv`).
//!
//! Every malformed row is reported with its file and 1-based line number. In lenient mode
//! (the default) the row is skipped, a [`Diagnostic`] is recorded and loading goes on; in
//! strict mode the first problem is returned as [`CatalogError::Malformed`]. A missing
//! `movies.csv` or `ratings.csv`, or a file whose header is not the MovieLens one, is always
//! an error naming the file.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use csv::ByteRecord;
use serde::Serialize;
use sha2::{Digest, Sha256};

use hyperrec_stage::{ItemId, ItemIndex, UserId};

use crate::error::CatalogError;
use crate::state::HistoryEntry;

/// Header of `movies.csv`.
pub const MOVIES_HEADER: &str = "movieId,title,genres";
/// Header of `ratings.csv`.
pub const RATINGS_HEADER: &str = "userId,movieId,rating,timestamp";
/// Header of `tags.csv`.
pub const TAGS_HEADER: &str = "userId,movieId,tag,timestamp";
/// What `movies.csv` writes for an item without genres.
pub const NO_GENRES: &str = "(no genres listed)";
/// How many of an item's most frequent tags go into its text.
pub const TOP_TAGS: usize = 5;
/// Lowest valid rating.
pub const MIN_RATING: f32 = 0.5;
/// Highest valid rating.
pub const MAX_RATING: f32 = 5.0;

/// The 19 MovieLens genres, in the order of the MovieLens README.
pub const MOVIELENS_GENRES: [&str; 19] = [
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "IMAX",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// How strictly [`load`] treats malformed rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Fail on the first malformed row (or duplicate movie id) instead of skipping it.
    pub strict: bool,
}

impl LoadOptions {
    /// Fail on the first malformed row.
    pub fn strict() -> Self {
        LoadOptions { strict: true }
    }

    /// Skip malformed rows, recording a [`Diagnostic`] for each (the default).
    pub fn lenient() -> Self {
        LoadOptions { strict: false }
    }
}

/// What was wrong with a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosticKind {
    /// The row does not have the header's number of fields.
    FieldCount,
    /// A field is not valid UTF-8.
    Encoding,
    /// An id, rating or timestamp does not parse as a number.
    BadNumber,
    /// A rating outside `0.5..=5.0` (or not a number at all, like `NaN`).
    RatingOutOfRange,
    /// A rating or tag names a movie id that `movies.csv` does not define (or skipped).
    UnknownMovie,
    /// A movie id defined a second time; the first definition is kept.
    DuplicateMovie,
    /// A required text field (title, tag) is empty.
    EmptyField,
}

/// One malformed row: where it is and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file the row is in.
    pub file: PathBuf,
    /// 1-based line number of the row's start.
    pub line: u64,
    pub kind: DiagnosticKind,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// One catalog entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub id: ItemId,
    /// The title as the source writes it, year suffix included: `"Heat (1995)"`.
    pub title: String,
    /// Release year parsed from the title's `(YYYY)` (or `(YYYY–YYYY)`) suffix.
    pub year: Option<u16>,
    /// Genre names as the source writes them (`"Sci-Fi"`); empty for `(no genres listed)`.
    pub genres: Vec<String>,
    /// The item's most frequent tags, lower-cased: at most [`TOP_TAGS`], by count
    /// descending, ties alphabetical.
    pub top_tags: Vec<String>,
}

impl Item {
    /// The title without its year suffix: `"Heat"` for `"Heat (1995)"`.
    pub fn name(&self) -> &str {
        match year_suffix_start(&self.title) {
            Some(start) => self.title[..start].trim_end(),
            None => &self.title,
        }
    }

    /// The text the encoder embeds for this item (see [`Catalog::text`]).
    pub fn text(&self) -> String {
        let mut text = self
            .title
            .strip_suffix('.')
            .unwrap_or(&self.title)
            .to_string();
        if !self.genres.is_empty() {
            text.push_str(". Genres: ");
            let genres: Vec<String> = self.genres.iter().map(|g| g.to_lowercase()).collect();
            text.push_str(&genres.join(", "));
        }
        if !self.top_tags.is_empty() {
            text.push_str(". Tags: ");
            text.push_str(&self.top_tags.join(", "));
        }
        text.push('.');
        text
    }
}

/// Byte offset of a trailing `(YYYY)` / `(YYYY–YYYY)` / `(YYYY-)` in `title`, if any.
fn year_suffix_start(title: &str) -> Option<usize> {
    parse_year_suffix(title).map(|(start, _)| start)
}

/// Parses a trailing year in parentheses: returns its start offset and the (first) year.
fn parse_year_suffix(title: &str) -> Option<(usize, u16)> {
    let inner_end = title.strip_suffix(')')?.len();
    let open = title[..inner_end].rfind('(')?;
    let inner = &title[open + 1..inner_end];
    let digits = inner.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = &inner[4..];
    // A range ("2006–2007", "1999-") names its first year; anything else is not a year.
    let is_range = rest.starts_with('-') || rest.starts_with('–');
    if !(rest.is_empty() || is_range) {
        return None;
    }
    digits.parse().ok().map(|year| (open, year))
}

/// The items of a dataset and the map from external ids to dense indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    items: Vec<Item>,
    index: HashMap<ItemId, ItemIndex>,
    genres: Vec<String>,
}

impl Catalog {
    /// Builds a catalog; item `i` gets index `i`. Fails on a duplicate id.
    pub fn new(items: Vec<Item>) -> Result<Self, CatalogError> {
        let mut index = HashMap::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            if index.insert(item.id, position as ItemIndex).is_some() {
                return Err(CatalogError::DuplicateItem { id: item.id.0 });
            }
        }
        let mut genres: Vec<String> = items.iter().flat_map(|i| i.genres.clone()).collect();
        genres.sort_unstable();
        genres.dedup();
        Ok(Catalog {
            items,
            index,
            genres,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All items, in index order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Dense index of an external id.
    pub fn index_of(&self, id: ItemId) -> Option<ItemIndex> {
        self.index.get(&id).copied()
    }

    /// The item at `index`. Panics if `index >= len()`: indices come from this catalog.
    pub fn item(&self, index: ItemIndex) -> &Item {
        &self.items[index as usize]
    }

    /// The item at `index`, or `None` when out of range.
    pub fn get(&self, index: ItemIndex) -> Option<&Item> {
        self.items.get(index as usize)
    }

    /// The text the encoder embeds for an item:
    /// `"{title}. Genres: {genres}. Tags: {tags}."`, genres lower-cased and comma-separated
    /// in source order, tags the item's [`TOP_TAGS`] most frequent (lower-cased, by count,
    /// ties alphabetical). A part without content is left out, and a title's own trailing
    /// period is not doubled: `"Heat (1995). Genres: action, crime, thriller. Tags: ..."`,
    /// `"Hyena Road."`.
    pub fn text(&self, index: ItemIndex) -> String {
        self.item(index).text()
    }

    /// Every item's text, in index order.
    pub fn texts(&self) -> Vec<String> {
        self.items.iter().map(Item::text).collect()
    }

    /// Every genre name that some item has, sorted.
    pub fn genres(&self) -> &[String] {
        &self.genres
    }

    /// SHA-256 (hex) over every item's id and text in index order: changes whenever an
    /// embedding row would change or move.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update((self.items.len() as u64).to_le_bytes());
        for item in &self.items {
            let text = item.text();
            hasher.update(item.id.0.to_le_bytes());
            // Length-prefixed so that no two different catalogs hash the same byte stream.
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// One row of `ratings.csv`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rating {
    pub user: UserId,
    pub item: ItemIndex,
    /// On the 0.5..=5.0 scale.
    pub rating: f32,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

/// One row of `tags.csv`: a user applied a free-text tag to an item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagApplication {
    pub user: UserId,
    pub item: ItemIndex,
    /// The tag as written (top tags are counted case-insensitively).
    pub tag: String,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
}

/// A loaded (or generated) dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub catalog: Catalog,
    /// Ratings in file order.
    pub ratings: Vec<Rating>,
    /// Tag applications in file order (empty without `tags.csv`).
    pub tags: Vec<TagApplication>,
    /// Rows skipped in lenient mode, in file order (movies, ratings, tags).
    pub diagnostics: Vec<Diagnostic>,
}

impl Dataset {
    /// Each user's ratings as history entries, users by ascending id, each history in file
    /// order (`UserTable::build` sorts by time).
    pub fn user_histories(&self) -> Vec<(UserId, Vec<HistoryEntry>)> {
        let mut rows: Vec<(UserId, HistoryEntry)> = self
            .ratings
            .iter()
            .map(|r| {
                let entry = HistoryEntry {
                    item: r.item,
                    rating: r.rating,
                    timestamp: r.timestamp,
                };
                (r.user, entry)
            })
            .collect();
        // Stable, and close to linear when the file is already grouped by user.
        rows.sort_by_key(|(user, _)| *user);
        rows.chunk_by(|a, b| a.0 == b.0)
            .map(|chunk| (chunk[0].0, chunk.iter().map(|(_, e)| *e).collect()))
            .collect()
    }

    /// Number of distinct users with at least one rating.
    pub fn user_count(&self) -> usize {
        let mut users: Vec<UserId> = self.ratings.iter().map(|r| r.user).collect();
        users.sort_unstable();
        users.dedup();
        users.len()
    }

    /// The catalog's fingerprint (see [`Catalog::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.catalog.fingerprint()
    }
}

/// Counts tag applications per item (case-insensitively) and returns each item's
/// [`TOP_TAGS`] most frequent tags, by count descending, ties alphabetical.
pub fn top_tags(n_items: usize, tags: &[TagApplication]) -> Vec<Vec<String>> {
    let mut counts: Vec<HashMap<String, u32>> = vec![HashMap::new(); n_items];
    for application in tags {
        if let Some(item_counts) = counts.get_mut(application.item as usize) {
            *item_counts
                .entry(normalize_tag(&application.tag))
                .or_insert(0) += 1;
        }
    }
    counts
        .into_iter()
        .map(|item_counts| {
            let mut ranked: Vec<(String, u32)> = item_counts.into_iter().collect();
            ranked.sort_by(|(tag_a, count_a), (tag_b, count_b)| {
                count_b.cmp(count_a).then_with(|| tag_a.cmp(tag_b))
            });
            ranked.truncate(TOP_TAGS);
            ranked.into_iter().map(|(tag, _)| tag).collect()
        })
        .collect()
}

fn normalize_tag(tag: &str) -> String {
    tag.trim().to_lowercase()
}

/// Loads `movies.csv`, `ratings.csv` and (if present) `tags.csv` from `dir`.
pub fn load(dir: &Path, options: LoadOptions) -> Result<Dataset, CatalogError> {
    let mut sink = DiagnosticSink {
        strict: options.strict,
        diagnostics: Vec::new(),
    };
    let mut items = read_movies(&dir.join("movies.csv"), &mut sink)?;
    // Duplicates were dropped above, so this map is the catalog's index.
    let index: HashMap<ItemId, ItemIndex> = items
        .iter()
        .enumerate()
        .map(|(position, item)| (item.id, position as ItemIndex))
        .collect();
    let ratings = read_ratings(&dir.join("ratings.csv"), &index, &mut sink)?;
    let tags_path = dir.join("tags.csv");
    let tags = if tags_path.exists() {
        read_tags(&tags_path, &index, &mut sink)?
    } else {
        Vec::new()
    };
    let tops = top_tags(items.len(), &tags);
    for (item, top) in items.iter_mut().zip(tops) {
        item.top_tags = top;
    }
    Ok(Dataset {
        catalog: Catalog::new(items)?,
        ratings,
        tags,
        diagnostics: sink.diagnostics,
    })
}

/// Collects diagnostics, or turns the first into an error in strict mode.
struct DiagnosticSink {
    strict: bool,
    diagnostics: Vec<Diagnostic>,
}

impl DiagnosticSink {
    fn report(&mut self, diagnostic: Diagnostic) -> Result<(), CatalogError> {
        if self.strict {
            return Err(CatalogError::Malformed(diagnostic));
        }
        self.diagnostics.push(diagnostic);
        Ok(())
    }
}

/// A CSV file being read row by row, with the header already checked.
struct CsvRows<'p> {
    path: &'p Path,
    reader: csv::Reader<std::fs::File>,
    record: ByteRecord,
    fields: usize,
}

/// A row problem before it is tied to a file and line.
struct RowError {
    kind: DiagnosticKind,
    message: String,
}

impl RowError {
    fn new(kind: DiagnosticKind, message: impl Into<String>) -> Self {
        RowError {
            kind,
            message: message.into(),
        }
    }
}

impl<'p> CsvRows<'p> {
    fn open(path: &'p Path, header: &'static str) -> Result<Self, CatalogError> {
        let file = std::fs::File::open(path).map_err(|e| CatalogError::io("read", path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(file);
        let mut record = ByteRecord::new();
        let has_header = reader
            .read_byte_record(&mut record)
            .map_err(|e| csv_error(path, e))?;
        let found: Vec<String> = record
            .iter()
            .map(|field| String::from_utf8_lossy(field).trim().to_string())
            .collect();
        let found = found.join(",");
        // A UTF-8 byte order mark is not part of the first column name.
        let found_clean = found.trim_start_matches('\u{feff}');
        if !has_header || found_clean != header {
            return Err(CatalogError::Header {
                path: path.to_path_buf(),
                expected: header,
                found,
            });
        }
        Ok(CsvRows {
            path,
            reader,
            record,
            fields: header.split(',').count(),
        })
    }

    /// Advances to the next row; returns its line number, or `None` at the end.
    fn next_row(&mut self) -> Result<Option<u64>, CatalogError> {
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|e| csv_error(self.path, e))?;
        Ok(more.then(|| self.record.position().map_or(0, |p| p.line())))
    }

    /// The current row's fields as text, checked for count and encoding.
    fn fields(&self) -> Result<Vec<&str>, RowError> {
        if self.record.len() != self.fields {
            return Err(RowError::new(
                DiagnosticKind::FieldCount,
                format!(
                    "expected {} fields, found {}",
                    self.fields,
                    self.record.len()
                ),
            ));
        }
        self.record
            .iter()
            .enumerate()
            .map(|(column, field)| {
                std::str::from_utf8(field).map_err(|_| {
                    RowError::new(
                        DiagnosticKind::Encoding,
                        format!("field {} is not valid UTF-8", column + 1),
                    )
                })
            })
            .collect()
    }

    fn diagnostic(&self, line: u64, error: RowError) -> Diagnostic {
        Diagnostic {
            file: self.path.to_path_buf(),
            line,
            kind: error.kind,
            message: error.message,
        }
    }
}

fn csv_error(path: &Path, error: csv::Error) -> CatalogError {
    match error.into_kind() {
        csv::ErrorKind::Io(source) => CatalogError::io("read", path, source),
        other => CatalogError::io(
            "read",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{other:?}")),
        ),
    }
}

fn parse_number<T: std::str::FromStr>(field: &str, what: &str) -> Result<T, RowError> {
    field.trim().parse().map_err(|_| {
        RowError::new(
            DiagnosticKind::BadNumber,
            format!("{what} `{field}` is not a valid number"),
        )
    })
}

fn lookup_movie(index: &HashMap<ItemId, ItemIndex>, field: &str) -> Result<ItemIndex, RowError> {
    let id = ItemId(parse_number(field, "movieId")?);
    index.get(&id).copied().ok_or_else(|| {
        RowError::new(
            DiagnosticKind::UnknownMovie,
            format!("movieId {id} is not in movies.csv"),
        )
    })
}

fn read_movies(path: &Path, sink: &mut DiagnosticSink) -> Result<Vec<Item>, CatalogError> {
    let mut rows = CsvRows::open(path, MOVIES_HEADER)?;
    let mut items = Vec::new();
    let mut first_line: HashMap<ItemId, u64> = HashMap::new();
    while let Some(line) = rows.next_row()? {
        let parsed = rows.fields().and_then(|fields| parse_movie(&fields));
        let item = match parsed {
            Ok(item) => item,
            Err(error) => {
                sink.report(rows.diagnostic(line, error))?;
                continue;
            }
        };
        if let Some(first) = first_line.get(&item.id) {
            let error = RowError::new(
                DiagnosticKind::DuplicateMovie,
                format!(
                    "duplicate movieId {} (first defined at line {first}; keeping the first)",
                    item.id
                ),
            );
            sink.report(rows.diagnostic(line, error))?;
            continue;
        }
        first_line.insert(item.id, line);
        items.push(item);
    }
    Ok(items)
}

fn parse_movie(fields: &[&str]) -> Result<Item, RowError> {
    let id = ItemId(parse_number(fields[0], "movieId")?);
    let title = fields[1].trim().to_string();
    if title.is_empty() {
        return Err(RowError::new(DiagnosticKind::EmptyField, "empty title"));
    }
    let genres_field = fields[2].trim();
    let genres = if genres_field == NO_GENRES || genres_field.is_empty() {
        Vec::new()
    } else {
        genres_field
            .split('|')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect()
    };
    Ok(Item {
        id,
        year: parse_year_suffix(&title).map(|(_, year)| year),
        title,
        genres,
        top_tags: Vec::new(),
    })
}

fn read_ratings(
    path: &Path,
    index: &HashMap<ItemId, ItemIndex>,
    sink: &mut DiagnosticSink,
) -> Result<Vec<Rating>, CatalogError> {
    let mut rows = CsvRows::open(path, RATINGS_HEADER)?;
    let mut ratings = Vec::new();
    while let Some(line) = rows.next_row()? {
        let parsed = rows.fields().and_then(|fields| {
            let user = UserId(parse_number(fields[0], "userId")?);
            let item = lookup_movie(index, fields[1])?;
            let rating: f32 = parse_number(fields[2], "rating")?;
            if !(MIN_RATING..=MAX_RATING).contains(&rating) {
                return Err(RowError::new(
                    DiagnosticKind::RatingOutOfRange,
                    format!("rating {rating} is outside {MIN_RATING}..={MAX_RATING}"),
                ));
            }
            let timestamp = parse_number(fields[3], "timestamp")?;
            Ok(Rating {
                user,
                item,
                rating,
                timestamp,
            })
        });
        match parsed {
            Ok(rating) => ratings.push(rating),
            Err(error) => sink.report(rows.diagnostic(line, error))?,
        }
    }
    Ok(ratings)
}

fn read_tags(
    path: &Path,
    index: &HashMap<ItemId, ItemIndex>,
    sink: &mut DiagnosticSink,
) -> Result<Vec<TagApplication>, CatalogError> {
    let mut rows = CsvRows::open(path, TAGS_HEADER)?;
    let mut tags = Vec::new();
    while let Some(line) = rows.next_row()? {
        let parsed = rows.fields().and_then(|fields| {
            let user = UserId(parse_number(fields[0], "userId")?);
            let item = lookup_movie(index, fields[1])?;
            if fields[2].trim().is_empty() {
                return Err(RowError::new(DiagnosticKind::EmptyField, "empty tag"));
            }
            let timestamp = parse_number(fields[3], "timestamp")?;
            Ok(TagApplication {
                user,
                item,
                tag: fields[2].to_string(),
                timestamp,
            })
        });
        match parsed {
            Ok(tag) => tags.push(tag),
            Err(error) => sink.report(rows.diagnostic(line, error))?,
        }
    }
    Ok(tags)
}
