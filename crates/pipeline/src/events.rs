//! Durable real-time events: an append-only JSON-lines log, replayed at start-up.
//!
//! Each event is one line, written with a single `write_all` and flushed to disk before
//! `append` returns, so an acknowledged event survives a crash. A torn last line (a crash in
//! the middle of a write) is reported and ignored on replay, never deleted: the log is only
//! ever appended to.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use hyperrec_stage::Event;

use crate::PipelineError;

/// An append-only log of events.
pub struct EventLog {
    path: PathBuf,
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    pub events: Vec<Event>,
    /// `(line, message)` for lines that could not be read back.
    pub skipped: Vec<(usize, String)>,
}

impl EventLog {
    pub fn new(path: impl Into<PathBuf>) -> EventLog {
        EventLog { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event and syncs it to disk.
    pub fn append(&self, event: &Event) -> Result<(), PipelineError> {
        let error = |message: String| PipelineError::EventLog {
            path: self.path.display().to_string(),
            message,
        };
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| error(e.to_string()))?;
        }
        let mut line = serde_json::to_string(event).map_err(|e| error(e.to_string()))?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| error(e.to_string()))?;
        file.write_all(line.as_bytes())
            .map_err(|e| error(e.to_string()))?;
        file.sync_data().map_err(|e| error(e.to_string()))
    }

    /// Reads every event back in order. A missing log is empty.
    pub fn replay(&self) -> Result<Replay, PipelineError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Replay::default()),
            Err(e) => {
                return Err(PipelineError::EventLog {
                    path: self.path.display().to_string(),
                    message: e.to_string(),
                });
            }
        };
        let mut replay = Replay::default();
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    replay.skipped.push((number + 1, e.to_string()));
                    continue;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => replay.events.push(event),
                Err(e) => replay.skipped.push((number + 1, e.to_string())),
            }
        }
        Ok(replay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperrec_stage::{Interaction, ItemId, UserId};

    #[test]
    fn appended_events_replay_in_order_and_torn_lines_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::new(dir.path().join("events.jsonl"));
        assert!(
            log.replay()
                .expect("missing log is empty")
                .events
                .is_empty()
        );
        let first = Event {
            user: UserId(1),
            item: ItemId(318),
            interaction: Interaction::Rating(4.5),
            timestamp: 10,
        };
        let second = Event {
            interaction: Interaction::Skip,
            timestamp: 11,
            ..first
        };
        log.append(&first).expect("append");
        log.append(&second).expect("append");
        // A crash mid-write leaves a torn line: it is reported, the rest survives.
        let mut file = OpenOptions::new()
            .append(true)
            .open(log.path())
            .expect("open");
        file.write_all(b"{\"user\": 3, \"ite").expect("write");
        let replay = log.replay().expect("replay");
        assert_eq!(replay.events, vec![first, second]);
        assert_eq!(replay.skipped.len(), 1);
        assert_eq!(replay.skipped[0].0, 3);
    }
}
