//! Checkpoints: adapter and head weights, optimiser moments, the best weights so far and the
//! position in the data order, written atomically every few steps; the last few are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::log::History;
use crate::{Error, Result};

/// Where training stands, as saved in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Fingerprint of the settings and data; a checkpoint only resumes the same training.
    pub fingerprint: String,
    pub rank: usize,
    /// Optimiser updates done.
    pub step: usize,
    /// Epoch in progress (0-based) and the next batch of it.
    pub epoch: usize,
    pub batch: usize,
    pub best_f1: Option<f64>,
    pub best_epoch: Option<usize>,
    /// Epochs since the best one.
    pub stale_epochs: usize,
    pub stopped_early: bool,
    pub history: History,
}

/// The tensors of a checkpoint, by role.
pub struct Saved {
    pub params: Vec<Tensor>,
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub best: Option<Vec<Tensor>>,
}

const STATE: &str = "state.json";
const TENSORS: &str = "state.safetensors";

/// Writes checkpoint `step-NNNNNN` into `dir` and removes all but the newest `keep`.
pub fn save(
    dir: &Path,
    names: &[String],
    state: &State,
    saved: &Saved,
    keep: usize,
) -> Result<PathBuf> {
    fs_err::create_dir_all(dir)?;
    let final_dir = dir.join(format!("step-{:07}", state.step));
    let tmp = dir.join(format!(".step-{:07}.tmp", state.step));
    if tmp.exists() {
        fs_err::remove_dir_all(&tmp)?;
    }
    fs_err::create_dir_all(&tmp)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        tensors.insert(format!("param.{name}"), saved.params[i].clone());
        tensors.insert(format!("adam_m.{name}"), saved.m[i].clone());
        tensors.insert(format!("adam_v.{name}"), saved.v[i].clone());
        if let Some(best) = &saved.best {
            tensors.insert(format!("best.{name}"), best[i].clone());
        }
    }
    candle_core::safetensors::save(&tensors, tmp.join(TENSORS))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Model(e.to_string()))?;
    fs_err::write(tmp.join(STATE), json)?;
    if final_dir.exists() {
        fs_err::remove_dir_all(&final_dir)?;
    }
    fs_err::rename(&tmp, &final_dir)?;
    prune(dir, keep.max(1))?;
    Ok(final_dir)
}

/// Checkpoint folders in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out: Vec<PathBuf> = fs_err::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join(STATE).is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir)?;
    if all.len() > keep {
        for old in &all[..all.len() - keep] {
            fs_err::remove_dir_all(old)?;
        }
    }
    Ok(())
}

/// Reads a checkpoint folder.
pub fn load(path: &Path, names: &[String]) -> Result<(State, Saved)> {
    let text = fs_err::read_to_string(path.join(STATE))?;
    let state: State = serde_json::from_str(&text)
        .map_err(|e| Error::Model(format!("{}: {e}", path.join(STATE).display())))?;
    let tensors = candle_core::safetensors::load(path.join(TENSORS), &Device::Cpu)?;
    let get = |prefix: &str, name: &str| {
        tensors
            .get(&format!("{prefix}.{name}"))
            .cloned()
            .ok_or_else(|| {
                Error::Model(format!(
                    "{}: tensor `{prefix}.{name}` is missing",
                    path.display()
                ))
            })
    };
    let collect = |prefix: &str| {
        names
            .iter()
            .map(|n| get(prefix, n))
            .collect::<Result<Vec<_>>>()
    };
    let best = if tensors.keys().any(|k| k.starts_with("best.")) {
        Some(collect("best")?)
    } else {
        None
    };
    let saved = Saved {
        params: collect("param")?,
        m: collect("adam_m")?,
        v: collect("adam_v")?,
        best,
    };
    Ok((state, saved))
}
