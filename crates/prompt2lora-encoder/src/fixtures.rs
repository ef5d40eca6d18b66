//! Tiny random BERT models and toy data for tests and examples: a model folder in the Hugging
//! Face layout (config.json, tokenizer.json, model.safetensors) small enough to train in seconds.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use prompt2lora_core::Sample;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::Lowercase;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;

use crate::model::NormalSampler;
use crate::{Error, Result};

/// The head of the toy task's file: its name, language and the intents of [`TOY_INTENTS`].
/// Tests append their own `[teacher]`, `[filter]` or `[train]` sections.
pub const TOY_TASK: &str = r#"name = "toy"
language = "en"
[[intents]]
name = "weather"
description = "Questions about the weather."
[[intents]]
name = "music"
description = "Playing music."
[[intents]]
name = "booking"
description = "Booking a table."
"#;

/// Intents of the toy task and the words that mark them.
pub const TOY_INTENTS: [(&str, &[&str]); 3] = [
    (
        "weather",
        &[
            "rain", "sunny", "forecast", "cold", "wind", "snow", "umbrella", "storm",
        ],
    ),
    (
        "music",
        &[
            "play", "song", "album", "band", "guitar", "playlist", "jazz", "loud",
        ],
    ),
    (
        "booking",
        &[
            "table",
            "restaurant",
            "reserve",
            "dinner",
            "seats",
            "tonight",
            "book",
            "menu",
        ],
    ),
];

/// Words shared by all intents.
const FILLER: [&str; 10] = [
    "please", "the", "a", "for", "me", "now", "can", "you", "my", "some",
];

/// Sizes of the tiny model.
#[derive(Debug, Clone, Copy)]
pub struct TinySize {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// Standard deviation of the random weights.
    pub std: f32,
}

impl Default for TinySize {
    fn default() -> Self {
        TinySize {
            hidden: 32,
            layers: 2,
            heads: 4,
            intermediate: 64,
            std: 0.1,
        }
    }
}

/// Writes a random BERT model with a word-level tokenizer over the toy vocabulary to `dir`.
pub fn write_tiny_model(dir: &Path, size: TinySize, seed: u64) -> Result<()> {
    fs_err::create_dir_all(dir)?;
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .map(String::from)
        .to_vec();
    vocab.extend(
        TOY_INTENTS
            .iter()
            .flat_map(|(_, words)| words.iter().map(|w| w.to_string())),
    );
    vocab.extend(FILLER.iter().map(|w| w.to_string()));
    write_tokenizer(&dir.join("tokenizer.json"), &vocab)?;

    let max_positions = 64;
    let config = serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": vocab.len(),
        "hidden_size": size.hidden,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "intermediate_size": size.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_positions,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0
    });
    fs_err::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let (h, i) = (size.hidden, size.intermediate);
    let mut add = |name: String, shape: &[usize], kind: Init| -> Result<()> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| match kind {
                Init::Normal => rng.sample(NormalSampler) * size.std,
                Init::One => 1.0 + rng.sample(NormalSampler) * 0.05,
                Init::Small => rng.sample(NormalSampler) * 0.02,
            })
            .collect();
        tensors.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        Ok(())
    };
    add(
        "embeddings.word_embeddings.weight".into(),
        &[vocab.len(), h],
        Init::Normal,
    )?;
    add(
        "embeddings.position_embeddings.weight".into(),
        &[max_positions, h],
        Init::Normal,
    )?;
    add(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        Init::Normal,
    )?;
    add("embeddings.LayerNorm.weight".into(), &[h], Init::One)?;
    add("embeddings.LayerNorm.bias".into(), &[h], Init::Small)?;
    for l in 0..size.layers {
        let p = format!("encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            add(format!("{p}.{name}.weight"), &[out, inp], Init::Normal)?;
            add(format!("{p}.{name}.bias"), &[out], Init::Small)?;
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            add(format!("{p}.{norm}.weight"), &[h], Init::One)?;
            add(format!("{p}.{norm}.bias"), &[h], Init::Small)?;
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Init {
    Normal,
    One,
    Small,
}

fn write_tokenizer(path: &Path, vocab: &[String]) -> Result<()> {
    let map: HashMap<String, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), i as u32))
        .collect();
    let model = WordLevel::builder()
        .vocab(map.into_iter().collect())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| Error::Model(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(Lowercase))
        .map_err(|e| Error::Model(e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(Whitespace {}));
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| Error::Model(e.to_string()))?
        .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
        .build()
        .map_err(|e| Error::Model(e.to_string()))?;
    tokenizer.with_post_processor(Some(template));
    tokenizer
        .save(path, false)
        .map_err(|e| Error::Model(e.to_string()))?;
    Ok(())
}

/// `per_intent` toy messages per intent: two to four intent words among filler words.
/// `label_noise` is the share of samples whose label is replaced by a wrong one; the
/// `label_logprob` of each sample says how sure a teacher would have been.
pub fn toy_samples(per_intent: usize, label_noise: f64, seed: u64) -> Vec<Sample> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (c, (intent, words)) in TOY_INTENTS.iter().enumerate() {
        for _ in 0..per_intent {
            let mut tokens = Vec::new();
            for _ in 0..rng.random_range(2..=4) {
                tokens.push(words[rng.random_range(0..words.len())]);
            }
            for _ in 0..rng.random_range(1..=5) {
                let at = rng.random_range(0..=tokens.len());
                tokens.insert(at, FILLER[rng.random_range(0..FILLER.len())]);
            }
            let mut sample = Sample::new(tokens.join(" "), *intent);
            if rng.random_bool(label_noise) {
                let other = (c + rng.random_range(1..TOY_INTENTS.len())) % TOY_INTENTS.len();
                sample.intent = TOY_INTENTS[other].0.to_string();
                sample.label_logprob = Some(rng.random_range(0.3..0.7));
            } else {
                sample.label_logprob = Some(rng.random_range(0.85..1.0));
            }
            out.push(sample);
        }
    }
    out
}
