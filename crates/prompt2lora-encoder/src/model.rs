//! The BERT-family encoder with optional LoRA on its linear layers, pooling and the
//! classification head: one implementation for training, inference and embeddings.
//!
//! Checkpoint keys follow Hugging Face (`encoder.layer.0.attention.self.query.weight`), with or
//! without the `bert.` prefix of task models.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::ops::{
    AddLayerNorm, Attention, Dense, Dropout, FrozenLinear, Gelu, LoraLinear, PackedAttention,
};
use crate::{Error, Result, kernels};

/// The fields of a Hugging Face `config.json` that a BERT encoder needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs_err::read_to_string(path)?;
        let config: BertConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        if config.hidden_act != "gelu" {
            return Err(Error::Model(format!(
                "{}: activation `{}` is not supported (only `gelu`)",
                path.display(),
                config.hidden_act
            )));
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            return Err(Error::Model(format!(
                "{}: hidden_size {} is not a multiple of num_attention_heads {}",
                path.display(),
                config.hidden_size,
                config.num_attention_heads
            )));
        }
        Ok(config)
    }
}

/// The tensors of a checkpoint by name, tolerant of the `bert.` prefix.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: String,
}

impl Weights {
    /// Reads `model.safetensors`, or else `pytorch_model.bin`, from a model folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let safetensors = dir.join("model.safetensors");
        let pth = dir.join("pytorch_model.bin");
        let (tensors, path) = if safetensors.is_file() {
            let tensors = candle_core::safetensors::load(&safetensors, &Device::Cpu)
                .map_err(|e| Error::Model(format!("{}: {e}", safetensors.display())))?;
            (tensors, safetensors)
        } else if pth.is_file() {
            let tensors = candle_core::pickle::read_all(&pth)
                .map_err(|e| Error::Model(format!("{}: {e}", pth.display())))?;
            (tensors.into_iter().collect(), pth)
        } else {
            return Err(Error::Model(format!(
                "{}: no model.safetensors or pytorch_model.bin",
                dir.display()
            )));
        };
        Ok(Weights {
            tensors,
            source: path.display().to_string(),
        })
    }

    pub fn from_map(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        Weights {
            tensors,
            source: source.into(),
        }
    }

    /// The tensor `name` (or `bert.name`), as f32.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .or_else(|| self.tensors.get(&format!("bert.{name}")))
            .ok_or_else(|| Error::Model(format!("{}: tensor `{name}` is missing", self.source)))?;
        Ok(tensor.to_dtype(DType::F32)?)
    }
}

/// Frozen LayerNorm parameters.
#[derive(Clone)]
pub(crate) struct Norm {
    gamma: Arc<Vec<f32>>,
    beta: Arc<Vec<f32>>,
    eps: f32,
}

impl Norm {
    fn load(weights: &Weights, prefix: &str, eps: f64) -> Result<Self> {
        let gamma = weights
            .get(&format!("{prefix}.weight"))
            .or_else(|_| weights.get(&format!("{prefix}.gamma")))?;
        let beta = weights
            .get(&format!("{prefix}.bias"))
            .or_else(|_| weights.get(&format!("{prefix}.beta")))?;
        Ok(Norm {
            gamma: Arc::new(gamma.to_vec1()?),
            beta: Arc::new(beta.to_vec1()?),
            eps: eps as f32,
        })
    }

    fn op(&self) -> AddLayerNorm {
        AddLayerNorm {
            gamma: self.gamma.clone(),
            beta: self.beta.clone(),
            eps: self.eps,
        }
    }

    fn tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (
                format!("{prefix}.weight"),
                Tensor::new(self.gamma.as_slice(), &Device::Cpu)?,
            ),
            (
                format!("{prefix}.bias"),
                Tensor::new(self.beta.as_slice(), &Device::Cpu)?,
            ),
        ])
    }
}

/// Trainable low-rank update `scale * B A` of a frozen linear layer.
pub struct Lora {
    /// `[r, in]`, random at initialisation.
    pub a: Var,
    /// `[out, r]`, zero at initialisation.
    pub b: Var,
    /// `alpha / r`.
    pub scale: f32,
}

/// A frozen linear layer, with a LoRA update when it is a target.
pub struct Linear {
    pub(crate) dense: Dense,
    pub lora: Option<Lora>,
}

impl Linear {
    fn load(weights: &Weights, prefix: &str) -> Result<Self> {
        let weight = weights.get(&format!("{prefix}.weight"))?;
        let bias = weights.get(&format!("{prefix}.bias")).ok();
        Ok(Linear {
            dense: Dense::new(&weight, bias.as_ref())?,
            lora: None,
        })
    }

    fn forward(&self, xs: &Tensor, lora_dropout: f32, seed: u64) -> Result<Tensor> {
        Ok(match &self.lora {
            Some(lora) => xs.apply_op3(
                lora.a.as_tensor(),
                lora.b.as_tensor(),
                LoraLinear {
                    dense: self.dense.clone(),
                    scale: lora.scale,
                    dropout: lora_dropout,
                    seed,
                },
            )?,
            None => xs.apply_op1(FrozenLinear(self.dense.clone()))?,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.dense.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.dense.out_dim
    }

    /// The weight with the LoRA update folded in: `W + scale * B A`.
    pub fn merged_weight(&self) -> Result<Tensor> {
        let w = &self.dense.weight_tensor;
        Ok(match &self.lora {
            Some(lora) => {
                (w + lora
                    .b
                    .as_tensor()
                    .matmul(lora.a.as_tensor())?
                    .affine(lora.scale as f64, 0.0)?)?
            }
            None => w.clone(),
        })
    }

    /// Folds the LoRA update into the frozen weight, for inference.
    pub fn merge(&mut self) -> Result<()> {
        if self.lora.is_some() {
            let weight = self.merged_weight()?;
            let bias = self.bias_tensor()?;
            self.dense = Dense::new(&weight, bias.as_ref())?;
            self.lora = None;
        }
        Ok(())
    }

    fn bias_tensor(&self) -> Result<Option<Tensor>> {
        Ok(match &self.dense.bias {
            Some(b) => Some(Tensor::new(b.as_slice(), &Device::Cpu)?),
            None => None,
        })
    }
}

/// One transformer layer, with Hugging Face's module names.
pub struct Layer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attention_output: Linear,
    attention_norm: Norm,
    pub intermediate: Linear,
    pub output: Linear,
    output_norm: Norm,
}

/// Module names of a layer's linear layers, relative to `encoder.layer.N`.
pub const LINEAR_MODULES: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl Layer {
    fn load(weights: &Weights, prefix: &str, eps: f64) -> Result<Self> {
        let linear = |name: &str| Linear::load(weights, &format!("{prefix}.{name}"));
        Ok(Layer {
            query: linear(LINEAR_MODULES[0])?,
            key: linear(LINEAR_MODULES[1])?,
            value: linear(LINEAR_MODULES[2])?,
            attention_output: linear(LINEAR_MODULES[3])?,
            attention_norm: Norm::load(
                weights,
                &format!("{prefix}.attention.output.LayerNorm"),
                eps,
            )?,
            intermediate: linear(LINEAR_MODULES[4])?,
            output: linear(LINEAR_MODULES[5])?,
            output_norm: Norm::load(weights, &format!("{prefix}.output.LayerNorm"), eps)?,
        })
    }

    /// The linear layers in the order of [`LINEAR_MODULES`].
    pub fn linears(&self) -> [&Linear; 6] {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
    }

    pub fn linears_mut(&mut self) -> [&mut Linear; 6] {
        [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.attention_output,
            &mut self.intermediate,
            &mut self.output,
        ]
    }

    fn forward(&self, xs: &Tensor, rows: &Rows, mode: &Mode, layer: u64) -> Result<Tensor> {
        let seed = |site: u64| kernels::derive_seed(mode.seed, layer * 16 + site);
        let q = self.query.forward(xs, mode.lora_dropout, seed(0))?;
        let k = self.key.forward(xs, mode.lora_dropout, seed(1))?;
        let v = self.value.forward(xs, mode.lora_dropout, seed(2))?;
        let context = match rows {
            Rows::Padded { seq, mask } => q.apply_op3(
                &k,
                &v,
                Attention {
                    seq: *seq,
                    heads: mode.heads,
                    mask: mask.clone(),
                    dropout: mode.attention_dropout,
                    seed: seed(3),
                },
            )?,
            Rows::Packed(offsets) => q.apply_op3(
                &k,
                &v,
                PackedAttention {
                    offsets: offsets.clone(),
                    heads: mode.heads,
                },
            )?,
        };
        let attended = self
            .attention_output
            .forward(&context, mode.lora_dropout, seed(4))?;
        let attended = dropout(&attended, mode.hidden_dropout, seed(5))?;
        let xs = attended.apply_op2(xs, self.attention_norm.op())?;
        let inner = self
            .intermediate
            .forward(&xs, mode.lora_dropout, seed(6))?
            .apply_op1(Gelu)?;
        let out = self.output.forward(&inner, mode.lora_dropout, seed(7))?;
        let out = dropout(&out, mode.hidden_dropout, seed(8))?;
        Ok(out.apply_op2(&xs, self.output_norm.op())?)
    }

    fn tensors(&self, prefix: &str) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (name, linear) in LINEAR_MODULES.iter().zip(self.linears()) {
            out.push((format!("{prefix}.{name}.weight"), linear.merged_weight()?));
            if let Some(bias) = linear.bias_tensor()? {
                out.push((format!("{prefix}.{name}.bias"), bias));
            }
        }
        out.extend(
            self.attention_norm
                .tensors(&format!("{prefix}.attention.output.LayerNorm"))?,
        );
        out.extend(
            self.output_norm
                .tensors(&format!("{prefix}.output.LayerNorm"))?,
        );
        Ok(out)
    }
}

fn dropout(xs: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    Ok(xs.apply_op1(Dropout { p, seed })?)
}

/// Token ids of a padded batch and its attention mask, row-major `[batch, seq]`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub ids: Vec<u32>,
    /// 1 for tokens, 0 for padding.
    pub mask: Vec<f32>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Pads token sequences to the longest one.
    pub fn pad(sequences: &[&[u32]], pad_id: u32) -> Self {
        let seq = sequences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(sequences.len() * seq);
        let mut mask = Vec::with_capacity(sequences.len() * seq);
        for s in sequences {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad_id, seq - s.len()));
            mask.extend(std::iter::repeat_n(1f32, s.len()));
            mask.extend(std::iter::repeat_n(0f32, seq - s.len()));
        }
        Batch {
            ids,
            mask,
            batch: sequences.len(),
            seq,
        }
    }
}

/// Token ids of several sequences laid end to end, with no padding, for inference: rows
/// `offsets[i]..offsets[i + 1]` are sequence `i`.
#[derive(Debug, Clone)]
pub struct Packed {
    pub ids: Vec<u32>,
    pub offsets: Arc<Vec<usize>>,
}

impl Packed {
    pub fn new(sequences: &[&[u32]]) -> Self {
        let mut ids = Vec::with_capacity(sequences.iter().map(|s| s.len()).sum());
        let mut offsets = Vec::with_capacity(sequences.len() + 1);
        offsets.push(0);
        for s in sequences {
            ids.extend_from_slice(s);
            offsets.push(ids.len());
        }
        Packed {
            ids,
            offsets: Arc::new(offsets),
        }
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens in the longest sequence.
    pub fn longest(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }
}

/// How the rows of a hidden-state matrix form sequences, for attention.
enum Rows {
    /// `[batch * seq]` rows, with an additive mask per key (0 for tokens, large negative for
    /// padding).
    Padded { seq: usize, mask: Arc<Vec<f32>> },
    /// Sequences end to end, as in [`Packed`].
    Packed(Arc<Vec<usize>>),
}

/// Dropout probabilities and the seed of their masks; all zero at inference.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dropouts {
    pub hidden: f32,
    pub attention: f32,
    pub lora: f32,
    pub seed: u64,
}

struct Mode {
    hidden_dropout: f32,
    attention_dropout: f32,
    lora_dropout: f32,
    seed: u64,
    heads: usize,
}

/// The encoder: embeddings and transformer layers.
pub struct Encoder {
    pub config: BertConfig,
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embedding: Tensor,
    embedding_norm: Norm,
    pub layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(config: BertConfig, weights: &Weights) -> Result<Self> {
        let eps = config.layer_norm_eps;
        let token_types = weights.get("embeddings.token_type_embeddings.weight")?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(weights, &format!("encoder.layer.{i}"), eps))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            word_embeddings: weights.get("embeddings.word_embeddings.weight")?,
            position_embeddings: weights.get("embeddings.position_embeddings.weight")?,
            token_type_embedding: token_types.get(0)?,
            embedding_norm: Norm::load(weights, "embeddings.LayerNorm", eps)?,
            layers,
            config,
        })
    }

    /// Embedding output after LayerNorm, before dropout: `[batch * seq, hidden]`. Frozen.
    pub fn embed(&self, batch: &Batch) -> Result<Tensor> {
        if batch.seq > self.config.max_position_embeddings {
            return Err(Error::Model(format!(
                "sequence of {} tokens is longer than the model's {} positions",
                batch.seq, self.config.max_position_embeddings
            )));
        }
        let hidden = self.config.hidden_size;
        let ids = Tensor::from_slice(&batch.ids, batch.ids.len(), &Device::Cpu)?;
        let words = self.word_embeddings.index_select(&ids, 0)?.reshape((
            batch.batch,
            batch.seq,
            hidden,
        ))?;
        let positions = self.position_embeddings.narrow(0, 0, batch.seq)?;
        let xs = words
            .broadcast_add(&positions)?
            .broadcast_add(&self.token_type_embedding)?;
        let xs = xs
            .reshape((batch.batch * batch.seq, hidden))?
            .contiguous()?;
        Ok(xs.apply_op1(self.embedding_norm.op())?)
    }

    /// Last hidden states `[batch * seq, hidden]`. With `dropouts`, dropout acts (training);
    /// without, the pass is deterministic (inference). `embedded` may hold the output of
    /// [`Encoder::embed`] for this batch, computed earlier.
    pub fn forward(
        &self,
        batch: &Batch,
        dropouts: Option<&Dropouts>,
        embedded: Option<Tensor>,
    ) -> Result<Tensor> {
        prompt2lora_core::cpu::flush_denormals();
        let d = dropouts.copied().unwrap_or_default();
        let mode = Mode {
            hidden_dropout: d.hidden,
            attention_dropout: d.attention,
            lora_dropout: d.lora,
            seed: d.seed,
            heads: self.config.num_attention_heads,
        };
        let mut xs = match embedded {
            Some(xs) => xs,
            None => self.embed(batch)?,
        };
        xs = dropout(
            &xs,
            mode.hidden_dropout,
            kernels::derive_seed(mode.seed, u64::MAX),
        )?;
        let mask: Vec<f32> = batch
            .mask
            .iter()
            .map(|&m| if m > 0.0 { 0.0 } else { -1e9 })
            .collect();
        let rows = Rows::Padded {
            seq: batch.seq,
            mask: Arc::new(mask),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, &rows, &mode, i as u64)?;
        }
        Ok(xs)
    }

    /// Embedding output of packed sequences after LayerNorm: `[tokens, hidden]`. Positions
    /// restart at 0 in each sequence.
    pub fn embed_packed(&self, packed: &Packed) -> Result<Tensor> {
        let longest = packed.longest();
        if longest > self.config.max_position_embeddings {
            return Err(Error::Model(format!(
                "sequence of {longest} tokens is longer than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let tokens = packed.ids.len();
        let ids = Tensor::from_slice(&packed.ids, tokens, &Device::Cpu)?;
        let positions: Vec<u32> = packed
            .offsets
            .windows(2)
            .flat_map(|w| 0..(w[1] - w[0]) as u32)
            .collect();
        let positions = Tensor::from_vec(positions, tokens, &Device::Cpu)?;
        let xs = (self.word_embeddings.index_select(&ids, 0)?
            + self.position_embeddings.index_select(&positions, 0)?)?
        .broadcast_add(&self.token_type_embedding)?
        .contiguous()?;
        Ok(xs.apply_op1(self.embedding_norm.op())?)
    }

    /// Last hidden states of packed sequences, `[tokens, hidden]`, for inference: the same
    /// values as [`Encoder::forward`] gives the real tokens of a padded batch, with no work
    /// spent on padding. Not differentiable.
    pub fn forward_packed(&self, packed: &Packed) -> Result<Tensor> {
        prompt2lora_core::cpu::flush_denormals();
        let mode = Mode {
            hidden_dropout: 0.0,
            attention_dropout: 0.0,
            lora_dropout: 0.0,
            seed: 0,
            heads: self.config.num_attention_heads,
        };
        let mut xs = self.embed_packed(packed)?;
        let rows = Rows::Packed(packed.offsets.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, &rows, &mode, i as u64)?;
        }
        Ok(xs)
    }

    /// Full encoder weights with LoRA folded in, under Hugging Face names (no prefix).
    pub fn merged_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                self.word_embeddings.clone(),
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                self.position_embeddings.clone(),
            ),
        ];
        let types = self.token_type_embedding.unsqueeze(0)?;
        let types = types.repeat((self.config.type_vocab_size.max(1), 1))?;
        out.push(("embeddings.token_type_embeddings.weight".to_string(), types));
        out.extend(self.embedding_norm.tensors("embeddings.LayerNorm")?);
        for (i, layer) in self.layers.iter().enumerate() {
            out.extend(layer.tensors(&format!("encoder.layer.{i}"))?);
        }
        Ok(out)
    }
}

/// How token states become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean of the token states under the attention mask.
    Mean,
    /// The first (`[CLS]`) token's state.
    Cls,
}

impl Pooling {
    /// The pooling a sentence-transformers folder declares in `1_Pooling/config.json`; mean
    /// when the folder says nothing.
    pub fn of_model(dir: &Path) -> Pooling {
        let path = dir.join("1_Pooling").join("config.json");
        let Ok(text) = fs_err::read_to_string(path) else {
            return Pooling::Mean;
        };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if value
            .get("pooling_mode_cls_token")
            .and_then(|v| v.as_bool())
            == Some(true)
        {
            Pooling::Cls
        } else {
            Pooling::Mean
        }
    }

    /// `[batch, hidden]` from `[batch * seq, hidden]`.
    pub fn pool(self, hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
        let size = hidden.dim(1)?;
        let xs = hidden.reshape((batch.batch, batch.seq, size))?;
        Ok(match self {
            Pooling::Cls => xs.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask =
                    Tensor::from_slice(&batch.mask, (batch.batch, batch.seq, 1), &Device::Cpu)?;
                let counts: Vec<f32> = batch
                    .mask
                    .chunks(batch.seq)
                    .map(|m| 1.0 / m.iter().sum::<f32>().max(1.0))
                    .collect();
                let counts = Tensor::from_vec(counts, (batch.batch, 1), &Device::Cpu)?;
                xs.broadcast_mul(&mask)?.sum(1)?.broadcast_mul(&counts)?
            }
        })
    }
}

impl Pooling {
    /// `[sequences, hidden]` from the `[tokens, hidden]` states of packed sequences.
    pub fn pool_packed(self, hidden: &Tensor, packed: &Packed) -> Result<Tensor> {
        let size = hidden.dim(1)?;
        let states = hidden.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; packed.len() * size];
        for (row, w) in out.chunks_mut(size).zip(packed.offsets.windows(2)) {
            let tokens = &states[w[0] * size..w[1] * size];
            match self {
                Pooling::Cls if !tokens.is_empty() => row.copy_from_slice(&tokens[..size]),
                Pooling::Cls => {}
                Pooling::Mean => {
                    for token in tokens.chunks(size) {
                        row.iter_mut().zip(token).for_each(|(r, t)| *r += t);
                    }
                    let count = (w[1] - w[0]).max(1) as f32;
                    row.iter_mut().for_each(|r| *r /= count);
                }
            }
        }
        Ok(Tensor::from_vec(out, (packed.len(), size), &Device::Cpu)?)
    }
}

/// L2-normalises rows of a `[batch, hidden]` matrix in place.
pub(crate) fn normalize_rows(rows: &mut [Vec<f32>]) {
    for row in rows {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// The classification head: dropout, then `logits = pooled W^T + b`.
pub struct Head {
    pub weight: Var,
    pub bias: Var,
}

impl Head {
    /// A fresh head, weights from N(0, 0.02) as in BERT, bias zero.
    pub fn new(labels: usize, hidden: usize, rng: &mut impl rand::Rng) -> Result<Self> {
        use rand::distr::Distribution;
        let normal = NormalSampler;
        let weight: Vec<f32> = (0..labels * hidden)
            .map(|_| normal.sample(rng) * 0.02)
            .collect();
        Ok(Head {
            weight: Var::from_tensor(&Tensor::from_vec(weight, (labels, hidden), &Device::Cpu)?)?,
            bias: Var::from_tensor(&Tensor::zeros(labels, DType::F32, &Device::Cpu)?)?,
        })
    }

    pub fn forward(&self, pooled: &Tensor, dropout_p: f32, seed: u64) -> Result<Tensor> {
        let xs = dropout(&pooled.contiguous()?, dropout_p, seed)?;
        Ok(xs
            .matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?)
    }
}

/// Standard normal samples by Box-Muller, so that initialisation needs no extra crate.
pub(crate) struct NormalSampler;

impl rand::distr::Distribution<f32> for NormalSampler {
    fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> f32 {
        let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
        let u2: f32 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

/// Encoder, pooling and head: the student.
pub struct Student {
    pub encoder: Encoder,
    pub pooling: Pooling,
    pub head: Head,
}

impl Student {
    /// Logits `[batch, labels]`.
    pub fn forward(
        &self,
        batch: &Batch,
        dropouts: Option<&Dropouts>,
        embedded: Option<Tensor>,
    ) -> Result<Tensor> {
        let hidden = self.encoder.forward(batch, dropouts, embedded)?;
        let pooled = self.pooling.pool(&hidden, batch)?;
        let (p, seed) = dropouts.map_or((0.0, 0), |d| {
            (d.hidden, kernels::derive_seed(d.seed, u64::MAX - 1))
        });
        self.head.forward(&pooled, p, seed)
    }
}

impl Student {
    /// Logits `[sequences, labels]` of packed sequences, for inference.
    pub fn forward_packed(&self, packed: &Packed) -> Result<Tensor> {
        let hidden = self.encoder.forward_packed(packed)?;
        let pooled = self.pooling.pool_packed(&hidden, packed)?;
        self.head.forward(&pooled, 0.0, 0)
    }
}

/// Reads the values of a tensor as rows of f32.
pub(crate) fn rows(tensor: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(tensor.to_dtype(DType::F32)?.to_vec2()?)
}
