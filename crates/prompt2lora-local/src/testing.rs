//! Tiny random GGUF models for the unit tests: real file format, real tokenizer metadata,
//! random weights, small enough to build in milliseconds.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// GPT-2's byte-to-character table, the alphabet of byte-level BPE vocabularies.
pub fn byte_chars() -> Vec<char> {
    let mut chars = vec!['\0'; 256];
    let mut next = 256u32;
    for byte in 0..=255u8 {
        let c = byte as char;
        let printable = matches!(c, '!'..='~' | '\u{A1}'..='\u{AC}' | '\u{AE}'..='\u{FF}');
        chars[byte as usize] = if printable {
            c
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
    }
    chars
}

/// The vocabulary of the tiny models: three control tokens, the 256 bytes, and merges that
/// build `Ġhello`, `Ġworld`, `he` and `12`.
pub fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![3; 3];
    tokens.extend(byte_chars().into_iter().map(String::from));
    types.extend(std::iter::repeat_n(1, 256));
    let merges = [
        "h e", "l l", "Ġ w", "o r", "he ll", "hell o", "Ġ hello", "Ġw or", "Ġwor l", "Ġworl d",
        "1 2",
    ];
    for merge in merges {
        tokens.push(merge.replace(' ', ""));
        types.push(1);
    }
    (tokens, types, merges.map(String::from).to_vec())
}

/// Writes a 2-layer model of `architecture` (`llama` or `qwen2`) with random Q8_0 weights.
pub fn write_tiny_model(path: &Path, architecture: &str, pre: &str) {
    let device = Device::Cpu;
    let (tokens, types, merges) = tiny_vocab();
    let vocab = tokens.len();
    let (n_embd, n_head, n_kv_head, n_ff, n_layer) = (64usize, 4usize, 2usize, 128usize, 2usize);
    let head_dim = n_embd / n_head;
    let key = |name: &str| format!("{architecture}.{name}");

    let mut metadata: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String(architecture.into()),
        ),
        (key("block_count"), Value::U32(n_layer as u32)),
        (key("embedding_length"), Value::U32(n_embd as u32)),
        (key("feed_forward_length"), Value::U32(n_ff as u32)),
        (key("attention.head_count"), Value::U32(n_head as u32)),
        (key("attention.head_count_kv"), Value::U32(n_kv_head as u32)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        (key("rope.freq_base"), Value::F32(10_000.0)),
        (key("rope.dimension_count"), Value::U32(head_dim as u32)),
        (key("context_length"), Value::U32(256)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
    ];
    metadata.sort_by(|a, b| a.0.cmp(&b.0));

    let mut seed = 0u64;
    let mut random = |shape: &[usize], scale: f32| {
        seed += 1;
        // A small deterministic generator keeps the files identical run to run.
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| {
                let x = ((i as u64 + 1) * 2654435761 + seed * 40503) % 10007;
                (x as f32 / 10007.0 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(values, shape, &device).unwrap()
    };
    let q8 = |t: Tensor| QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
    let f32t = |t: Tensor| QTensor::quantize(&t, GgmlDType::F32).unwrap();

    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q8(random(&[vocab, n_embd], 0.5)),
        ),
        (
            "output_norm.weight".into(),
            f32t((random(&[n_embd], 0.2) + 1.0).unwrap()),
        ),
        ("output.weight".into(), q8(random(&[vocab, n_embd], 0.5))),
    ];
    for i in 0..n_layer {
        let p = format!("blk.{i}");
        let kv = n_kv_head * head_dim;
        tensors.push((
            format!("{p}.attn_norm.weight"),
            f32t((random(&[n_embd], 0.2) + 1.0).unwrap()),
        ));
        tensors.push((
            format!("{p}.ffn_norm.weight"),
            f32t((random(&[n_embd], 0.2) + 1.0).unwrap()),
        ));
        tensors.push((
            format!("{p}.attn_q.weight"),
            q8(random(&[n_embd, n_embd], 0.3)),
        ));
        tensors.push((format!("{p}.attn_k.weight"), q8(random(&[kv, n_embd], 0.3))));
        tensors.push((format!("{p}.attn_v.weight"), q8(random(&[kv, n_embd], 0.3))));
        tensors.push((
            format!("{p}.attn_output.weight"),
            q8(random(&[n_embd, n_embd], 0.3)),
        ));
        tensors.push((
            format!("{p}.ffn_gate.weight"),
            q8(random(&[n_ff, n_embd], 0.3)),
        ));
        tensors.push((
            format!("{p}.ffn_up.weight"),
            q8(random(&[n_ff, n_embd], 0.3)),
        ));
        tensors.push((
            format!("{p}.ffn_down.weight"),
            q8(random(&[n_embd, n_ff], 0.3)),
        ));
        if architecture == "qwen2" {
            tensors.push((format!("{p}.attn_q.bias"), f32t(random(&[n_embd], 0.1))));
            tensors.push((format!("{p}.attn_k.bias"), f32t(random(&[kv], 0.1))));
            tensors.push((format!("{p}.attn_v.bias"), f32t(random(&[kv], 0.1))));
        }
    }

    let metadata_refs: Vec<(&str, &Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut file, &metadata_refs, &tensor_refs).unwrap();
}
