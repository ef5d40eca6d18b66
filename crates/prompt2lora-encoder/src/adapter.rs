//! The adapter folder that train writes and eval, predict and serve load, in PEFT's layout:
//! `adapter_config.json`, `adapter_model.safetensors` (LoRA matrices and the classification head
//! under PEFT key names), `labels.json` (labels, pooling, base model) and `task.toml`; and the
//! merged export (`model.safetensors` with the updates folded into the base weights).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use prompt2lora_core::Task;
use serde::{Deserialize, Serialize};

use crate::base::BaseModel;
use crate::lora::module_name;
use crate::model::{Head, LINEAR_MODULES, Lora, Pooling, Student, Weights};
use crate::{Error, Result};

/// PEFT's prefix for the wrapped model's modules.
const PEFT_PREFIX: &str = "base_model.model.";
/// The encoder sits under `bert`, as in `BertForSequenceClassification`.
const ENCODER_PREFIX: &str = "bert.";
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const LABELS_FILE: &str = "labels.json";
pub const MERGED_WEIGHTS_FILE: &str = "model.safetensors";

/// What an adapter needs besides its weights: `labels.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdapterMeta {
    /// Intents in the order of the head's outputs.
    pub labels: Vec<String>,
    /// The student as named in the task (`minilm-l6`, a folder, `hf:ORG/NAME`).
    pub student: String,
    /// The base model's Hugging Face id.
    pub base_model: String,
    pub pooling: Pooling,
    pub max_length: usize,
    pub rank: usize,
    pub alpha: f64,
    pub lora_dropout: f64,
    pub targets: Vec<String>,
}

/// Writes the adapter folder. `task`, when given, is copied as `task.toml`.
pub fn save(dir: &Path, student: &Student, meta: &AdapterMeta, task: Option<&Task>) -> Result<()> {
    fs_err::create_dir_all(dir)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (l, layer) in student.encoder.layers.iter().enumerate() {
        for (m, linear) in layer.linears().into_iter().enumerate() {
            if let Some(lora) = &linear.lora {
                let key = format!("{PEFT_PREFIX}{ENCODER_PREFIX}{}", module_name(l, m));
                tensors.insert(format!("{key}.lora_A.weight"), lora.a.as_tensor().clone());
                tensors.insert(format!("{key}.lora_B.weight"), lora.b.as_tensor().clone());
            }
        }
    }
    tensors.insert(
        format!("{PEFT_PREFIX}classifier.weight"),
        student.head.weight.as_tensor().clone(),
    );
    tensors.insert(
        format!("{PEFT_PREFIX}classifier.bias"),
        student.head.bias.as_tensor().clone(),
    );
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    save_safetensors(&tensors, Some(metadata), &dir.join(WEIGHTS_FILE))?;

    write_json(&dir.join(CONFIG_FILE), &peft_config(meta))?;
    write_labels(dir, meta)?;
    if let Some(task) = task {
        match toml::to_string(task) {
            Ok(text) => fs_err::write(dir.join("task.toml"), text)?,
            Err(e) => tracing::warn!("could not copy the task file into the adapter: {e}"),
        }
    }
    Ok(())
}

/// PEFT's `LoraConfig` as JSON. `target_modules` lists the module name suffixes that were
/// adapted; the head is in `modules_to_save`, so PEFT restores it instead of leaving a fresh one.
fn peft_config(meta: &AdapterMeta) -> serde_json::Value {
    let targets: Vec<&str> = if meta.targets.iter().any(|t| t == crate::lora::ALL_LINEAR) {
        vec![
            "query",
            "key",
            "value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ]
    } else {
        meta.targets.iter().map(String::as_str).collect()
    };
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "base_model_name_or_path": meta.base_model,
        "r": meta.rank,
        "lora_alpha": meta.alpha,
        "lora_dropout": meta.lora_dropout,
        "target_modules": targets,
        "modules_to_save": ["classifier"],
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

fn write_labels(dir: &Path, meta: &AdapterMeta) -> Result<()> {
    let mut value = serde_json::to_value(meta).map_err(|e| Error::Model(e.to_string()))?;
    let id2label: serde_json::Map<String, serde_json::Value> = meta
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    value["id2label"] = id2label.into();
    write_json(&dir.join(LABELS_FILE), &value)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Model(e.to_string()))?;
    fs_err::write(path, text + "\n")?;
    Ok(())
}

fn save_safetensors(
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, tensor) in tensors {
        let values: Vec<f32> = tensor.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), tensor.dims().to_vec(), bytes));
    }
    for (name, shape, bytes) in &buffers {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::Model(e.to_string()))?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, metadata).map_err(|e| Error::Model(e.to_string()))?;
    fs_err::write(path, bytes)?;
    Ok(())
}

/// Reads `labels.json`.
pub fn read_meta(dir: &Path) -> Result<AdapterMeta> {
    let path = dir.join(LABELS_FILE);
    let text = fs_err::read_to_string(&path)?;
    serde_json::from_str(&text).map_err(|e| Error::Model(format!("{}: {e}", path.display())))
}

/// An adapter or merged export loaded for inference, LoRA folded into the weights.
pub struct Loaded {
    pub meta: AdapterMeta,
    pub base: BaseModel,
    pub student: Student,
}

/// Loads an adapter folder (or a merged export) and merges the adapters into the base weights.
pub fn load(dir: &Path) -> Result<Loaded> {
    let meta = read_meta(dir)?;
    if !dir.join(CONFIG_FILE).is_file() && dir.join(MERGED_WEIGHTS_FILE).is_file() {
        return load_merged(dir, meta);
    }
    let base = BaseModel::resolve(&meta.student)
        .or_else(|_| BaseModel::resolve(&meta.base_model))
        .map_err(|e| {
            Error::Model(format!(
                "{}: base model `{}`: {e}",
                dir.display(),
                meta.student
            ))
        })?;
    let mut encoder = base.load_encoder()?;
    let (rank, alpha) = read_peft_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    let find = |name: &str| {
        [
            format!("{PEFT_PREFIX}{ENCODER_PREFIX}{name}"),
            format!("{PEFT_PREFIX}{name}"),
        ]
        .into_iter()
        .find_map(|k| tensors.get(&k).cloned())
    };
    let mut adapted = 0;
    for (l, layer) in encoder.layers.iter_mut().enumerate() {
        for (m, linear) in layer.linears_mut().into_iter().enumerate() {
            let name = module_name(l, m);
            if let (Some(a), Some(b)) = (
                find(&format!("{name}.lora_A.weight")),
                find(&format!("{name}.lora_B.weight")),
            ) {
                let scale = (alpha / a.dim(0)? as f64) as f32;
                linear.lora = Some(Lora {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                    scale,
                });
                linear.merge()?;
                adapted += 1;
            }
        }
    }
    if adapted == 0 {
        return Err(Error::Model(format!(
            "{}: no LoRA weights found",
            path.display()
        )));
    }
    tracing::debug!("merged {adapted} adapters of rank {rank} into {}", base.id);
    let weight = tensors
        .get(&format!("{PEFT_PREFIX}classifier.weight"))
        .cloned();
    let bias = tensors
        .get(&format!("{PEFT_PREFIX}classifier.bias"))
        .cloned();
    let head = head_from(weight, bias, &path, meta.labels.len())?;
    Ok(Loaded {
        student: Student {
            encoder,
            pooling: meta.pooling,
            head,
        },
        base,
        meta,
    })
}

fn read_peft_config(dir: &Path) -> Result<(usize, f64)> {
    let path = dir.join(CONFIG_FILE);
    let text = fs_err::read_to_string(&path)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    let r = value["r"]
        .as_u64()
        .ok_or_else(|| Error::Model(format!("{}: no `r`", path.display())))?;
    let alpha = value["lora_alpha"].as_f64().unwrap_or(r as f64);
    Ok((r as usize, alpha))
}

fn head_from(
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    path: &Path,
    labels: usize,
) -> Result<Head> {
    let (Some(weight), Some(bias)) = (weight, bias) else {
        return Err(Error::Model(format!(
            "{}: the classification head is missing",
            path.display()
        )));
    };
    if weight.dim(0)? != labels {
        return Err(Error::Model(format!(
            "{}: the head has {} outputs but labels.json lists {labels} labels",
            path.display(),
            weight.dim(0)?
        )));
    }
    Ok(Head {
        weight: Var::from_tensor(&weight)?,
        bias: Var::from_tensor(&bias)?,
    })
}

/// Writes full weights with the adapters folded in (`model.safetensors`, Hugging Face names,
/// plus `classifier.*`), with the base model's config and tokenizer and `labels.json`, so that
/// inference needs no base model and no merge step.
pub fn save_merged(
    dir: &Path,
    student: &Student,
    meta: &AdapterMeta,
    base: &BaseModel,
) -> Result<()> {
    fs_err::create_dir_all(dir)?;
    let mut tensors: HashMap<String, Tensor> =
        student.encoder.merged_tensors()?.into_iter().collect();
    tensors.insert(
        "classifier.weight".into(),
        student.head.weight.as_tensor().clone(),
    );
    tensors.insert(
        "classifier.bias".into(),
        student.head.bias.as_tensor().clone(),
    );
    save_safetensors(&tensors, None, &dir.join(MERGED_WEIGHTS_FILE))?;
    fs_err::copy(base.dir.join("config.json"), dir.join("config.json"))?;
    fs_err::copy(base.dir.join("tokenizer.json"), dir.join("tokenizer.json"))?;
    write_labels(dir, meta)
}

fn load_merged(dir: &Path, meta: AdapterMeta) -> Result<Loaded> {
    let base = BaseModel::from_dir(&meta.student, &meta.base_model, dir)?;
    let weights = Weights::load(dir)?;
    let encoder = base.load_encoder()?;
    let head = head_from(
        weights.get("classifier.weight").ok(),
        weights.get("classifier.bias").ok(),
        &dir.join(MERGED_WEIGHTS_FILE),
        meta.labels.len(),
    )?;
    Ok(Loaded {
        student: Student {
            encoder,
            pooling: meta.pooling,
            head,
        },
        base,
        meta,
    })
}

/// Names every module of [`LINEAR_MODULES`] may carry in an adapter file, for documentation and
/// tests.
pub fn peft_key(layer: usize, module: usize, matrix: char) -> String {
    debug_assert!(module < LINEAR_MODULES.len());
    format!(
        "{PEFT_PREFIX}{ENCODER_PREFIX}{}.lora_{matrix}.weight",
        module_name(layer, module)
    )
}
