//! The encoder's fused operations as candle custom ops with their own backward passes: frozen
//! linear, LoRA linear, residual + LayerNorm, attention, GELU and dropout.
//!
//! Frozen weights live inside the ops rather than being op arguments, so autograd never computes
//! or stores a gradient for them; only the LoRA matrices, the activations and the head get one.

use std::sync::{Arc, OnceLock};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};

use crate::kernels::{self, MatRef};

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("encoder op: input is not contiguous"),
    }
}

/// Runs `f` on the f32 data of a CPU tensor, making it contiguous first if needed.
pub(crate) fn with_f32<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let tensor = tensor.contiguous()?;
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => Ok(f(slice(cpu, layout)?)),
        _ => candle_core::bail!("encoder op: only CPU tensors are supported"),
    }
}

fn dims2(layout: &Layout) -> Result<(usize, usize)> {
    layout.shape().dims2()
}

fn tensor(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// A frozen weight matrix `[out, in]` with its bias, copied out once for the kernels.
#[derive(Clone)]
pub(crate) struct Dense {
    pub weight: Arc<Vec<f32>>,
    pub bias: Option<Arc<Vec<f32>>>,
    pub out_dim: usize,
    pub in_dim: usize,
    /// The weight as a tensor, for the backward matmul.
    pub weight_tensor: Tensor,
    /// The weight repacked for products with few rows, made on first use (inference).
    panels: Arc<OnceLock<kernels::Panels>>,
}

impl Dense {
    pub fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let weight_tensor = weight.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let w = with_f32(&weight_tensor, <[f32]>::to_vec)?;
        let bias = match bias {
            Some(b) => Some(Arc::new(with_f32(b, <[f32]>::to_vec)?)),
            None => None,
        };
        Ok(Dense {
            weight: Arc::new(w),
            bias,
            out_dim,
            in_dim,
            weight_tensor,
            panels: Arc::default(),
        })
    }

    /// `x W^T + b` for `rows` rows of `x`.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        if rows <= kernels::FEW_ROWS {
            let panels = self
                .panels
                .get_or_init(|| kernels::Panels::new(&self.weight, self.out_dim, self.in_dim));
            return panels.linear(x, rows, self.bias.as_deref().map(Vec::as_slice));
        }
        let mut out = vec![0f32; rows * self.out_dim];
        if let Some(bias) = &self.bias {
            for row in out.chunks_mut(self.out_dim) {
                row.copy_from_slice(bias);
            }
        }
        let w = MatRef::new(&self.weight, self.out_dim, self.in_dim).t();
        let x = MatRef::new(x, rows, self.in_dim);
        kernels::matmul(&mut out, self.out_dim, x, w, self.bias.is_some(), 1.0, true);
        out
    }

    /// `grad W`: the input gradient.
    fn backward(&self, grad: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * self.in_dim];
        let g = MatRef::new(grad, rows, self.out_dim);
        let w = MatRef::new(&self.weight, self.out_dim, self.in_dim);
        kernels::matmul(&mut out, self.in_dim, g, w, false, 1.0, true);
        out
    }
}

/// `x W^T + b` with `W` frozen.
pub(crate) struct FrozenLinear(pub Dense);

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, _) = dims2(layout)?;
        let out = self.0.forward(slice(storage, layout)?, rows);
        Ok((CpuStorage::F32(out), Shape::from((rows, self.0.out_dim))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let rows = grad.dim(0)?;
        let dx = with_f32(grad, |g| self.0.backward(g, rows))?;
        Ok(Some(tensor(dx, (rows, self.0.in_dim))?))
    }
}

/// `x W^T + b + scale * (drop(x) A^T) B^T` with `W` frozen; the arguments are `x`, `A [r, in]`
/// and `B [out, r]`.
pub(crate) struct LoraLinear {
    pub dense: Dense,
    pub scale: f32,
    /// LoRA dropout probability; 0 at inference.
    pub dropout: f32,
    pub seed: u64,
}

impl LoraLinear {
    fn dropped_input(&self, x: &[f32]) -> Option<Vec<f32>> {
        if self.dropout <= 0.0 {
            return None;
        }
        let keep_scale = 1.0 / (1.0 - self.dropout);
        let out = x
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if kernels::keep(self.seed, i as u64, self.dropout) {
                    v * keep_scale
                } else {
                    0.0
                }
            })
            .collect();
        Some(out)
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a: &CpuStorage,
        al: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, in_dim) = dims2(xl)?;
        let (rank, _) = dims2(al)?;
        let (x, a, b) = (slice(xs, xl)?, slice(a, al)?, slice(b, bl)?);
        let mut out = self.dense.forward(x, rows);
        let dropped = self.dropped_input(x);
        let xd = dropped.as_deref().unwrap_or(x);
        let mut h = vec![0f32; rows * rank];
        let xm = MatRef::new(xd, rows, in_dim);
        kernels::matmul(
            &mut h,
            rank,
            xm,
            MatRef::new(a, rank, in_dim).t(),
            false,
            1.0,
            true,
        );
        let bt = MatRef::new(b, self.dense.out_dim, rank).t();
        let hm = MatRef::new(&h, rows, rank);
        kernels::matmul(&mut out, self.dense.out_dim, hm, bt, true, self.scale, true);
        Ok((
            CpuStorage::F32(out),
            Shape::from((rows, self.dense.out_dim)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, in_dim) = x.dims2()?;
        let (rank, _) = a.dims2()?;
        let out_dim = self.dense.out_dim;
        let (x, a, b, g) = (
            x.contiguous()?,
            a.contiguous()?,
            b.contiguous()?,
            grad.contiguous()?,
        );
        let (dx, da, db) = with_f32(&x, |x| {
            with_f32(&a, |a| {
                with_f32(&b, |b| {
                    with_f32(&g, |g| {
                        self.backward(x, a, b, g, rows, in_dim, rank, out_dim)
                    })
                })
            })
        })????;
        Ok((
            Some(tensor(dx, (rows, in_dim))?),
            Some(tensor(da, (rank, in_dim))?),
            Some(tensor(db, (out_dim, rank))?),
        ))
    }
}

type LoraGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

impl LoraLinear {
    #[expect(
        clippy::too_many_arguments,
        reason = "plain slices and their dimensions"
    )]
    fn backward(
        &self,
        x: &[f32],
        a: &[f32],
        b: &[f32],
        g: &[f32],
        rows: usize,
        in_dim: usize,
        rank: usize,
        out_dim: usize,
    ) -> LoraGrads {
        let dropped = self.dropped_input(x);
        let xd = dropped.as_deref().unwrap_or(x);
        let xm = MatRef::new(xd, rows, in_dim);
        let am = MatRef::new(a, rank, in_dim);
        let gm = MatRef::new(g, rows, out_dim);
        let mut h = vec![0f32; rows * rank];
        kernels::matmul(&mut h, rank, xm, am.t(), false, 1.0, true);
        let mut gb = vec![0f32; rows * rank];
        kernels::matmul(
            &mut gb,
            rank,
            gm,
            MatRef::new(b, out_dim, rank),
            false,
            1.0,
            true,
        );
        let mut db = vec![0f32; out_dim * rank];
        kernels::matmul(
            &mut db,
            rank,
            gm.t(),
            MatRef::new(&h, rows, rank),
            false,
            self.scale,
            true,
        );
        let gbm = MatRef::new(&gb, rows, rank);
        let mut da = vec![0f32; rank * in_dim];
        kernels::matmul(&mut da, in_dim, gbm.t(), xm, false, self.scale, true);

        let mut dx = self.dense.backward(g, rows);
        let mut lora_dx = vec![0f32; rows * in_dim];
        kernels::matmul(&mut lora_dx, in_dim, gbm, am, false, self.scale, true);
        let keep_scale = 1.0 / (1.0 - self.dropout);
        for (i, (d, l)) in dx.iter_mut().zip(&lora_dx).enumerate() {
            if self.dropout <= 0.0 {
                *d += l;
            } else if kernels::keep(self.seed, i as u64, self.dropout) {
                *d += l * keep_scale;
            }
        }
        (dx, da, db)
    }
}

/// `LayerNorm(x + residual)` with frozen gain and bias; as a one-argument op, `LayerNorm(x)`.
pub(crate) struct AddLayerNorm {
    pub gamma: Arc<Vec<f32>>,
    pub beta: Arc<Vec<f32>>,
    pub eps: f32,
}

impl CustomOp1 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = kernels::layer_norm(
            slice(storage, layout)?,
            None,
            &self.gamma,
            &self.beta,
            self.eps,
        );
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(arg, |x| {
            with_f32(grad, |g| {
                kernels::layer_norm_backward(x, None, &self.gamma, self.eps, g)
            })
        })??;
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

impl CustomOp2 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "add-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, r) = (slice(xs, xl)?, slice(rs, rl)?);
        let out = kernels::layer_norm(x, Some(r), &self.gamma, &self.beta, self.eps);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        residual: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = with_f32(x, |x| {
            with_f32(residual, |r| {
                with_f32(grad, |g| {
                    kernels::layer_norm_backward(x, Some(r), &self.gamma, self.eps, g)
                })
            })
        })???;
        let dx = tensor(dx, x.shape())?;
        Ok((Some(dx.clone()), Some(dx)))
    }
}

/// Exact GELU.
pub(crate) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(kernels::gelu(slice(storage, layout)?)),
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_f32(arg, |x| with_f32(grad, |g| kernels::gelu_backward(x, g)))??;
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

/// Inverted dropout with a counter-based mask (see [`kernels::keep`]).
pub(crate) struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let scale = 1.0 / (1.0 - self.p);
        x.iter()
            .enumerate()
            .map(|(i, &v)| {
                if kernels::keep(self.seed, i as u64, self.p) {
                    v * scale
                } else {
                    0.0
                }
            })
            .collect()
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((
            CpuStorage::F32(self.apply(slice(storage, layout)?)),
            layout.shape().clone(),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(tensor(
            with_f32(grad, |g| self.apply(g))?,
            arg.shape(),
        )?))
    }
}

/// Multi-head scaled dot-product attention over `q`, `k`, `v` of shape `[batch * seq, hidden]`
/// (heads side by side in the hidden dimension), with an additive key mask and dropout on the
/// attention probabilities. The output has the same layout, so no transposes are needed.
pub(crate) struct Attention {
    pub seq: usize,
    pub heads: usize,
    /// Additive mask per key, `[batch * seq]`: 0 for tokens, a large negative value for padding.
    pub mask: Arc<Vec<f32>>,
    pub dropout: f32,
    pub seed: u64,
}

impl Attention {
    /// Softmax probabilities of one (batch, head) into `probs` (`seq x seq`), before dropout.
    fn probabilities(
        &self,
        q: &[f32],
        k: &[f32],
        b: usize,
        h: usize,
        hidden: usize,
        probs: &mut [f32],
    ) {
        let (seq, dh) = (self.seq, hidden / self.heads);
        let base = b * seq * hidden;
        let qm = MatRef::block(&q[base..], seq, h * dh, dh, hidden);
        let km = MatRef::block(&k[base..], seq, h * dh, dh, hidden);
        let scale = 1.0 / (dh as f32).sqrt();
        kernels::matmul(probs, seq, qm, km.t(), false, scale, false);
        let mask = &self.mask[b * seq..(b + 1) * seq];
        for row in probs.chunks_mut(seq) {
            for (v, m) in row.iter_mut().zip(mask) {
                *v += m;
            }
            kernels::softmax_row(row);
        }
    }

    /// Applies (or, for gradients, re-applies) the dropout mask of one (batch, head) in place.
    fn drop(&self, values: &mut [f32], b: usize, h: usize) {
        if self.dropout <= 0.0 {
            return;
        }
        let scale = 1.0 / (1.0 - self.dropout);
        let base = ((b * self.heads + h) * self.seq * self.seq) as u64;
        for (i, v) in values.iter_mut().enumerate() {
            *v = if kernels::keep(self.seed, base + i as u64, self.dropout) {
                *v * scale
            } else {
                0.0
            };
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (rows, hidden) = dims2(ql)?;
        let (q, k, v) = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
        let (seq, dh) = (self.seq, hidden / self.heads);
        let mut out = vec![0f32; rows * hidden];
        out.par_chunks_mut(seq * hidden)
            .enumerate()
            .for_each(|(b, chunk)| {
                let mut probs = vec![0f32; seq * seq];
                for h in 0..self.heads {
                    self.probabilities(q, k, b, h, hidden, &mut probs);
                    self.drop(&mut probs, b, h);
                    let vm = MatRef::block(&v[b * seq * hidden..], seq, h * dh, dh, hidden);
                    let pm = MatRef::new(&probs, seq, seq);
                    kernels::matmul(&mut chunk[h * dh..], hidden, pm, vm, false, 1.0, false);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, hidden))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (rows, hidden) = q.dims2()?;
        let (dq, dk, dv) = with_f32(q, |q| {
            with_f32(k, |k| {
                with_f32(v, |v| {
                    with_f32(grad, |g| self.backward(q, k, v, g, rows, hidden))
                })
            })
        })????;
        Ok((
            Some(tensor(dq, (rows, hidden))?),
            Some(tensor(dk, (rows, hidden))?),
            Some(tensor(dv, (rows, hidden))?),
        ))
    }
}

/// Multi-head self-attention over packed sequences (laid end to end, no padding), for
/// inference: each sequence attends to its own rows only, so no mask is needed and no work is
/// spent on padding. Has no backward pass; training uses the padded [`Attention`].
pub(crate) struct PackedAttention {
    /// Rows `offsets[i]..offsets[i + 1]` are sequence `i`.
    pub offsets: Arc<Vec<usize>>,
    pub heads: usize,
}

impl CustomOp3 for PackedAttention {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (rows, hidden) = dims2(ql)?;
        if self.offsets.last().copied() != Some(rows) {
            candle_core::bail!(
                "packed attention: offsets end at {:?}, not at {rows} rows",
                self.offsets.last()
            );
        }
        let (q, k, v) = (slice(qs, ql)?, slice(ks, kl)?, slice(vs, vl)?);
        let dh = hidden / self.heads;
        let scale = 1.0 / (dh as f32).sqrt();
        let mut out = vec![0f32; rows * hidden];
        let mut chunks = Vec::with_capacity(self.offsets.len().saturating_sub(1));
        let mut rest = out.as_mut_slice();
        for w in self.offsets.windows(2) {
            let (chunk, tail) = rest.split_at_mut((w[1] - w[0]) * hidden);
            chunks.push((w[0], chunk));
            rest = tail;
        }
        chunks.into_par_iter().for_each(|(start, chunk)| {
            let seq = chunk.len() / hidden;
            if seq == 0 {
                return;
            }
            let base = start * hidden;
            let mut probs = vec![0f32; seq * seq];
            for h in 0..self.heads {
                let qm = MatRef::block(&q[base..], seq, h * dh, dh, hidden);
                let km = MatRef::block(&k[base..], seq, h * dh, dh, hidden);
                kernels::matmul(&mut probs, seq, qm, km.t(), false, scale, false);
                probs.chunks_mut(seq).for_each(kernels::softmax_row);
                let vm = MatRef::block(&v[base..], seq, h * dh, dh, hidden);
                let pm = MatRef::new(&probs, seq, seq);
                kernels::matmul(&mut chunk[h * dh..], hidden, pm, vm, false, 1.0, false);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, hidden))))
    }
}

impl Attention {
    fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        g: &[f32],
        rows: usize,
        hidden: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        use rayon::prelude::*;
        let (seq, dh) = (self.seq, hidden / self.heads);
        let scale = 1.0 / (dh as f32).sqrt();
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; rows * hidden],
            vec![0f32; rows * hidden],
            vec![0f32; rows * hidden],
        );
        let chunk = seq * hidden;
        dq.par_chunks_mut(chunk)
            .zip(dk.par_chunks_mut(chunk))
            .zip(dv.par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(b, ((dq, dk), dv))| {
                let mut probs = vec![0f32; seq * seq];
                let mut dropped = vec![0f32; seq * seq];
                let mut dp = vec![0f32; seq * seq];
                let base = b * chunk;
                for h in 0..self.heads {
                    self.probabilities(q, k, b, h, hidden, &mut probs);
                    dropped.copy_from_slice(&probs);
                    self.drop(&mut dropped, b, h);
                    let gm = MatRef::block(&g[base..], seq, h * dh, dh, hidden);
                    let vm = MatRef::block(&v[base..], seq, h * dh, dh, hidden);
                    let qm = MatRef::block(&q[base..], seq, h * dh, dh, hidden);
                    let km = MatRef::block(&k[base..], seq, h * dh, dh, hidden);
                    let pd = MatRef::new(&dropped, seq, seq);
                    kernels::matmul(&mut dv[h * dh..], hidden, pd.t(), gm, false, 1.0, false);
                    kernels::matmul(&mut dp, seq, gm, vm.t(), false, 1.0, false);
                    self.drop(&mut dp, b, h);
                    for (dp_row, p_row) in dp.chunks_mut(seq).zip(probs.chunks(seq)) {
                        let dot: f32 = dp_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                        for (d, p) in dp_row.iter_mut().zip(p_row) {
                            *d = p * (*d - dot);
                        }
                    }
                    let ds = MatRef::new(&dp, seq, seq);
                    kernels::matmul(&mut dq[h * dh..], hidden, ds, km, false, scale, false);
                    kernels::matmul(&mut dk[h * dh..], hidden, ds.t(), qm, false, scale, false);
                }
            });
        (dq, dk, dv)
    }
}
