//! Which stages of a run folder are up to date: each finished stage records a content hash of
//! its inputs and settings in `stages.json`, so a rerun after a crash or a settings change
//! redoes only the stages whose inputs changed (and everything after them).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One finished stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    /// Hash of the stage's input files and settings.
    pub inputs: String,
    /// Wall-clock seconds the stage took when it last ran.
    pub seconds: f64,
}

/// `stages.json` of a run folder.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Stages {
    #[serde(skip)]
    path: PathBuf,
    stages: BTreeMap<String, StageRecord>,
}

impl Stages {
    pub fn load(run_dir: &Path) -> anyhow::Result<Stages> {
        let path = run_dir.join("stages.json");
        let mut stages: Stages = match fs_err::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: unreadable ({e}); every stage will run again",
                    path.display()
                );
                Stages::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stages::default(),
            Err(e) => return Err(e.into()),
        };
        stages.path = path;
        Ok(stages)
    }

    /// Whether `stage` finished with exactly these inputs.
    pub fn is_fresh(&self, stage: &str, inputs: &str) -> bool {
        self.stages.get(stage).is_some_and(|r| r.inputs == inputs)
    }

    pub fn get(&self, stage: &str) -> Option<&StageRecord> {
        self.stages.get(stage)
    }

    /// Seconds of `stage` and of its repetitions in later rounds (`stage.*`).
    pub fn total_seconds(&self, stage: &str) -> f64 {
        self.stages
            .iter()
            .filter(|(name, _)| {
                name.as_str() == stage
                    || name
                        .strip_prefix(stage)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
            .map(|(_, r)| r.seconds)
            .sum()
    }

    /// Records a finished stage and saves the file atomically.
    pub fn finish(&mut self, stage: &str, inputs: String, seconds: f64) -> anyhow::Result<()> {
        self.stages
            .insert(stage.to_string(), StageRecord { inputs, seconds });
        let tmp = self.path.with_extension("json.tmp");
        fs_err::write(&tmp, serde_json::to_string_pretty(self)?)?;
        fs_err::rename(&tmp, &self.path)?;
        Ok(())
    }
}

/// Builds the input hash of a stage from files and serialisable settings.
#[derive(Default)]
pub struct InputHash(Sha256);

impl InputHash {
    pub fn new(stage: &str) -> Self {
        let mut hash = InputHash(Sha256::new());
        hash.0.update(stage.as_bytes());
        hash
    }

    /// Adds a file's content (or its absence).
    pub fn file(mut self, path: &Path) -> anyhow::Result<Self> {
        self.0
            .update(path.file_name().unwrap_or_default().as_encoded_bytes());
        match fs_err::File::open(path) {
            Ok(mut file) => {
                let mut buffer = vec![0u8; 1 << 16];
                loop {
                    let n = file.read(&mut buffer)?;
                    if n == 0 {
                        break;
                    }
                    self.0.update(&buffer[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.0.update(b"<missing>"),
            Err(e) => return Err(e.into()),
        }
        Ok(self)
    }

    /// Adds every file of a folder, in name order.
    pub fn dir(mut self, dir: &Path) -> anyhow::Result<Self> {
        let mut entries: Vec<PathBuf> = fs_err::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries.into_iter().filter(|p| p.is_file()) {
            self = self.file(&path)?;
        }
        Ok(self)
    }

    /// Adds settings, as their JSON form.
    pub fn value<T: Serialize>(mut self, value: &T) -> anyhow::Result<Self> {
        self.0.update(serde_json::to_vec(value)?);
        Ok(self)
    }

    pub fn finish(self) -> String {
        self.0.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_is_fresh_only_for_the_same_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("samples.jsonl");
        fs_err::write(&input, "a\n").unwrap();
        let hash = |settings: u32| {
            InputHash::new("filter")
                .file(&input)
                .unwrap()
                .value(&settings)
                .unwrap()
                .finish()
        };
        let first = hash(1);
        let mut stages = Stages::load(dir.path()).unwrap();
        stages.finish("filter", first.clone(), 1.5).unwrap();

        let stages = Stages::load(dir.path()).unwrap();
        assert!(stages.is_fresh("filter", &first));
        assert!(!stages.is_fresh("filter", &hash(2)));
        fs_err::write(&input, "b\n").unwrap();
        assert!(!stages.is_fresh("filter", &hash(1)));
        assert!(!stages.is_fresh("train", &first));
    }
}
