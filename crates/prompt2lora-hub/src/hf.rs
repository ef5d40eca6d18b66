//! `hf:ORG/NAME` (an encoder folder) and `hf:ORG/NAME/FILE.gguf` (a teacher) from the Hugging
//! Face hub, through the `hf-hub` crate and its usual cache (`HF_HOME`, `HF_ENDPOINT`). The
//! token comes from `HF_TOKEN`, else from the hub's own token file.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
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
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    resolve_with(name, builder(token))
}

/// The hub client: `HF_HOME` and `HF_ENDPOINT` from the environment, no progress bars, and
/// `token` where given (else the hub's own token file).
pub fn builder(token: Option<String>) -> ApiBuilder {
    let builder = ApiBuilder::from_env().with_progress(false);
    match token {
        Some(token) => builder.with_token(Some(token)),
        None => builder,
    }
}

/// [`resolve`] with a given hub client.
pub fn resolve_with(name: &str, builder: ApiBuilder) -> Result<ModelFiles, HubError> {
    let parsed = parse(name)?;
    let hub_error = |message: String| HubError::Hub {
        repo: parsed.repo.clone(),
        message,
    };
    let api = builder.build().map_err(|e| hub_error(e.to_string()))?;
    let repo = match &parsed.revision {
        Some(revision) => {
            Repo::with_revision(parsed.repo.clone(), RepoType::Model, revision.clone())
        }
        None => Repo::model(parsed.repo.clone()),
    };
    let repo = api.repo(repo);
    let get = |file: &str| -> Result<PathBuf, HubError> {
        tracing::debug!(
            "getting {file} of {} (hub cache, else download)",
            parsed.repo
        );
        repo.get(file)
            .map_err(|e| hub_error(format!("{file}: {e}")))
    };
    tracing::info!("getting {name} from the Hugging Face hub (or its cache)");

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

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

    /// A stand-in for the hub on loopback: serves `files` of one repository at commit `c0ffee`,
    /// 404 for anything else, and records the requests' Authorization headers.
    fn serve(files: Vec<(&'static str, &'static [u8])>) -> (String, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let auth = Arc::new(Mutex::new(Vec::new()));
        let seen = auth.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let (mut start, mut last) = (0usize, None::<usize>);
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("authorization: ") {
                        seen.lock().unwrap().push(value.trim().to_string());
                    }
                    if let Some(range) = lower.strip_prefix("range: bytes=") {
                        let (from, to) = range.trim().split_once('-').unwrap();
                        start = from.parse().unwrap();
                        last = to.parse().ok();
                    }
                    if line.trim().is_empty() {
                        break;
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let file = path.strip_prefix("/org/model/resolve/main/");
                let found = files.iter().find(|(name, _)| Some(*name) == file);
                let response = match found {
                    Some((name, body)) => {
                        // `Range: bytes=FROM-[TO]`, TO inclusive.
                        let end = last.map_or(body.len(), |last| (last + 1).min(body.len()));
                        let part = &body[start..end];
                        let mut head = format!(
                            "HTTP/1.1 206 Partial Content\r\netag: \"{name}-etag\"\r\n\
                             x-repo-commit: c0ffee\r\ncontent-range: bytes {start}-{}/{}\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n",
                            end.saturating_sub(1),
                            body.len(),
                            part.len()
                        )
                        .into_bytes();
                        head.extend_from_slice(part);
                        head
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = stream.write_all(&response);
            }
        });
        (endpoint, auth)
    }

    fn hub(endpoint: &str, cache: &std::path::Path, token: Option<&str>) -> ApiBuilder {
        ApiBuilder::new()
            .with_endpoint(endpoint.to_string())
            .with_cache_dir(cache.to_path_buf())
            .with_progress(false)
            .with_token(token.map(str::to_string))
    }

    #[test]
    fn an_encoder_falls_back_to_pytorch_weights_and_sends_the_token() {
        let (endpoint, auth) = serve(vec![
            ("config.json", b"{\"hidden_size\": 8}"),
            ("tokenizer.json", b"{}"),
            ("pytorch_model.bin", b"torch weights"),
        ]);
        let cache = tempfile::tempdir().unwrap();
        let files =
            resolve_with("org/model", hub(&endpoint, cache.path(), Some("hf_secret"))).unwrap();
        assert_eq!(files.id, "org/model");
        let dir = files.dir.unwrap();
        assert_eq!(
            std::fs::read(dir.join("config.json")).unwrap(),
            b"{\"hidden_size\": 8}"
        );
        assert_eq!(
            std::fs::read(dir.join("pytorch_model.bin")).unwrap(),
            b"torch weights"
        );
        assert!(!dir.join("model.safetensors").exists());
        let auth = auth.lock().unwrap();
        assert!(
            !auth.is_empty() && auth.iter().all(|a| a == "bearer hf_secret"),
            "{auth:?}"
        );
    }

    #[test]
    fn a_gguf_file_is_fetched_alone_and_missing_files_are_named() {
        let (endpoint, _) = serve(vec![("teacher-q4_k_m.gguf", b"GGUF....")]);
        let cache = tempfile::tempdir().unwrap();
        let files = resolve_with(
            "org/model/teacher-q4_k_m.gguf",
            hub(&endpoint, cache.path(), None),
        )
        .unwrap();
        assert_eq!(std::fs::read(files.gguf.unwrap()).unwrap(), b"GGUF....");
        assert_eq!(files.dir, None);

        let error = resolve_with("org/model", hub(&endpoint, cache.path(), None)).unwrap_err();
        assert!(
            error.to_string().contains("org/model: config.json"),
            "{error}"
        );
    }
}
