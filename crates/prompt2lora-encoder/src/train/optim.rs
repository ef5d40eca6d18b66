//! AdamW (decoupled weight decay, as PyTorch's), the warmup-then-linear-decay schedule and
//! gradient clipping by global norm. The optimiser state is plain tensors so that checkpoints can
//! save and restore it exactly.

use candle_core::{Tensor, Var};

use crate::Result;

/// AdamW over a fixed list of parameters.
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// First and second moments, one per parameter.
    pub m: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Updates done so far.
    pub t: u64,
    /// Whether each parameter gets weight decay (not biases, as in Hugging Face's Trainer).
    decay: Vec<bool>,
}

impl AdamW {
    pub fn new(params: &[(String, Var)], weight_decay: f64) -> Result<Self> {
        let zeros = |p: &Var| p.as_tensor().zeros_like();
        Ok(AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            m: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<candle_core::Result<_>>()?,
            v: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<candle_core::Result<_>>()?,
            t: 0,
            decay: params
                .iter()
                .map(|(name, _)| !name.ends_with("bias"))
                .collect(),
        })
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, params: &[(String, Var)], grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let correction1 = 1.0 - self.beta1.powi(self.t as i32);
        let correction2 = 1.0 - self.beta2.powi(self.t as i32);
        for (i, ((_, param), grad)) in params.iter().zip(grads).enumerate() {
            let m = ((&self.m[i] * self.beta1)? + (grad * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let denominator = ((&v / correction2)?.sqrt()? + self.eps)?;
            let update = ((&m / correction1)? / denominator)?;
            let mut value = param.as_tensor().clone();
            if self.decay[i] && self.weight_decay > 0.0 {
                value = (value * (1.0 - lr * self.weight_decay))?;
            }
            param.set(&(value - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }
}

/// Learning rate at update `step` (0-based) of `total`: linear warmup over `warmup` updates to
/// `peak`, then linear decay to zero at `total`. Unlike Hugging Face's schedule the first update
/// already gets `peak / warmup` rather than zero, so no step is wasted.
pub fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    let span = total.saturating_sub(warmup).max(1) as f64;
    peak * (remaining / span).clamp(0.0, 1.0)
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(learning_rate(0, 100, 10, 1.0), 0.1);
        assert_eq!(learning_rate(9, 100, 10, 1.0), 1.0);
        assert_eq!(learning_rate(10, 100, 10, 1.0), 1.0);
        assert!((learning_rate(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(100, 100, 10, 1.0), 0.0);
        assert_eq!(learning_rate(0, 10, 0, 2.0), 2.0);
    }

    #[test]
    fn adamw_takes_bias_corrected_steps_with_decoupled_decay() {
        // A constant gradient: bias-corrected Adam moves each weight by lr (times the sign of
        // its gradient) per step, after the decoupled decay p *= 1 - lr * wd.
        let p = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
        let params = vec![("w".to_string(), p.clone())];
        let mut adam = AdamW::new(&params, 0.01).unwrap();
        let g = Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap();
        adam.step(&params, std::slice::from_ref(&g), 0.1).unwrap();
        adam.step(&params, &[g], 0.1).unwrap();
        let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        let expect0 = (1.0f32 * 0.999 - 0.1) * 0.999 - 0.1;
        let expect1 = (-2.0f32 * 0.999 - 0.1) * 0.999 - 0.1;
        assert!((got[0] - expect0).abs() < 1e-5, "{got:?}");
        assert!((got[1] - expect1).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut grads = vec![
            Tensor::new(&[3f32, 0.0], &Device::Cpu).unwrap(),
            Tensor::new(&[4f32], &Device::Cpu).unwrap(),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let after: f32 = grads
            .iter()
            .map(|g| {
                g.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum();
        assert!((after.sqrt() - 1.0).abs() < 1e-5);
    }
}
