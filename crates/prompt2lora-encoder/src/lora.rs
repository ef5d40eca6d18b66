//! LoRA: which linear layers get adapters, their initialisation, and the names PEFT gives them.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use crate::model::{Encoder, LINEAR_MODULES, Lora};
use crate::{Error, Result};

/// The `targets` value that selects every linear layer of the encoder.
pub const ALL_LINEAR: &str = "all-linear";

/// Rank, scaling and placement of the adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names or suffixes (`query`, `value`, `dense`, `attention.output.dense`), or
    /// `all-linear`.
    pub targets: Vec<String>,
}

impl LoraSpec {
    pub fn scale(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }

    /// Whether the module at `name` (`encoder.layer.3.attention.self.query`) gets an adapter, by
    /// PEFT's rule: the name equals a target or ends with `.target`.
    pub fn targets_module(&self, name: &str) -> bool {
        self.targets
            .iter()
            .any(|t| t == ALL_LINEAR || name == t || name.ends_with(&format!(".{t}")))
    }
}

/// Full module name of linear layer `module` (an index into [`LINEAR_MODULES`]) of layer `layer`.
pub fn module_name(layer: usize, module: usize) -> String {
    format!("encoder.layer.{layer}.{}", LINEAR_MODULES[module])
}

/// Adds fresh adapters to the targeted layers: `A` from PEFT's default (Kaiming-uniform with
/// a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), `B` zero, so training starts from the base model.
pub fn attach(encoder: &mut Encoder, spec: &LoraSpec, rng: &mut impl Rng) -> Result<()> {
    if spec.rank == 0 {
        return Err(Error::Settings("LoRA rank must be positive".into()));
    }
    for target in &spec.targets {
        let matched = target == ALL_LINEAR
            || (0..encoder.layers.len()).any(|l| {
                (0..LINEAR_MODULES.len()).any(|m| {
                    let name = module_name(l, m);
                    name == *target || name.ends_with(&format!(".{target}"))
                })
            });
        if !matched {
            return Err(Error::Settings(format!(
                "LoRA target `{target}` matches no module; use names like query, key, value, dense, \
                 attention.output.dense, intermediate.dense, output.dense or {ALL_LINEAR}"
            )));
        }
    }
    for (l, layer) in encoder.layers.iter_mut().enumerate() {
        for (m, linear) in layer.linears_mut().into_iter().enumerate() {
            if !spec.targets_module(&module_name(l, m)) {
                continue;
            }
            let (out_dim, in_dim) = (linear.out_dim(), linear.in_dim());
            let bound = 1.0 / (in_dim as f32).sqrt();
            let a: Vec<f32> = (0..spec.rank * in_dim)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let a = Tensor::from_vec(a, (spec.rank, in_dim), &Device::Cpu)?;
            let b = Tensor::zeros((out_dim, spec.rank), DType::F32, &Device::Cpu)?;
            linear.lora = Some(Lora {
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
                scale: spec.scale(),
            });
        }
    }
    Ok(())
}

/// Every adapter matrix with its PEFT key suffix, e.g.
/// `encoder.layer.0.attention.self.query.lora_A.weight`, in a stable order.
pub fn lora_vars(encoder: &Encoder) -> Vec<(String, Var)> {
    let mut out = Vec::new();
    for (l, layer) in encoder.layers.iter().enumerate() {
        for (m, linear) in layer.linears().into_iter().enumerate() {
            if let Some(lora) = &linear.lora {
                let name = module_name(l, m);
                out.push((format!("{name}.lora_A.weight"), lora.a.clone()));
                out.push((format!("{name}.lora_B.weight"), lora.b.clone()));
            }
        }
    }
    out
}

/// Index of the lowest layer with an adapter, if any.
pub fn lowest_adapted_layer(encoder: &Encoder) -> Option<usize> {
    encoder
        .layers
        .iter()
        .position(|layer| layer.linears().iter().any(|l| l.lora.is_some()))
}
