//! CPU kernels under the encoder's custom ops: a bounds-checked wrapper over `gemm`, repacked
//! weights for products with few rows ([`Panels`]), the counter-based dropout mask, LayerNorm,
//! softmax and GELU, forward and backward.
//!
//! These are written by hand because candle 0.11's fused LayerNorm and softmax have no backward
//! pass, its composite versions allocate a tensor per elementary step, and its matmul backward
//! always computes the gradient of frozen weights.

use gemm::Parallelism;

/// A read-only strided view of a row-major buffer as a matrix.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A block of columns `col..col + cols` of a row-major matrix with `stride` columns.
    pub fn block(data: &'a [f32], rows: usize, col: usize, cols: usize, stride: usize) -> Self {
        MatRef {
            data: &data[col..],
            rows,
            cols,
            row_stride: stride,
            col_stride: 1,
        }
    }

    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn last_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }
}

/// `dst = (accumulate ? dst : 0) + scale * a * b`, where `dst` is `a.rows x b.cols` with row
/// stride `dst_stride`. Runs on the rayon pool when `parallel`.
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
    scale: f32,
    parallel: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "matmul inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.data.len() > a.last_index() || k == 0,
        "matmul lhs out of bounds"
    );
    assert!(
        b.data.len() > b.last_index() || k == 0,
        "matmul rhs out of bounds"
    );
    assert!(
        dst_stride >= n && dst.len() >= (m - 1) * dst_stride + n,
        "matmul dst out of bounds"
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = if parallel && m * n * k >= 64 * 64 * 64 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    #[expect(
        unsafe_code,
        reason = "gemm takes raw pointers; every bound is asserted above"
    )]
    // SAFETY: the asserts above keep every index of the three strided views inside their
    // slices, and `dst` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Whether element `index` survives dropout with drop probability `p` under `seed`.
///
/// Counter-based (a SplitMix64 hash of seed and index) rather than a sequential generator, so the
/// backward pass regenerates the forward mask without storing it, rayon workers need no shared
/// state, and a resumed run draws exactly the masks of an uninterrupted one.
#[inline]
pub(crate) fn keep(seed: u64, index: u64, p: f32) -> bool {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32) * (1.0 / (1u64 << 24) as f32) >= p
}

/// Mixes a stream id into a seed, so that each dropout site draws an independent mask.
pub(crate) fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed.wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 32)
}

/// Rows processed per rayon task in the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// `out[r] = LayerNorm(x[r] + residual[r])` for every row of width `gamma.len()`.
pub(crate) fn layer_norm(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) -> Vec<f32> {
    use rayon::prelude::*;
    let width = gamma.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_mut(width).enumerate() {
                let start = (task * ROWS_PER_TASK + i) * width;
                let xs = &x[start..start + width];
                match residual {
                    Some(r) => {
                        for ((o, a), b) in row.iter_mut().zip(xs).zip(&r[start..start + width]) {
                            *o = a + b;
                        }
                    }
                    None => row.copy_from_slice(xs),
                }
                let (mean, inv_std) = moments(row, eps);
                for ((o, g), b) in row.iter_mut().zip(gamma).zip(beta) {
                    *o = (*o - mean) * inv_std * g + b;
                }
            }
        });
    out
}

fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Gradient of `LayerNorm(x + residual)` with respect to its (summed) input.
pub(crate) fn layer_norm_backward(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    eps: f32,
    grad: &[f32],
) -> Vec<f32> {
    use rayon::prelude::*;
    let width = gamma.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let mut xhat = vec![0f32; width];
            for (i, row) in chunk.chunks_mut(width).enumerate() {
                let start = (task * ROWS_PER_TASK + i) * width;
                for (j, h) in xhat.iter_mut().enumerate() {
                    *h = x[start + j] + residual.map_or(0.0, |r| r[start + j]);
                }
                let (mean, inv_std) = moments(&xhat, eps);
                let g = &grad[start..start + width];
                let (mut sum_gg, mut sum_ggx) = (0f32, 0f32);
                for j in 0..width {
                    xhat[j] = (xhat[j] - mean) * inv_std;
                    let gg = g[j] * gamma[j];
                    sum_gg += gg;
                    sum_ggx += gg * xhat[j];
                }
                let n = width as f32;
                for j in 0..width {
                    row[j] = inv_std * (g[j] * gamma[j] - sum_gg / n - xhat[j] * sum_ggx / n);
                }
            }
        });
    out
}

/// Exact (erf) GELU, as BERT's `gelu` activation.
pub(crate) fn gelu(x: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(o, x)| vector::gelu(o, x));
    out
}

pub(crate) fn gelu_backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .zip(grad.par_chunks(4096))
        .for_each(|((o, x), g)| vector::gelu_backward(o, x, g));
    out
}

/// In-place softmax of one row.
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    vector::exp_shifted(row, max);
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Input rows up to which a linear layer uses [`Panels`] rather than the general matrix product.
/// Measured on minilm-l6's shapes (one thread, Intel Xeon with AVX-512): at 13 rows (one
/// message) 98-182 µs against `gemm`'s 240-591 µs, at 32 rows 0.5-0.8x `gemm`'s time, at 64
/// rows the same time or less, at 128 rows and more `gemm` is faster.
pub(crate) const FEW_ROWS: usize = 64;

/// Output columns per panel of [`Panels`].
const PANEL: usize = 32;

/// A frozen weight matrix `[out, in]` repacked for products with few input rows: panels of
/// [`PANEL`] output columns, each stored `[in, PANEL]` contiguously (the last panel zero-padded).
///
/// Written by hand because `gemm` repacks the whole weight matrix on every call: for one
/// message (about ten token rows) the packing took five times longer than the arithmetic, and
/// single-message latency is what a classifier behind an API is judged by. Packing once at
/// load lets each product stream every weight once while a block of input rows stays in
/// registers: `R` rows times one panel of accumulators, one fused multiply-add per weight and
/// row, no horizontal sums. Panels run on the rayon pool.
pub(crate) struct Panels {
    data: Vec<f32>,
    out_dim: usize,
    in_dim: usize,
}

impl Panels {
    /// Repacks `weight` (`[out_dim, in_dim]`, row-major).
    pub fn new(weight: &[f32], out_dim: usize, in_dim: usize) -> Self {
        assert_eq!(weight.len(), out_dim * in_dim, "weight is not out x in");
        let panels = out_dim.div_ceil(PANEL);
        let mut data = vec![0f32; panels * in_dim * PANEL];
        for (o, row) in weight.chunks_exact(in_dim).enumerate() {
            let panel = &mut data[(o / PANEL) * in_dim * PANEL..][..in_dim * PANEL];
            for (k, w) in row.iter().enumerate() {
                panel[k * PANEL + o % PANEL] = *w;
            }
        }
        Panels {
            data,
            out_dim,
            in_dim,
        }
    }

    /// `x W^T + b` for `rows` rows of `x` (`[rows, in]`).
    pub fn linear(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        use rayon::prelude::*;
        let in_dim = self.in_dim;
        assert_eq!(x.len(), rows * in_dim, "input is not rows x in");
        let block = vector::panel_rows();
        // Each block of input rows transposed to `[in, block]`, so the kernel reads one
        // contiguous group of `block` values per weight row.
        let blocks: Vec<(usize, Vec<f32>)> = x
            .chunks(block * in_dim)
            .map(|rows_x| {
                let n = rows_x.len() / in_dim;
                let mut xt = vec![0f32; in_dim * n];
                for (r, row) in rows_x.chunks_exact(in_dim).enumerate() {
                    for (k, v) in row.iter().enumerate() {
                        xt[k * n + r] = *v;
                    }
                }
                (n, xt)
            })
            .collect();
        let product = |panel: &[f32]| {
            // `[rows, PANEL]` for this panel.
            let mut part = vec![0f32; rows * PANEL];
            for ((n, xt), out) in blocks.iter().zip(part.chunks_mut(block * PANEL)) {
                vector::panel_product(out, xt, panel, *n);
            }
            part
        };
        // Handing work to the pool costs tens of microseconds, as much as a small layer's
        // arithmetic; with one thread there is nothing to gain from it.
        let parts: Vec<Vec<f32>> = if rayon::current_num_threads() > 1 {
            self.data.par_chunks(in_dim * PANEL).map(product).collect()
        } else {
            self.data.chunks(in_dim * PANEL).map(product).collect()
        };
        let mut out = vec![0f32; rows * self.out_dim];
        for (p, part) in parts.iter().enumerate() {
            let col = p * PANEL;
            let width = PANEL.min(self.out_dim - col);
            for (row, values) in out.chunks_exact_mut(self.out_dim).zip(part.chunks(PANEL)) {
                row[col..col + width].copy_from_slice(&values[..width]);
            }
        }
        if let Some(bias) = bias {
            for row in out.chunks_exact_mut(self.out_dim) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        out
    }
}

/// Element-wise loops over `exp` and `erf` that the compiler can vectorise.
///
/// Written by hand because the standard library's `exp` and candle's `erf` are scalar calls:
/// in GELU and the attention softmax they took a fifth of the training time. No maintained
/// crate offers branch-free f32 versions, so these are the textbook ones (Cephes' `expf`
/// range reduction and polynomial; Abramowitz and Stegun 7.1.26 for `erf`; the test below
/// holds both under 5e-7 in f32, relative for `exp`, absolute for `erf`, over [-80, 80]),
/// inlined into loops compiled three times: for the baseline target and, chosen at run time,
/// for AVX2 and for AVX-512. Each lane sums in the same order in every version, so all three
/// give the same bits. Plain multiply-adds, not `mul_add`, which is a library call where the
/// target has no FMA. The panel kernel is the exception: it is built on `mul_add`, one
/// instruction in the AVX2 and AVX-512 versions and a (slow but exact) library call in the
/// baseline one, which x86-64 CPUs from the last decade never run.
mod vector {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const INV_SQRT_2PI: f32 = 0.398_942_3;

    #[inline(always)]
    fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Round to nearest by the 1.5 * 2^23 trick, which needs no rounding instruction.
        const ROUND: f32 = 12_582_912.0;
        let x = x.clamp(-87.3, 88.3);
        let n = (x * LOG2E + ROUND) - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = 1.987_569_1e-4_f32;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 0.166_666_65;
        let p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
        y * scale
    }

    #[inline(always)]
    fn erf(x: f32) -> f32 {
        let a = x.abs();
        let t = 1.0 / (0.327_591_1 * a + 1.0);
        let p = 1.061_405_4_f32;
        let p = p * t - 1.453_152;
        let p = p * t + 1.421_413_8;
        let p = p * t - 0.284_496_74;
        let p = p * t + 0.254_829_6;
        let y = 1.0 - p * t * exp(-a * a);
        y.copysign(x)
    }

    #[inline(always)]
    fn gelu_loop(out: &mut [f32], x: &[f32]) {
        for (o, &v) in out.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2));
        }
    }

    #[inline(always)]
    fn gelu_backward_loop(out: &mut [f32], x: &[f32], grad: &[f32]) {
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(grad) {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
            *o = g * (cdf + v * pdf);
        }
    }

    #[inline(always)]
    fn exp_shifted_loop(xs: &mut [f32], shift: f32) {
        for v in xs.iter_mut() {
            *v = exp(*v - shift);
        }
    }

    /// `out[r * PANEL + j] = sum_k xt[k * R + r] * panel[k * PANEL + j]` for the `R` rows of one
    /// block. The accumulators (`R` times `PANEL` floats) stay in vector registers when `R`
    /// suits the target ([`panel_rows`]); `mul_add` keeps one rounding per step, so every
    /// target gives the same bits for the same block size. Blocks of one or two rows sum in
    /// another order ([`panel_block_split`]), so a row's last bits depend on the block it
    /// falls in: on how many rows the call has, and on the target's block size.
    #[inline(always)]
    fn panel_block<const R: usize>(out: &mut [f32], xt: &[f32], panel: &[f32]) {
        let mut acc = [[0f32; super::PANEL]; R];
        for (w, x) in panel.chunks_exact(super::PANEL).zip(xt.chunks_exact(R)) {
            let w: &[f32; super::PANEL] = w.try_into().expect("a panel row");
            let x: &[f32; R] = x.try_into().expect("a block column");
            for r in 0..R {
                for j in 0..super::PANEL {
                    acc[r][j] = x[r].mul_add(w[j], acc[r][j]);
                }
            }
        }
        for (dst, src) in out.chunks_exact_mut(super::PANEL).zip(&acc) {
            dst.copy_from_slice(src);
        }
    }

    /// [`panel_block`] for one or two rows, where one chain of multiply-adds per accumulator
    /// would wait on its own latency: even and odd weight rows go to two sets of accumulators,
    /// added at the end.
    #[inline(always)]
    fn panel_block_split<const R: usize>(out: &mut [f32], xt: &[f32], panel: &[f32]) {
        const P: usize = super::PANEL;
        let mut even = [[0f32; P]; R];
        let mut odd = [[0f32; P]; R];
        let pairs = panel.chunks_exact(2 * P);
        let last = pairs.remainder();
        let x_pairs = xt.chunks_exact(2 * R);
        let x_last = x_pairs.remainder();
        for (w, x) in pairs.zip(x_pairs) {
            let (w0, w1) = w.split_at(P);
            let w0: &[f32; P] = w0.try_into().expect("a panel row");
            let w1: &[f32; P] = w1.try_into().expect("a panel row");
            for r in 0..R {
                for j in 0..P {
                    even[r][j] = x[r].mul_add(w0[j], even[r][j]);
                    odd[r][j] = x[R + r].mul_add(w1[j], odd[r][j]);
                }
            }
        }
        if !last.is_empty() {
            for r in 0..R {
                for j in 0..P {
                    even[r][j] = x_last[r].mul_add(last[j], even[r][j]);
                }
            }
        }
        for (r, dst) in out.chunks_exact_mut(P).enumerate().take(R) {
            for j in 0..P {
                dst[j] = even[r][j] + odd[r][j];
            }
        }
    }

    /// [`panel_block`] for a block of `rows` rows (1 to 6).
    #[inline(always)]
    fn panel_product_loop(out: &mut [f32], xt: &[f32], panel: &[f32], rows: usize) {
        match rows {
            1 => panel_block_split::<1>(out, xt, panel),
            2 => panel_block_split::<2>(out, xt, panel),
            3 => panel_block::<3>(out, xt, panel),
            4 => panel_block::<4>(out, xt, panel),
            5 => panel_block::<5>(out, xt, panel),
            6 => panel_block::<6>(out, xt, panel),
            _ => panic!("a panel block holds 1 to 6 rows, not {rows}"),
        }
    }

    /// Rows per block of [`panel_product`]: 6 rows of 2 AVX-512 registers, or 3 rows of 4 AVX2
    /// registers, hold the accumulators in registers with room for the weights. (With 8 rows
    /// the compiler vectorised across rows instead, with gathers, at a tenth of the speed.)
    pub(super) fn panel_rows() -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return 6;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return 3;
            }
        }
        4
    }

    /// Defines `$name`, which runs `$body` compiled for AVX-512 or AVX2 when the CPU has them
    /// and for the baseline target otherwise.
    macro_rules! dispatch {
        ($name:ident, ($($arg:ident: $ty:ty),*), $body:ident) => {
            pub(super) fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    fn wide($($arg: $ty),*) {
                        $body($($arg),*)
                    }
                    #[target_feature(enable = "avx2,fma")]
                    fn narrow($($arg: $ty),*) {
                        $body($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        #[expect(unsafe_code, reason = "calling a function compiled for AVX-512")]
                        // SAFETY: the CPU was just checked to have AVX-512F.
                        unsafe {
                            return wide($($arg),*);
                        }
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        #[expect(unsafe_code, reason = "calling a function compiled for AVX2")]
                        // SAFETY: the CPU was just checked to have AVX2 and FMA.
                        unsafe {
                            return narrow($($arg),*);
                        }
                    }
                }
                $body($($arg),*)
            }
        };
    }

    dispatch!(gelu, (out: &mut [f32], x: &[f32]), gelu_loop);
    dispatch!(
        gelu_backward,
        (out: &mut [f32], x: &[f32], grad: &[f32]),
        gelu_backward_loop
    );
    dispatch!(exp_shifted, (xs: &mut [f32], shift: f32), exp_shifted_loop);
    dispatch!(
        panel_product,
        (out: &mut [f32], xt: &[f32], panel: &[f32], rows: usize),
        panel_product_loop
    );

    #[cfg(test)]
    mod tests {
        #[test]
        fn exp_and_erf_match_the_standard_library() {
            let mut worst_exp = 0f32;
            let mut worst_erf = 0f32;
            for i in -40_000..=40_000 {
                let x = i as f32 * 0.002;
                let exact = (x as f64).exp();
                let rel = ((super::exp(x) as f64 - exact) / exact).abs() as f32;
                worst_exp = worst_exp.max(rel);
                let exact = candle_core::cpu::erf::erf_f64(x as f64);
                worst_erf = worst_erf.max((super::erf(x) as f64 - exact).abs() as f32);
            }
            assert!(worst_exp < 5e-7, "exp: worst relative error {worst_exp}");
            assert!(worst_erf < 5e-7, "erf: worst absolute error {worst_erf}");
            assert_eq!(super::exp(-1e4), super::exp(-87.3));
            assert!(super::exp(1e4).is_finite());
        }

        #[test]
        fn dispatched_loops_agree_with_the_baseline() {
            let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.013).collect();
            let (mut a, mut b) = (vec![0f32; 1000], vec![0f32; 1000]);
            super::gelu(&mut a, &x);
            super::gelu_loop(&mut b, &x);
            assert_eq!(a, b);
            // A block of 5 rows against one panel, 100 weight rows deep.
            let panel: Vec<f32> = (0..100 * super::super::PANEL)
                .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
                .collect();
            let n = 5 * super::super::PANEL;
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            super::panel_product(&mut a, &x[..500], &panel, 5);
            super::panel_product_loop(&mut b, &x[..500], &panel, 5);
            assert_eq!(a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_handles_transposes_and_blocks() {
        // a: 2x3, b: 3x2 (given transposed as 2x3)
        let a = [1., 2., 3., 4., 5., 6.];
        let bt = [1., 0., 1., 0., 1., 0.];
        let mut dst = [0f32; 4];
        matmul(
            &mut dst,
            2,
            MatRef::new(&a, 2, 3),
            MatRef::new(&bt, 2, 3).t(),
            false,
            1.0,
            true,
        );
        assert_eq!(dst, [4., 2., 10., 5.]);
        matmul(
            &mut dst,
            2,
            MatRef::new(&a, 2, 3),
            MatRef::new(&bt, 2, 3).t(),
            true,
            0.5,
            false,
        );
        assert_eq!(dst, [6., 3., 15., 7.5]);
        // columns 1..3 of a, times a 2x1 vector
        let mut col = [0f32; 2];
        let v = [1., 1.];
        matmul(
            &mut col,
            1,
            MatRef::block(&a, 2, 1, 2, 3),
            MatRef::new(&v, 2, 1),
            false,
            1.0,
            false,
        );
        assert_eq!(col, [5., 11.]);
    }

    #[test]
    fn panel_linear_matches_the_general_product() {
        for rows in [1, 2, 7, 8, 13, 64] {
            panel_case(rows);
        }
    }

    fn panel_case(rows: usize) {
        let (out_dim, in_dim) = (130, 45);
        let x: Vec<f32> = (0..rows * in_dim)
            .map(|i| ((i * 7) % 13) as f32 - 6.0)
            .collect();
        let w: Vec<f32> = (0..out_dim * in_dim)
            .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let bias: Vec<f32> = (0..out_dim).map(|i| i as f32 * 0.01).collect();
        let got = Panels::new(&w, out_dim, in_dim).linear(&x, rows, Some(&bias));
        let mut want = vec![0f32; rows * out_dim];
        for row in want.chunks_mut(out_dim) {
            row.copy_from_slice(&bias);
        }
        let wt = MatRef::new(&w, out_dim, in_dim).t();
        matmul(
            &mut want,
            out_dim,
            MatRef::new(&x, rows, in_dim),
            wt,
            true,
            1.0,
            false,
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    #[test]
    fn dropout_mask_keeps_the_expected_share() {
        let kept = (0..100_000).filter(|&i| keep(7, i, 0.1)).count();
        assert!((89_000..91_000).contains(&kept), "{kept}");
        assert!((0..1000).all(|i| keep(7, i, 0.0)));
        assert_ne!(derive_seed(1, 2), derive_seed(1, 3));
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        let x: Vec<f32> = (0..12).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.3).collect();
        let r: Vec<f32> = (0..12).map(|i| (i as f32 * 0.1).sin()).collect();
        let gamma = [1.5, -0.5, 0.7, 1.0, 0.2, 2.0];
        let beta = [0.1; 6];
        let w: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).cos()).collect();
        let loss = |x: &[f32]| -> f32 {
            let y = layer_norm(x, Some(&r), &gamma, &beta, 1e-5);
            y.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let analytic = layer_norm_backward(&x, Some(&r), &gamma, 1e-5, &w);
        for i in 0..x.len() {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[i] += 1e-2;
            minus[i] -= 1e-2;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-2;
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "{i}: {numeric} vs {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn gelu_backward_matches_finite_differences() {
        let x = [-3.0f32, -1.0, -0.2, 0.0, 0.4, 1.3, 2.5];
        let ones = [1f32; 7];
        let analytic = gelu_backward(&x, &ones);
        for i in 0..x.len() {
            let numeric = (gelu(&[x[i] + 1e-3])[0] - gelu(&[x[i] - 1e-3])[0]) / 2e-3;
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "{i}: {numeric} vs {}",
                analytic[i]
            );
        }
        assert!((gelu(&[1.0])[0] - 0.841_344_7).abs() < 1e-6);
    }
}
