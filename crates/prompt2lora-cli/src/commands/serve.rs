//! `prompt2lora serve`: serves one or more adapters over HTTP (see `docs/serve.md`) until
//! Ctrl-C or SIGTERM, finishing the requests in flight.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prompt2lora_eval::serve::{ServeOptions, ServedModel, router, serve, shutdown_signal};

use super::UserError;
use crate::logging::GlobalArgs;

/// Environment variable read for the bearer token when `--token-env` is not given.
const DEFAULT_TOKEN_ENV: &str = "PROMPT2LORA_TOKEN";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Adapters to serve: `DIR` (named after the folder, or after the run folder for a run's
    /// `adapter`), `NAME=DIR`, or a folder whose subfolders are adapters (each named after its
    /// subfolder).
    #[arg(required = true, value_name = "ADAPTER")]
    pub adapters: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Environment variable holding the bearer token that `/v1/*` requires. Without this flag
    /// PROMPT2LORA_TOKEN is used if set; if neither is set, requests need no token.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Most texts in one classifier call.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Milliseconds the batcher waits for more requests once it has one.
    #[arg(long, default_value_t = 1)]
    pub batch_wait_ms: u64,
    /// Largest request body, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub max_body_kib: usize,
    /// Most texts in one request.
    #[arg(long, default_value_t = 256)]
    pub max_texts: usize,
    /// Longest text, in characters.
    #[arg(long, default_value_t = 2000)]
    pub max_chars: usize,
    /// Seconds a request may wait for its answer.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
    /// Intents per text when a request does not give `top_k`.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
}

pub fn run(args: Args, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    // Settings, the token first: a misconfigured secret should fail before minutes of loading.
    let token = token(args.token_env.as_deref())?;
    let options = ServeOptions {
        max_body_bytes: args.max_body_kib.saturating_mul(1024),
        max_texts: args.max_texts.max(1),
        max_chars: args.max_chars.max(1),
        max_batch: args.max_batch.max(1),
        max_wait: Duration::from_millis(args.batch_wait_ms),
        timeout: Duration::from_secs(args.timeout_secs.max(1)),
        top_k: args.top_k.max(1),
        token,
        ..ServeOptions::default()
    };

    // The adapters.
    let mut models = Vec::new();
    for (name, dir) in adapter_dirs(&args.adapters)? {
        tracing::info!("loading `{name}` from {}", dir.display());
        let classifier = prompt2lora_encoder::AdapterClassifier::load(&dir)
            .with_context(|| format!("loading the adapter {}", dir.display()))?;
        models.push(ServedModel {
            name,
            classifier: Arc::new(classifier),
        });
    }

    // The service.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| UserError::new(format!("cannot listen on {}: {e}", args.addr)))?;
        let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
        let auth = if options.token.is_some() {
            "bearer token required"
        } else {
            "no auth"
        };
        let app = router(models, options);
        tracing::info!(
            "serving {} on http://{} ({auth})",
            names.join(", "),
            listener.local_addr()?
        );
        serve(listener, app, shutdown_signal())
            .await
            .context("serving HTTP")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The token from `--token-env VAR` (which must then be set), else from PROMPT2LORA_TOKEN if
/// set, else none.
fn token(var: Option<&str>) -> anyhow::Result<Option<String>> {
    let name = var.unwrap_or(DEFAULT_TOKEN_ENV);
    match std::env::var(name).ok().filter(|t| !t.trim().is_empty()) {
        Some(token) => Ok(Some(token.trim().to_string())),
        None if var.is_some() => Err(UserError::new(format!(
            "--token-env {name}: the variable is not set or empty"
        ))
        .with_hint(format!(
            "export {name}=<token>, or leave out --token-env to serve without auth"
        ))
        .into()),
        None => Ok(None),
    }
}

/// Resolves the ADAPTER arguments to unique (name, folder) pairs.
fn adapter_dirs(specs: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for spec in specs {
        let (name, dir) = match spec.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !Path::new(spec).exists() => {
                (Some(name.to_string()), PathBuf::from(dir))
            }
            _ => (None, PathBuf::from(spec)),
        };
        if !dir.is_dir() {
            return Err(
                UserError::new(format!("{}: no such adapter folder", dir.display())).into(),
            );
        }
        let found = if is_adapter(&dir) {
            vec![(name.unwrap_or_else(|| folder_name(&dir)), dir)]
        } else if name.is_none() {
            let mut children: Vec<PathBuf> = fs_err::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_adapter(p))
                .collect();
            children.sort();
            if children.is_empty() {
                let message = format!(
                    "{}: neither an adapter folder (no labels.json) nor a folder of adapters",
                    dir.display()
                );
                return Err(UserError::new(message).into());
            }
            children.into_iter().map(|p| (folder_name(&p), p)).collect()
        } else {
            return Err(UserError::new(format!(
                "{}: not an adapter folder (no labels.json)",
                dir.display()
            ))
            .into());
        };
        for (name, dir) in found {
            if out.iter().any(|(n, _)| *n == name) {
                let message = format!("two adapters are named `{name}`");
                return Err(UserError::new(message)
                    .with_hint("name them with NAME=DIR")
                    .into());
            }
            out.push((name, dir));
        }
    }
    Ok(out)
}

fn is_adapter(dir: &Path) -> bool {
    dir.join("labels.json").is_file()
}

/// The folder's name; for the `adapter` folder of a run folder, the run's name.
fn folder_name(dir: &Path) -> String {
    let dir = fs_err::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    match name(&dir) {
        Some(n) if n == "adapter" => dir.parent().and_then(name).unwrap_or(n),
        Some(n) => n,
        None => "default".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_by_folder_name_explicit_name_or_parent_folder() {
        let root = tempfile::tempdir().unwrap();
        for name in ["shop", "mood"] {
            let dir = root.path().join("adapters").join(name);
            fs_err::create_dir_all(&dir).unwrap();
            fs_err::write(dir.join("labels.json"), "{}").unwrap();
        }
        let adapters = root.path().join("adapters");
        let shop = adapters.join("shop");

        let found = adapter_dirs(&[adapters.display().to_string()]).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["mood", "shop"]);

        let found = adapter_dirs(&[format!("store={}", shop.display())]).unwrap();
        assert_eq!(found[0].0, "store");

        let e = adapter_dirs(&[shop.display().to_string(), adapters.display().to_string()])
            .unwrap_err();
        assert!(
            e.to_string().contains("two adapters are named `shop`"),
            "{e}"
        );
        let run = root.path().join("runs").join("shop-v2").join("adapter");
        fs_err::create_dir_all(&run).unwrap();
        fs_err::write(run.join("labels.json"), "{}").unwrap();
        assert_eq!(
            adapter_dirs(&[run.display().to_string()]).unwrap()[0].0,
            "shop-v2"
        );

        let e = adapter_dirs(&[root.path().display().to_string()]).unwrap_err();
        assert!(e.to_string().contains("nor a folder of adapters"), "{e}");
    }
}
