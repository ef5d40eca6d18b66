//! Numerical tests of the encoder on tiny random models: the fused ops against plain candle
//! ops, LoRA against merged weights, and every adapter gradient against finite differences.

use candle_core::{D, DType, Device, Tensor, Var};
use rand::SeedableRng;

use crate::base::BaseModel;
use crate::fixtures::{TinySize, write_tiny_model};
use crate::lora::{LoraSpec, attach, lora_vars};
use crate::model::{Batch, Dropouts, Head, Packed, Pooling, Student, Weights};

fn tiny(dir: &std::path::Path, size: TinySize) -> BaseModel {
    write_tiny_model(dir, size, 7).unwrap();
    BaseModel::from_dir("tiny", "tiny", dir).unwrap()
}

fn batch(base: &BaseModel, texts: &[&str]) -> Batch {
    let text = base.text_encoder(32).unwrap();
    let ids = text.encode(texts).unwrap();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    Batch::pad(&seqs, 0)
}

const TEXTS: [&str; 3] = [
    "play the song now",
    "rain",
    "reserve a table for dinner tonight please",
];

/// Sets every `B` to small random values so that the adapters change the output.
fn randomize_b(student: &Student, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in lora_vars(&student.encoder) {
        if name.contains("lora_B") {
            let dims = var.as_tensor().dims().to_vec();
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|_| rand::Rng::random_range(&mut rng, -0.3..0.3))
                .collect();
            var.set(&Tensor::from_vec(values, dims, &Device::Cpu).unwrap())
                .unwrap();
        }
    }
}

fn student(base: &BaseModel, targets: &[&str], rank: usize) -> Student {
    let mut encoder = base.load_encoder().unwrap();
    let spec = LoraSpec {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.1,
        targets: targets.iter().map(|t| t.to_string()).collect(),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    attach(&mut encoder, &spec, &mut rng).unwrap();
    let head = Head::new(3, encoder.config.hidden_size, &mut rng).unwrap();
    Student {
        encoder,
        pooling: Pooling::Mean,
        head,
    }
}

/// BERT written with plain candle ops that have autograd-free, well-tested forwards.
fn reference_hidden(weights: &Weights, base: &BaseModel, batch: &Batch) -> Tensor {
    let c = &base.config;
    let (b, s, h, nh) = (batch.batch, batch.seq, c.hidden_size, c.num_attention_heads);
    let dh = h / nh;
    let get = |n: &str| weights.get(n).unwrap();
    let ln = |x: &Tensor, p: &str| {
        candle_nn::ops::layer_norm_slow(
            x,
            &get(&format!("{p}.weight")),
            &get(&format!("{p}.bias")),
            1e-12,
        )
        .unwrap()
    };
    let lin = |x: &Tensor, p: &str| {
        x.broadcast_matmul(&get(&format!("{p}.weight")).t().unwrap())
            .unwrap()
            .broadcast_add(&get(&format!("{p}.bias")))
            .unwrap()
    };
    let ids = Tensor::from_slice(&batch.ids, (b, s), &Device::Cpu).unwrap();
    let words = get("embeddings.word_embeddings.weight")
        .index_select(&ids.flatten_all().unwrap(), 0)
        .unwrap();
    let words = words.reshape((b, s, h)).unwrap();
    let pos = get("embeddings.position_embeddings.weight")
        .narrow(0, 0, s)
        .unwrap();
    let typ = get("embeddings.token_type_embeddings.weight")
        .get(0)
        .unwrap();
    let mut xs = ln(
        &words
            .broadcast_add(&pos)
            .unwrap()
            .broadcast_add(&typ)
            .unwrap(),
        "embeddings.LayerNorm",
    );
    let mask = Tensor::from_slice(&batch.mask, (b, 1, 1, s), &Device::Cpu).unwrap();
    let mask = ((mask - 1.0).unwrap() * 1e9).unwrap();
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        let heads = |x: Tensor| {
            x.reshape((b, s, nh, dh))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let q = heads(lin(&xs, &format!("{p}.attention.self.query")));
        let k = heads(lin(&xs, &format!("{p}.attention.self.key")));
        let v = heads(lin(&xs, &format!("{p}.attention.self.value")));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / (dh as f64).sqrt()).unwrap();
        let probs =
            candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let ctx = probs
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, s, h))
            .unwrap();
        let a = lin(&ctx, &format!("{p}.attention.output.dense"));
        xs = ln(
            &(a + &xs).unwrap(),
            &format!("{p}.attention.output.LayerNorm"),
        );
        let inner = lin(&xs, &format!("{p}.intermediate.dense"))
            .gelu_erf()
            .unwrap();
        let o = lin(&inner, &format!("{p}.output.dense"));
        xs = ln(&(o + &xs).unwrap(), &format!("{p}.output.LayerNorm"));
    }
    xs.reshape((b * s, h)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn encoder_matches_plain_candle_reference() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), TinySize::default());
    let encoder = base.load_encoder().unwrap();
    let batch = batch(&base, &TEXTS);
    assert!(batch.mask.contains(&0.0), "the batch must contain padding");
    let ours = encoder.forward(&batch, None, None).unwrap();
    let reference = reference_hidden(&Weights::load(&base.dir).unwrap(), &base, &batch);
    let diff = max_diff(&ours, &reference);
    assert!(diff < 1e-4, "largest difference {diff}");
}

#[test]
fn lora_forward_equals_merged_forward() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), TinySize::default());
    let mut student = student(&base, &["all-linear"], 4);
    randomize_b(&student, 1);
    let batch = batch(&base, &TEXTS);
    let plain = Student {
        encoder: base.load_encoder().unwrap(),
        pooling: Pooling::Mean,
        head: Head {
            weight: student.head.weight.clone(),
            bias: student.head.bias.clone(),
        },
    };
    let with_lora = student.forward(&batch, None, None).unwrap();
    let without = plain.forward(&batch, None, None).unwrap();
    assert!(
        max_diff(&with_lora, &without) > 1e-3,
        "the adapters must change the logits"
    );
    for layer in &mut student.encoder.layers {
        for linear in layer.linears_mut() {
            linear.merge().unwrap();
        }
    }
    let merged = student.forward(&batch, None, None).unwrap();
    let diff = max_diff(&with_lora, &merged);
    assert!(diff < 1e-5, "largest difference {diff}");
}

#[test]
fn packed_forward_equals_padded_forward() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), TinySize::default());
    let mut student = student(&base, &["all-linear"], 4);
    randomize_b(&student, 2);
    let ids = base.text_encoder(32).unwrap().encode(&TEXTS).unwrap();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let padded = Batch::pad(&seqs, 0);
    let packed = Packed::new(&seqs);
    assert!(padded.mask.contains(&0.0), "the batch must contain padding");
    assert_eq!(packed.ids.len(), ids.iter().map(Vec::len).sum::<usize>());

    // Hidden states: the packed rows are the padded batch's real rows.
    let hidden = student.encoder.forward(&padded, None, None).unwrap();
    let hidden_packed = student.encoder.forward_packed(&packed).unwrap();
    for (i, w) in packed.offsets.windows(2).enumerate() {
        let real = hidden.narrow(0, i * padded.seq, w[1] - w[0]).unwrap();
        let ours = hidden_packed.narrow(0, w[0], w[1] - w[0]).unwrap();
        let diff = max_diff(&real, &ours);
        assert!(diff < 1e-5, "sequence {i}: largest difference {diff}");
    }
    for pooling in [Pooling::Mean, Pooling::Cls] {
        student.pooling = pooling;
        let logits = student.forward(&padded, None, None).unwrap();
        let packed_logits = student.forward_packed(&packed).unwrap();
        let diff = max_diff(&logits, &packed_logits);
        assert!(diff < 1e-5, "{pooling:?}: largest difference {diff}");
    }
}

/// Mean cross-entropy of the logits against fixed labels.
fn loss(student: &Student, batch: &Batch, dropouts: Option<&Dropouts>) -> Tensor {
    let logits = student.forward(batch, dropouts, None).unwrap();
    let log_probs = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    let labels = Tensor::new(&[1u32, 0, 2], &Device::Cpu)
        .unwrap()
        .unsqueeze(1)
        .unwrap();
    log_probs
        .gather(&labels, 1)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

fn check_gradients(dropouts: Option<Dropouts>) {
    let dir = tempfile::tempdir().unwrap();
    let size = TinySize {
        std: 0.3,
        ..TinySize::default()
    };
    let base = tiny(dir.path(), size);
    let student = student(&base, &["all-linear"], 2);
    randomize_b(&student, 2);
    let batch = batch(&base, &TEXTS);
    let value = |s: &Student| {
        loss(s, &batch, dropouts.as_ref())
            .to_scalar::<f32>()
            .unwrap()
    };
    let grads = loss(&student, &batch, dropouts.as_ref())
        .backward()
        .unwrap();

    let mut vars: Vec<(String, Var)> = lora_vars(&student.encoder);
    vars.push(("classifier.weight".into(), student.head.weight.clone()));
    vars.push(("classifier.bias".into(), student.head.bias.clone()));
    assert_eq!(vars.len(), 2 * 6 * 2 + 2);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (name, var) in vars {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let flat: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let norm: f32 = flat.iter().map(|g| g * g).sum::<f32>().sqrt();
        assert!(norm > 1e-6, "{name}: zero gradient");
        let original = var.as_tensor().copy().unwrap();
        let values: Vec<f32> = original.flatten_all().unwrap().to_vec1().unwrap();
        // The largest entry plus two random ones.
        let largest = (0..flat.len())
            .max_by(|&a, &b| flat[a].abs().total_cmp(&flat[b].abs()))
            .unwrap();
        for index in [
            largest,
            rand::Rng::random_range(&mut rng, 0..flat.len()),
            rand::Rng::random_range(&mut rng, 0..flat.len()),
        ] {
            let eps = 2e-3f32;
            let shifted = |delta: f32| {
                let mut v = values.clone();
                v[index] += delta;
                var.set(&Tensor::from_vec(v, original.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                value(&student)
            };
            let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
            var.set(&original).unwrap();
            let analytic = flat[index];
            let tolerance = 2e-3 + 0.03 * analytic.abs().max(numeric.abs());
            assert!(
                (numeric - analytic).abs() <= tolerance,
                "{name}[{index}]: numeric {numeric} vs analytic {analytic}"
            );
        }
    }
}

#[test]
fn every_lora_gradient_matches_finite_differences() {
    check_gradients(None);
}

#[test]
fn gradients_match_with_dropout_active() {
    check_gradients(Some(Dropouts {
        hidden: 0.1,
        attention: 0.1,
        lora: 0.1,
        seed: 11,
    }));
}

#[test]
fn dropout_acts_in_training_and_not_at_inference() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(dir.path(), TinySize::default());
    let student = student(&base, &["query", "value"], 4);
    randomize_b(&student, 3);
    let batch = batch(&base, &TEXTS);
    let eval_a = student.forward(&batch, None, None).unwrap();
    let eval_b = student.forward(&batch, None, None).unwrap();
    assert_eq!(max_diff(&eval_a, &eval_b), 0.0);
    for (hidden, attention, lora) in [(0.2, 0.0, 0.0), (0.0, 0.2, 0.0), (0.0, 0.0, 0.5)] {
        let d = Dropouts {
            hidden,
            attention,
            lora,
            seed: 1,
        };
        let train = student.forward(&batch, Some(&d), None).unwrap();
        assert!(
            max_diff(&eval_a, &train) > 1e-4,
            "dropout {hidden}/{attention}/{lora} did nothing"
        );
        let again = student.forward(&batch, Some(&d), None).unwrap();
        assert_eq!(max_diff(&train, &again), 0.0, "same seed, same masks");
    }
    let _ = DType::F32;
}
