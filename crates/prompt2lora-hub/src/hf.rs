//! `hf:ORG/NAME` (an encoder folder) and `hf:ORG/NAME/FILE.gguf` (a teacher) from the Hugging
//! Face hub, through the `hf-hub` crate and its usual cache (`HF_HOME`, `HF_ENDPOINT`). The
//! token comes from `HF_TOKEN`, else from the hub's own token file.

use std::path::PathBuf;

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Repo, RepoType};

use crate::{HubError, ModelFiles};

/// A parsed `hf:` name (without the prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfName {
    /// `ORG/NAME`.
    pub repo: String,
    pub revision: Option<String>,
    /// A file in the repository (a `.gguf`), or none for an encoder folder.
    pub file: Option<String>,
}

/// Parses `ORG/NAME[@REVISION][/PATH/FILE.gguf]`.
pub fn parse(name: &str) -> Result<HfName, HubError> {
    let invalid = || HubError::Hub {
        repo: name.to_string(),
        message: "expected hf:ORG/NAME, hf:ORG/NAME@REVISION or hf:ORG/NAME/FILE.gguf".into(),
    };
    let mut pieces = name.splitn(3, '/');
    let (Some(org), Some(repo_name)) = (pieces.next(), pieces.next()) else {
        return Err(invalid());
    };
    let file = pieces.next().map(str::to_string);
    let (repo_name, revision) = match repo_name.split_once('@') {
        Some((repo_name, revision)) => (repo_name, Some(revision.to_string())),
        None => (repo_name, None),
    };
    if org.is_empty() || repo_name.is_empty() || revision.as_deref() == Some("") {
        return Err(invalid());
    }
    if let Some(file) = file.as_ref().filter(|f| !f.ends_with(".gguf")) {
        return Err(HubError::Hub {
            repo: name.to_string(),
            message: format!(
                "`{file}`: only .gguf files can be named; name the repository alone for an \
                 encoder"
            ),
        });
    }
    Ok(HfName {
        repo: format!("{org}/{repo_name}"),
        revision,
        file,
    })
}

/// Downloads (or finds in the hub cache) the files of an `hf:` name.
pub fn resolve(name: &str) -> Result<ModelFiles, HubError> {
    let parsed = parse(name)?;
    let hub_error = |message: String| HubError::Hub {
        repo: parsed.repo.clone(),
        message,
    };
    let api = api().map_err(|e| hub_error(e.to_string()))?;
    let repo = match &parsed.revision {
        Some(revision) => {
            Repo::with_revision(parsed.repo.clone(), RepoType::Model, revision.clone())
        }
        None => Repo::model(parsed.repo.clone()),
    };
    let repo = api.repo(repo);
    let get = |file: &str| -> Result<PathBuf, HubError> {
        tracing::info!(
            "fetching {file} of {} from the Hugging Face hub",
            parsed.repo
        );
        repo.get(file)
            .map_err(|e| hub_error(format!("{file}: {e}")))
    };

    if let Some(file) = &parsed.file {
        let gguf = get(file)?;
        return Ok(ModelFiles {
            id: parsed.repo.clone(),
            dir: None,
            gguf: Some(gguf),
        });
    }
    let config = get("config.json")?;
    get("tokenizer.json")?;
    if let Err(safetensors) = get("model.safetensors") {
        get("pytorch_model.bin")
            .map_err(|pytorch| hub_error(format!("no weights: {safetensors}; {pytorch}")))?;
    }
    // All files of one revision share the snapshot folder.
    let dir = config
        .parent()
        .expect("a file in a snapshot folder")
        .to_path_buf();
    Ok(ModelFiles {
        id: parsed.repo.clone(),
        dir: Some(dir),
        gguf: None,
    })
}

fn api() -> Result<Api, hf_hub::api::sync::ApiError> {
    let mut builder = ApiBuilder::from_env().with_progress(false);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repositories_revisions_and_gguf_files() {
        let plain = parse("intfloat/multilingual-e5-small").unwrap();
        assert_eq!(plain.repo, "intfloat/multilingual-e5-small");
        assert_eq!((plain.revision, plain.file), (None, None));

        let pinned = parse("BAAI/bge-small-zh-v1.5@main").unwrap();
        assert_eq!(
            (pinned.repo.as_str(), pinned.revision.as_deref()),
            ("BAAI/bge-small-zh-v1.5", Some("main"))
        );

        let gguf =
            parse("Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf").unwrap();
        assert_eq!(
            gguf.file.as_deref(),
            Some("qwen2.5-1.5b-instruct-q4_k_m.gguf")
        );
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            "org",
            "/name",
            "org/",
            "org/name@",
            "org/name/weights.bin",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
