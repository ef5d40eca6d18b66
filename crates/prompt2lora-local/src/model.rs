//! The decoder-only transformer behind the local teacher (Llama and Qwen2 layouts), run from
//! GGUF quantized weights with an external key/value cache.
//!
//! candle-transformers' `quantized_llama` and `quantized_qwen2` keep one key/value cache inside
//! the model, for one sequence. The teacher needs more: a cache that can be forked (one prompt
//! prefix, many candidate answers), cut back to a shared prefix, and batched across sequences of
//! different lengths (left padding with a per-row attention mask and per-row positions). So this
//! module holds the weights only, and callers own [`KvCache`]s. Tensor names are GGUF's.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};

use crate::LocalError;
use crate::gguf::GgufFile;

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): Llama as converted to GGUF.
    Interleaved,
    /// Pairs (i, i + d/2): Qwen2 ("NeoX" style).
    Halves,
}

/// The shape of the model, read from the GGUF metadata.
#[derive(Debug, Clone)]
pub struct Config {
    pub architecture: String,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub rms_norm_eps: f32,
    pub context_length: usize,
}

impl Config {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, LocalError> {
        let architecture = gguf.string("general.architecture")?.to_string();
        let rope_style = match architecture.as_str() {
            "llama" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Halves,
            other => {
                return Err(gguf.error(format!(
                    "architecture `{other}` is not supported by the local teacher (llama and \
                     qwen2 are)"
                )));
            }
        };
        let key = |name: &str| format!("{architecture}.{name}");
        let n_embd = gguf.u32(&key("embedding_length"))? as usize;
        let n_head = gguf.u32(&key("attention.head_count"))? as usize;
        let n_kv_head = gguf
            .opt_u32(&key("attention.head_count_kv"))?
            .unwrap_or(n_head as u32);
        let head_dim = gguf
            .opt_u32(&key("attention.key_length"))?
            .map_or(n_embd / n_head.max(1), |v| v as usize);
        let rope_dim = gguf
            .opt_u32(&key("rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        let config = Config {
            n_layer: gguf.u32(&key("block_count"))? as usize,
            n_embd,
            n_head,
            n_kv_head: n_kv_head as usize,
            head_dim,
            rope_base: gguf.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_style,
            rms_norm_eps: gguf.f32(&key("attention.layer_norm_rms_epsilon"))?,
            context_length: gguf.opt_u32(&key("context_length"))?.unwrap_or(4096) as usize,
            architecture,
        };
        if n_head == 0 || config.n_kv_head == 0 || !n_head.is_multiple_of(config.n_kv_head) {
            return Err(gguf.error(format!(
                "{n_head} attention heads cannot share {} key/value heads",
                config.n_kv_head
            )));
        }
        if rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            return Err(gguf.error(format!(
                "rotary embeddings over {rope_dim} of {head_dim} head dimensions are not supported"
            )));
        }
        Ok(config)
    }
}

/// Per-layer keys and values of a batch of sequences, left-padded to a common length.
#[derive(Clone)]
pub struct KvCache {
    /// (keys, values) per layer, each `(batch, n_kv_head, len, head_dim)`.
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Padding columns at the start of each row; they are never attended to.
    pads: Vec<usize>,
    len: usize,
}

impl KvCache {
    /// An empty cache for `batch` sequences with no padding.
    pub fn new(config: &Config, batch: usize) -> Self {
        KvCache {
            layers: vec![None; config.n_layer],
            pads: vec![0; batch],
            len: 0,
        }
    }

    /// Columns filled so far (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.pads.len()
    }

    /// Keeps the first `len` columns, e.g. the part of a cached prompt that a new prompt shares.
    pub fn truncate(&mut self, len: usize) -> Result<(), LocalError> {
        if len >= self.len {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, 0, len)?;
            *v = v.narrow(2, 0, len)?;
        }
        self.len = len;
        Ok(())
    }

    /// A cache made of the given rows, in order; a row may repeat (to fork one prompt into
    /// several continuations) or be left out (a finished sequence).
    pub fn select(&self, rows: &[usize]) -> Result<KvCache, LocalError> {
        let device = self.device();
        let index = Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), &device)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            layers.push(match layer {
                Some((k, v)) => Some((k.index_select(&index, 0)?, v.index_select(&index, 0)?)),
                None => None,
            });
        }
        let pads = rows.iter().map(|&r| self.pads[r]).collect();
        Ok(KvCache {
            layers,
            pads,
            len: self.len,
        })
    }

    /// Stacks single-sequence caches into one batch, left-padding the shorter ones.
    pub fn stack(caches: &[KvCache]) -> Result<KvCache, LocalError> {
        let len = caches.iter().map(|c| c.len).max().unwrap_or(0);
        let n_layer = caches.first().map_or(0, |c| c.layers.len());
        let mut pads = Vec::new();
        for cache in caches {
            pads.extend(cache.pads.iter().map(|p| p + len - cache.len));
        }
        let mut layers = Vec::with_capacity(n_layer);
        for layer in 0..n_layer {
            let mut keys = Vec::with_capacity(caches.len());
            let mut values = Vec::with_capacity(caches.len());
            for cache in caches {
                let Some((k, v)) = &cache.layers[layer] else {
                    return Err(LocalError::Internal("stacking an unfilled cache".into()));
                };
                keys.push(left_pad(k, len)?);
                values.push(left_pad(v, len)?);
            }
            layers.push(Some((Tensor::cat(&keys, 0)?, Tensor::cat(&values, 0)?)));
        }
        Ok(KvCache { layers, pads, len })
    }

    fn device(&self) -> Device {
        self.layers
            .iter()
            .flatten()
            .next()
            .map_or(Device::Cpu, |(k, _)| k.device().clone())
    }
}

fn left_pad(xs: &Tensor, len: usize) -> candle_core::Result<Tensor> {
    let missing = len - xs.dim(2)?;
    if missing == 0 {
        return Ok(xs.clone());
    }
    let (b, h, _, d) = xs.dims4()?;
    let zeros = Tensor::zeros((b, h, missing, d), xs.dtype(), xs.device())?;
    Tensor::cat(&[&zeros, xs], 2)
}

struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

/// A quantized weight for matrix products. candle 0.11 has no SIMD kernels for Q4_1, Q5_0
/// and Q5_1 (its scalar fallback was 15x slower than f32 on SmolLM2's Q4_1 weights), so those
/// are widened to f32 once, at load: exact, at 4 bytes per weight.
fn matmul_weight(weight: QTensor, device: &Device) -> Result<QMatMul, LocalError> {
    if is_slow_kernel(weight.dtype()) {
        Ok(QMatMul::Tensor(weight.dequantize(device)?))
    } else {
        Ok(QMatMul::from_qtensor(weight)?)
    }
}

fn is_slow_kernel(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

impl Linear {
    fn load(gguf: &mut GgufFile, name: &str, device: &Device) -> Result<Self, LocalError> {
        let weight = matmul_weight(gguf.tensor(&format!("{name}.weight"), device)?, device)?;
        let bias_name = format!("{name}.bias");
        let bias = if gguf.has_tensor(&bias_name) {
            Some(gguf.tensor(&bias_name, device)?.dequantize(device)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let ys = self.weight.forward(xs)?;
        match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        }
    }
}

struct Attention {
    attn_q: Linear,
    attn_k: Linear,
    attn_v: Linear,
    attn_output: Linear,
}

struct FeedForward {
    ffn_gate: Linear,
    ffn_up: Linear,
    ffn_down: Linear,
}

impl FeedForward {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.ffn_gate.forward(xs)?)?;
        self.ffn_down.forward(&(gate * self.ffn_up.forward(xs)?)?)
    }
}

struct Block {
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    ffn: FeedForward,
}

/// Positions, rotary tables and attention mask of one forward step.
struct StepInputs {
    cos: Tensor,
    sin: Tensor,
    /// Additive mask `(batch, 1, 1, seq_len, kv_len)`; `None` when every key may be attended.
    mask: Option<Tensor>,
}

/// The weights of a Llama- or Qwen2-style decoder.
pub struct Transformer {
    pub config: Config,
    token_embd: QMatMul,
    blocks: Vec<Block>,
    output_norm: Tensor,
    output: QMatMul,
    /// Rotary tables `(context_length, head_dim / 2)`.
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl Transformer {
    pub fn load(gguf: &mut GgufFile, device: &Device) -> Result<Self, LocalError> {
        let config = Config::from_gguf(gguf)?;
        let embd = Arc::new(gguf.tensor("token_embd.weight", device)?);
        let (_, hidden) = embd.shape().dims2()?;
        // The quantized row lookup needs whole quantization blocks per row.
        let widen = is_slow_kernel(embd.dtype());
        let token_embd = if widen || !hidden.is_multiple_of(embd.dtype().block_size()) {
            QMatMul::Tensor(embd.dequantize(device)?)
        } else {
            QMatMul::QTensor(embd.clone())
        };
        let output = if gguf.has_tensor("output.weight") {
            matmul_weight(gguf.tensor("output.weight", device)?, device)?
        } else if widen {
            token_embd.clone()
        } else {
            QMatMul::from_arc(embd)?
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("blk.{i}");
            let norm = |gguf: &mut GgufFile, n: &str| -> Result<Tensor, LocalError> {
                Ok(gguf
                    .tensor(&format!("{p}.{n}.weight"), device)?
                    .dequantize(device)?)
            };
            blocks.push(Block {
                attn_norm: norm(gguf, "attn_norm")?,
                attn: Attention {
                    attn_q: Linear::load(gguf, &format!("{p}.attn_q"), device)?,
                    attn_k: Linear::load(gguf, &format!("{p}.attn_k"), device)?,
                    attn_v: Linear::load(gguf, &format!("{p}.attn_v"), device)?,
                    attn_output: Linear::load(gguf, &format!("{p}.attn_output"), device)?,
                },
                ffn_norm: norm(gguf, "ffn_norm")?,
                ffn: FeedForward {
                    ffn_gate: Linear::load(gguf, &format!("{p}.ffn_gate"), device)?,
                    ffn_up: Linear::load(gguf, &format!("{p}.ffn_up"), device)?,
                    ffn_down: Linear::load(gguf, &format!("{p}.ffn_down"), device)?,
                },
            });
        }
        let output_norm = gguf
            .tensor("output_norm.weight", device)?
            .dequantize(device)?;
        let (cos, sin) = rotary_tables(&config, device)?;
        Ok(Transformer {
            config,
            token_embd,
            blocks,
            output_norm,
            output,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// Number of rows of the output projection (may exceed the tokenizer's vocabulary).
    pub fn vocab_rows(&self) -> candle_core::Result<usize> {
        match &self.output {
            QMatMul::QTensor(t) => Ok(t.shape().dims2()?.0),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => Ok(t.dims2()?.0),
        }
    }

    /// Runs `tokens` (one row per sequence of the cache, all rows the same length) after what
    /// `cache` holds, appends their keys and values to it, and returns the final hidden states
    /// `(batch, seq_len, n_embd)` (after the output norm).
    pub fn forward(&self, tokens: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor, LocalError> {
        let batch = tokens.len();
        let seq_len = tokens.first().map_or(0, Vec::len);
        if batch != cache.batch() || seq_len == 0 || tokens.iter().any(|r| r.len() != seq_len) {
            return Err(LocalError::Internal(format!(
                "forward needs {} rows of equal, non-zero length",
                cache.batch()
            )));
        }
        if cache.len + seq_len > self.config.context_length {
            return Err(LocalError::ContextOverflow {
                tokens: cache.len + seq_len,
                limit: self.config.context_length,
            });
        }
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(ids, (batch, seq_len), &self.device)?;
        let step = self.step_inputs(cache, seq_len)?;

        let mut xs = self.token_embd.embedding(&ids)?;
        for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let residual = &xs;
            let normed = candle_nn::ops::rms_norm(&xs, &block.attn_norm, self.config.rms_norm_eps)?;
            let attn = self.attention(&block.attn, &normed, &step, layer_cache)?;
            let xs_mid = (attn + residual)?;
            let normed =
                candle_nn::ops::rms_norm(&xs_mid, &block.ffn_norm, self.config.rms_norm_eps)?;
            xs = (block.ffn.forward(&normed)? + xs_mid)?;
        }
        cache.len += seq_len;
        Ok(candle_nn::ops::rms_norm(
            &xs,
            &self.output_norm,
            self.config.rms_norm_eps,
        )?)
    }

    /// Log-probabilities over the vocabulary for hidden states `(n, n_embd)`: `(n, vocab)`.
    pub fn log_probs(&self, hidden: &Tensor) -> Result<Tensor, LocalError> {
        let logits = self.output.forward(&hidden.contiguous()?)?;
        Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
    }

    /// Raw logits for hidden states `(n, n_embd)`: `(n, vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, LocalError> {
        Ok(self.output.forward(&hidden.contiguous()?)?)
    }

    fn step_inputs(&self, cache: &KvCache, seq_len: usize) -> Result<StepInputs, LocalError> {
        let batch = cache.batch();
        let start = cache.len;
        let kv_len = start + seq_len;
        let padded = cache.pads.iter().any(|&p| p > 0);
        let (cos, sin) = if padded {
            // Each row counts positions from its first real token.
            let positions: Vec<u32> = cache
                .pads
                .iter()
                .flat_map(|&pad| (start..kv_len).map(move |c| c.saturating_sub(pad) as u32))
                .collect();
            let positions = Tensor::new(positions, &self.device)?;
            let half = self.config.head_dim / 2;
            (
                self.cos
                    .index_select(&positions, 0)?
                    .reshape((batch, seq_len, half))?,
                self.sin
                    .index_select(&positions, 0)?
                    .reshape((batch, seq_len, half))?,
            )
        } else {
            (
                self.cos.narrow(0, start, seq_len)?,
                self.sin.narrow(0, start, seq_len)?,
            )
        };
        let mask = if padded || seq_len > 1 {
            let mut values = Vec::with_capacity(batch * seq_len * kv_len);
            for &pad in &cache.pads {
                for query in start..kv_len {
                    // A padding query attends to itself only, which keeps its softmax finite.
                    values.extend((0..kv_len).map(|key| {
                        let visible = key <= query && (key >= pad || key == query);
                        if visible { 0f32 } else { f32::NEG_INFINITY }
                    }));
                }
            }
            Some(Tensor::from_vec(
                values,
                (batch, 1, 1, seq_len, kv_len),
                &self.device,
            )?)
        } else {
            None
        };
        Ok(StepInputs { cos, sin, mask })
    }

    fn attention(
        &self,
        attn: &Attention,
        xs: &Tensor,
        step: &StepInputs,
        layer_cache: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor, LocalError> {
        let cfg = &self.config;
        let (batch, seq_len, _) = xs.dims3()?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((batch, seq_len, n, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = self.rope(&heads(attn.attn_q.forward(xs)?, cfg.n_head)?, step)?;
        let k = self.rope(&heads(attn.attn_k.forward(xs)?, cfg.n_kv_head)?, step)?;
        let v = heads(attn.attn_v.forward(xs)?, cfg.n_kv_head)?;
        let (k, v) = match layer_cache.take() {
            Some((k_past, v_past)) => (
                Tensor::cat(&[&k_past, &k], 2)?,
                Tensor::cat(&[&v_past, &v], 2)?,
            ),
            None => (k, v),
        };
        *layer_cache = Some((k.clone(), v.clone()));
        let kv_len = k.dim(2)?;

        // Grouped-query attention without copying keys: the query heads that share a key/value
        // head are stacked along the sequence axis.
        let group = cfg.n_head / cfg.n_kv_head;
        let q = q.reshape((batch, cfg.n_kv_head, group * seq_len, cfg.head_dim))?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let mut att = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = &step.mask {
            att = att
                .reshape((batch, cfg.n_kv_head, group, seq_len, kv_len))?
                .broadcast_add(mask)?
                .reshape((batch, cfg.n_kv_head, group * seq_len, kv_len))?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let ys = att.matmul(&v)?;
        let ys = ys
            .reshape((batch, cfg.n_head, seq_len, cfg.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, seq_len, cfg.n_head * cfg.head_dim))?;
        Ok(attn.attn_output.forward(&ys)?)
    }

    fn rope(&self, xs: &Tensor, step: &StepInputs) -> candle_core::Result<Tensor> {
        match self.config.rope_style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(xs, &step.cos, &step.sin),
            RopeStyle::Halves => candle_nn::rotary_emb::rope(xs, &step.cos, &step.sin),
        }
    }
}

fn rotary_tables(config: &Config, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let half = config.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            1.0 / config
                .rope_base
                .powf(2.0 * i as f32 / config.head_dim as f32)
        })
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
    let positions = Tensor::arange(0u32, config.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((config.context_length, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?;
    Ok((angles.cos()?, angles.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write_tiny_model;
    use candle_core::IndexOp;

    fn load(architecture: &str) -> (tempfile::TempDir, Transformer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        write_tiny_model(&path, architecture, "qwen2");
        let mut gguf = GgufFile::open(&path).unwrap();
        let model = Transformer::load(&mut gguf, &Device::Cpu).unwrap();
        (dir, model)
    }

    /// Last-position logits of candle-transformers' own model on the same file.
    fn reference_logits(dir: &tempfile::TempDir, architecture: &str, tokens: &[u32]) -> Vec<f32> {
        use candle_transformers::models::{quantized_llama, quantized_qwen2};
        let path = dir.path().join("tiny.gguf");
        let mut file = std::fs::File::open(path).unwrap();
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
        let input = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = if architecture == "llama" {
            let mut model =
                quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
            model.forward(&input, 0).unwrap()
        } else {
            let mut model =
                quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &Device::Cpu).unwrap();
            model.forward(&input, 0).unwrap()
        };
        logits.squeeze(0).unwrap().to_vec1().unwrap()
    }

    fn last_logits(model: &Transformer, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        let hidden = model.forward(&[tokens.to_vec()], cache).unwrap();
        let last = hidden.i((.., tokens.len() - 1, ..)).unwrap();
        model
            .logits(&last)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], tolerance: f32) {
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < tolerance, "largest difference {worst}");
    }

    #[test]
    fn matches_candle_reference_models() {
        let tokens = [1u32, 40, 77, 90, 12, 260, 5, 2, 100];
        for architecture in ["llama", "qwen2"] {
            let (dir, model) = load(architecture);
            let ours = last_logits(&model, &tokens, &mut KvCache::new(&model.config, 1));
            let theirs = reference_logits(&dir, architecture, &tokens);
            assert_close(&ours, &theirs, 1e-3);
        }
    }

    #[test]
    fn incremental_decoding_matches_a_full_pass() {
        let (_dir, model) = load("qwen2");
        let tokens = [1u32, 40, 77, 90, 12, 260, 5];
        let full = last_logits(&model, &tokens, &mut KvCache::new(&model.config, 1));
        let mut cache = KvCache::new(&model.config, 1);
        last_logits(&model, &tokens[..4], &mut cache);
        last_logits(&model, &tokens[4..6], &mut cache);
        let stepped = last_logits(&model, &tokens[6..], &mut cache);
        assert_close(&full, &stepped, 1e-4);
    }

    #[test]
    fn truncated_and_forked_caches_reuse_a_prefix() {
        let (_dir, model) = load("llama");
        let mut cache = KvCache::new(&model.config, 1);
        last_logits(&model, &[1, 40, 77, 90, 12], &mut cache);
        cache.truncate(3).unwrap();
        let reused = last_logits(&model, &[50, 60], &mut cache);
        let fresh = last_logits(
            &model,
            &[1, 40, 77, 50, 60],
            &mut KvCache::new(&model.config, 1),
        );
        assert_close(&reused, &fresh, 1e-4);

        let mut prefix = KvCache::new(&model.config, 1);
        last_logits(&model, &[1, 40, 77], &mut prefix);
        let mut forked = prefix.select(&[0, 0]).unwrap();
        let hidden = model
            .forward(&[vec![50, 60], vec![70, 80]], &mut forked)
            .unwrap();
        let second = model
            .logits(&hidden.i((1, 1, ..)).unwrap().unsqueeze(0).unwrap())
            .unwrap();
        let alone = last_logits(
            &model,
            &[1, 40, 77, 70, 80],
            &mut KvCache::new(&model.config, 1),
        );
        assert_close(
            &second.squeeze(0).unwrap().to_vec1::<f32>().unwrap(),
            &alone,
            1e-4,
        );
    }

    #[test]
    fn left_padded_batches_match_single_sequences() {
        for architecture in ["llama", "qwen2"] {
            let (_dir, model) = load(architecture);
            let prompts = [
                vec![1u32, 40, 77, 90, 12, 260],
                vec![1u32, 33],
                vec![7u32, 8, 9, 10],
            ];
            let mut caches = Vec::new();
            let mut alone = Vec::new();
            for prompt in &prompts {
                let mut cache = KvCache::new(&model.config, 1);
                last_logits(&model, prompt, &mut cache);
                caches.push(cache.clone());
                // The answer token 5 after each prompt, run alone.
                alone.push(last_logits(&model, &[5], &mut cache));
            }
            let mut batch = KvCache::stack(&caches).unwrap();
            assert_eq!(batch.len(), 6);
            let next = vec![vec![5u32]; 3];
            let hidden = model.forward(&next, &mut batch).unwrap();
            let logits = model.logits(&hidden.squeeze(1).unwrap()).unwrap();
            for (row, expected) in alone.iter().enumerate() {
                let got: Vec<f32> = logits.i(row).unwrap().to_vec1().unwrap();
                assert_close(&got, expected, 1e-4);
            }
            // A finished row leaves the batch; the others go on unchanged.
            let mut kept = batch.select(&[2, 0]).unwrap();
            let hidden = model.forward(&[vec![6], vec![6]], &mut kept).unwrap();
            let logits = model.logits(&hidden.squeeze(1).unwrap()).unwrap();
            let mut third = caches[2].clone();
            last_logits(&model, &[5], &mut third);
            let expected = last_logits(&model, &[6], &mut third);
            assert_close(
                &logits.i(0).unwrap().to_vec1::<f32>().unwrap(),
                &expected,
                1e-4,
            );
        }
    }

    #[test]
    fn context_overflow_is_an_error() {
        let (_dir, model) = load("llama");
        let tokens = vec![5u32; 300];
        let err = model
            .forward(&[tokens], &mut KvCache::new(&model.config, 1))
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                LocalError::ContextOverflow {
                    tokens: 300,
                    limit: 256
                }
            ),
            "{err}"
        );
    }
}
