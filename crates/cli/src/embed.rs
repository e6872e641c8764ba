//! `hyperrec embed`: print the embedding of each text.

use std::ffi::OsString;
use std::io::{self, BufWriter, Read, Write};

use anyhow::{Context, bail};
use clap::Args;
use hyperrec_encoder::{DEFAULT_MODEL, Encoder, resolve_model};
use serde::Serialize;

/// Texts embedded per forward pass, so that a long stdin streams out instead of being
/// held in memory as embeddings all at once.
const CHUNK: usize = 256;

#[derive(Args)]
pub struct EmbedArgs {
    /// Print a JSON array of {"text", "tokens", "embedding"} instead of one line per text.
    #[arg(long)]
    pub json: bool,
    /// Model: a local directory (config.json, tokenizer.json, model.safetensors) or a hub id.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Texts to embed. Without any, texts are read from stdin, one per line (blank lines
    /// are skipped).
    pub texts: Vec<OsString>,
}

#[derive(Serialize)]
struct Embedded<'a> {
    text: &'a str,
    tokens: Vec<String>,
    embedding: Vec<f32>,
}

/// Plain output: the text (tab, newline, carriage return and backslash escaped so a record
/// stays on one line), a tab, then the floats separated by spaces.
pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    // Read and check all input before the model loads: bad input fails fast.
    let texts = if args.texts.is_empty() {
        read_stdin_lines()?
    } else {
        texts_from_args(args.texts)?
    };
    let model = resolve_model(&args.model)?;
    tracing::info!(source = %model.source, fingerprint = %model.fingerprint, "model resolved");
    let encoder = Encoder::load(&model)?;

    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.json {
        out.write_all(b"[")?;
    }
    let mut first = true;
    for (chunk_index, chunk) in texts.chunks(CHUNK).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let embeddings = encoder
            .encode(&refs)
            .with_context(|| locate(&refs, &encoder, chunk_index * CHUNK))?;
        for (text, embedding) in refs.iter().zip(embeddings) {
            if args.json {
                let record = Embedded {
                    text,
                    tokens: encoder.tokens(text)?,
                    embedding,
                };
                if !first {
                    out.write_all(b",")?;
                }
                out.write_all(b"\n  ")?;
                serde_json::to_writer(&mut out, &record)?;
            } else {
                write_plain(&mut out, text, &embedding)?;
            }
            first = false;
        }
    }
    if args.json {
        out.write_all(if first { b"]\n" } else { b"\n]\n" })?;
    }
    out.flush()?;
    Ok(())
}

/// Names the first text of a failed chunk that the encoder rejects.
fn locate(refs: &[&str], encoder: &Encoder, offset: usize) -> String {
    refs.iter()
        .position(|text| encoder.tokens(text).is_err())
        .map(|index| format!("text {}", offset + index + 1))
        .unwrap_or_else(|| "embedding failed".to_owned())
}

fn texts_from_args(args: Vec<OsString>) -> anyhow::Result<Vec<String>> {
    args.into_iter()
        .enumerate()
        .map(|(index, arg)| {
            arg.into_string().map_err(|raw| {
                anyhow::anyhow!(
                    "text argument {} is not valid UTF-8: {}",
                    index + 1,
                    raw.to_string_lossy()
                )
            })
        })
        .collect()
}

fn read_stdin_lines() -> anyhow::Result<Vec<String>> {
    let mut raw = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut raw)
        .context("cannot read stdin")?;
    let mut texts = Vec::new();
    for (index, line) in raw.split(|&byte| byte == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(text) = std::str::from_utf8(line) else {
            bail!(
                "stdin line {} is not valid UTF-8: {}",
                index + 1,
                String::from_utf8_lossy(line)
            );
        };
        if !text.trim().is_empty() {
            texts.push(text.to_owned());
        }
    }
    if texts.is_empty() {
        bail!("no texts: give them as arguments or on stdin, one per line");
    }
    Ok(texts)
}

fn write_plain(out: &mut impl Write, text: &str, embedding: &[f32]) -> io::Result<()> {
    for c in text.chars() {
        match c {
            '\t' => out.write_all(b"\\t")?,
            '\n' => out.write_all(b"\\n")?,
            '\r' => out.write_all(b"\\r")?,
            '\\' => out.write_all(b"\\\\")?,
            _ => write!(out, "{c}")?,
        }
    }
    out.write_all(b"\t")?;
    for (index, value) in embedding.iter().enumerate() {
        if index > 0 {
            out.write_all(b" ")?;
        }
        write!(out, "{value}")?;
    }
    out.write_all(b"\n")
}
