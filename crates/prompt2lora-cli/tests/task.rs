//! `prompt2lora task check`, the top-level help and the exit codes, through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn prompt2lora(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prompt2lora"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn every_shipped_task_file_checks() {
    for name in ["ecommerce-zh", "ecommerce-en", "snips", "smp2017"] {
        let path = examples().join(format!("{name}.toml"));
        let out = prompt2lora(&["task", "check", path.to_str().unwrap()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("task      {name}")), "{stdout}");
    }
}

#[test]
fn broken_task_file_names_file_line_and_key() {
    let source = fs_err::read_to_string(examples().join("ecommerce-zh.toml")).unwrap();
    let broken = source.replace("epochs = 8", "epochs = \"eight\"");
    assert_ne!(source, broken);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    fs_err::write(&path, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("\"eight\""))
        .unwrap()
        + 1;

    let out = prompt2lora(&["task", "check", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("error: {}:{line}: key `train.epochs`:", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[test]
fn missing_task_file_is_bad_input() {
    let out = prompt2lora(&["task", "check", "no-such-task.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-task.toml"));
}

#[test]
fn help_lists_every_stage() {
    let out = prompt2lora(&["--help"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for command in [
        "run", "generate", "filter", "train", "eval", "predict", "serve", "models", "task",
    ] {
        assert!(
            stdout.contains(&format!("  {command} ")),
            "{command} missing:\n{stdout}"
        );
    }
}
